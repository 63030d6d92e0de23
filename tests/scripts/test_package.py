"""scripts/package.sh: the archive it builds, and what it leaves alone."""
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_packaging_leaves_a_directory_named_like_the_model_in_tmpdir_alone(artifacts, tmp_path):
    """torch-model-archiver stages in $TMPDIR/<model name> and deletes it: with the model "digits" and TMPDIR /tmp,
    that was the image's state directory /tmp/digits (the running gateway's keys and sockets)."""
    shared_tmp = tmp_path / "tmp"
    state = shared_tmp / "digits"
    state.mkdir(parents=True)
    (state / "key_file.json").write_text("{}")
    env = {**os.environ, "TMPDIR": str(shared_tmp), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([str(ROOT / "scripts" / "package.sh"), "--artifacts", str(artifacts), "--export-path",
                    str(tmp_path / "store")], check=True, env=env, capture_output=True, timeout=300)
    assert (tmp_path / "store" / "digits.mar").is_file()
    assert (state / "key_file.json").read_text() == "{}"
    assert sorted(path.name for path in shared_tmp.iterdir()) == ["digits"]  # and nothing of its own left behind


def test_latency_archive_is_the_model_config_with_batching_off_and_one_worker(artifacts, tmp_path):
    """--latency: model digits-latency, whose model-config.yaml is handler/model-config.yaml with batchSize 1 (no
    maxBatchDelay wait for a lone request) and one worker; every other line, the handler's settings included, kept."""
    import yaml

    from serving import archive

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([str(ROOT / "scripts" / "package.sh"), "--latency", "--artifacts", str(artifacts),
                             "--export-path", str(tmp_path / "store")], check=True, env=env, capture_output=True,
                            text=True, timeout=300)
    built = tmp_path / "store" / "digits-latency.mar"
    assert "model digits-latency, version 1.0" in result.stdout
    assert archive.model_name_of(built) == "digits-latency"
    archive.extract(built, tmp_path / "out", ["model-config.yaml"])
    packaged = (tmp_path / "out" / "model-config.yaml").read_text()
    shipped = (ROOT / "handler" / "model-config.yaml").read_text()
    changed = {"batchSize": 1, "minWorkers": 1, "maxWorkers": 1}
    assert yaml.safe_load(packaged) == {**yaml.safe_load(shipped), **changed}
    assert [line for line in packaged.splitlines() if line.split(":")[0] not in changed] == [
        line for line in shipped.splitlines() if line.split(":")[0] not in changed]
