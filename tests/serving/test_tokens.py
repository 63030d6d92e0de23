"""serving/tokens.py: TorchServe's key file, read and named when it is bad."""
import pytest

from serving import tokens as serving


@pytest.mark.parametrize("content, message", [
    ("not json", "invalid JSON"), ('{"inference": {"key": "k"}}', "has no 'management' key"), ("[]", "has no"),
])
def test_read_token_names_a_bad_key_file(tmp_path, content, message):
    path = tmp_path / "key_file.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        serving.read_token(path, "management")
    with pytest.raises(SystemExit, match="not found"):
        serving.read_token(tmp_path / "missing.json")


def test_key_expiry_reads_torchserves_timestamps(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text('{"inference": {"key": "k", "expiration time": "2026-11-29T15:16:06.123456789Z"}}')
    assert serving.key_expiry(key_file, "inference") == pytest.approx(1795965366.123, abs=0.01)
