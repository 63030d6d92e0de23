"""serving/archive.py: a .mar built by scripts/package.sh, and read back without TorchServe."""
import hashlib

from serving import archive


def test_package_then_read_the_manifest_and_the_weights(artifacts, tmp_path):
    built = archive.package(artifacts, tmp_path / "store", "digits", version="2.0", archive_name="digits_v2")
    assert built == tmp_path / "store" / "digits_v2.mar" and built.is_file()
    assert archive.model_name_of(built) == "digits"  # the file name is not the model's
    assert archive.manifest(built)["model"]["modelVersion"] == "2.0"
    weights = archive.extract_weights(built, tmp_path / "out")
    assert weights.name == archive.weights_name(built) == "digit_cnn.pt"
    assert hashlib.sha256(weights.read_bytes()).digest() == hashlib.sha256(
        (artifacts / "digit_cnn.pt").read_bytes()).digest()
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["digit_cnn.pt"]  # only what was asked
