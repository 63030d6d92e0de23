"""scripts/grpc_client.py: which failure decides the exit status."""
import grpc

from scripts import grpc_client


def test_exit_status_prefers_unreachable_then_token(tmp_path, capsys):
    path = tmp_path / "x.png"
    ok = grpc_client.Answer(path, [{"label": "1"}])
    bad = grpc_client.Answer(path, [{"code": 400}], "400 InputError: x", grpc.StatusCode.INVALID_ARGUMENT)
    token = grpc_client.Answer(path, [], "refused", grpc.StatusCode.PERMISSION_DENIED)
    down = grpc_client.Answer(path, [], "down", grpc.StatusCode.UNAVAILABLE)
    assert grpc_client.exit_status([ok], "t", path) == 0
    assert grpc_client.exit_status([ok, bad], "t", path) == 1
    assert grpc_client.exit_status([bad, token], "t", path) == 3
    assert grpc_client.exit_status([token, down], "t", path) == 2
    assert "down" in capsys.readouterr().err
