"""gateway/supervisor.py's checks of where it runs."""
from pathlib import Path

from gateway import supervisor


def test_noexec_mounts_are_recognised():
    """Docker's --tmpfs is noexec unless told otherwise: the supervisor warns (TorchServe's workers would use TCP)."""
    mounts = Path("/proc/mounts").read_text()
    proc_options = next(line.split()[3] for line in mounts.splitlines() if line.split()[1] == "/proc")
    assert supervisor.mounted_noexec(Path("/proc/self")) == ("noexec" in proc_options.split(","))
