"""serving/processes.py on real processes: alive, a tree, waiting for exits, killing only what it was given."""
import subprocess
import sys
import time

from serving import processes


def sleeper(seconds: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_a_zombie_is_not_alive_and_a_reaped_process_neither():
    process = sleeper(0)
    assert processes.wait_for_exit([process.pid], timeout=30) == []  # exited: a zombie until reaped
    assert not processes.pid_alive(process.pid)
    process.wait()
    assert not processes.pid_alive(process.pid)


def test_the_tree_holds_the_children_and_kill_all_takes_what_still_runs():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "time.sleep(60)"])
    try:
        tree = []
        for _ in range(100):
            tree = processes.process_tree(parent.pid)
            if len(tree) == 2:
                break
            time.sleep(0.05)
        assert tree[0] == parent.pid and len(tree) == 2
        assert processes.wait_for_exit(tree, timeout=0.3) == tree  # nothing ends on its own
        assert sorted(processes.kill_all(tree)) == sorted(tree)
        assert processes.wait_for_exit(tree, timeout=10) == []
        assert processes.kill_all(tree) == []  # gone: nothing to kill, no error
    finally:
        parent.kill()
        parent.wait()


def test_resident_memory_of_a_live_process_and_of_none():
    # Asked once the child runs Python: between its fork and exec its RSS is a page or two.
    process = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "up\n"
    try:
        assert processes.resident_memory(process.pid) > 1 << 20
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    assert processes.resident_memory(process.pid) is None and processes.resident_memory(None) is None
