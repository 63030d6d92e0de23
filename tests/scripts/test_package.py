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
