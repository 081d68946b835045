"""The `evonnx` command line run as a user runs it: a child process, output captured as text."""
import subprocess
import sys


def evonnx(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evonnx", *map(str, args)], capture_output=True, text=True, cwd=cwd)
