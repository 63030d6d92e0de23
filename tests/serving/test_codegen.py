"""serving/rpc/codegen.py: the committed gRPC stubs are exactly what the installed TorchServe's protos generate."""
import filecmp
import zipfile

from serving.rpc import codegen
from tests.support import ROOT

STUBS = ROOT / codegen.PACKAGE


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    written = codegen.generate(tmp_path)
    assert {path.name for path in written} == {
        "__init__.py", "inference.proto", "inference_pb2.py", "inference_pb2_grpc.py",
        "management.proto", "management_pb2.py", "management_pb2_grpc.py",
        "open_inference_grpc.proto", "open_inference_grpc_pb2.py", "open_inference_grpc_pb2_grpc.py",
    }
    assert codegen.differences(tmp_path, STUBS) == []


def test_the_protos_are_the_ones_inside_the_installed_jar():
    with zipfile.ZipFile(codegen.torchserve_jar()) as jar:
        for name in codegen.PROTOS:
            assert (STUBS / name).read_bytes() == jar.read(f"proto/{name}")


def test_check_mode_notices_an_edit(tmp_path):
    codegen.generate(tmp_path)
    edited = tmp_path / "inference_pb2_grpc.py"
    edited.write_text(edited.read_text() + "# hand edit\n")
    assert codegen.differences(STUBS, tmp_path) == ["inference_pb2_grpc.py"]
    assert codegen.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert codegen.main(["--check"]) == 0
    assert filecmp.cmp(STUBS / "inference.proto", tmp_path / "inference.proto", shallow=False)


def test_stubs_import_as_a_package():
    from serving.rpc.stubs import inference_pb2, inference_pb2_grpc, management_pb2_grpc

    assert inference_pb2.PredictionsRequest(model_name="digits").model_name == "digits"
    assert hasattr(inference_pb2_grpc, "InferenceAPIsServiceStub")
    assert hasattr(management_pb2_grpc, "ManagementAPIsServiceStub")
