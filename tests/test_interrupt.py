"""SIGTERM unwinds a benchmark as it does the CLI (tests/test_cli.py): its temporary folders go, and so does its
child `evonnx compress` run, which cleans up after itself the same way."""
import os
import signal
import subprocess
import sys
import time

CHILD = """
import sys, tempfile, time
from evonnx.tools.interrupt import entry_point
def main():
    with tempfile.TemporaryDirectory(prefix="child-") as d:
        open(d + "/ready", "w").close()
        time.sleep(600)
sys.exit(entry_point(main))
"""
PARENT = """
import sys, tempfile
from evonnx.tools.interrupt import entry_point, run_child
def main():
    with tempfile.TemporaryDirectory(prefix="parent-"):
        return run_child([sys.executable, "-c", sys.argv[1]])["rc"]
sys.exit(entry_point(main, "bench"))
"""


def test_a_stopped_benchmark_removes_its_folders_and_stops_its_child(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], env={**os.environ, "TMPDIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((p / "ready").exists() for p in tmp_path.glob("child-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {"child", "parent"}
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "bench: terminated", err
    assert not list(tmp_path.iterdir())  # the child's folder too: it was stopped by SIGTERM and unwound
