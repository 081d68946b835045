"""SIGTERM unwinds a run as Ctrl-C does, for the CLI and the benchmarks alike: temporary folders (the bit
allocation's spilled Grams, work folders) are removed and child processes stopped on the way out."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is (a KeyboardInterrupt: no `except Exception` swallows it)."""


def _terminate(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_point(main: Callable[[], int], prog: str | None = None) -> int:
    """`main()` with SIGTERM unwinding it; a stopped run says so in one line ("PROG: terminated") and returns
    the shell's status: 143 for SIGTERM, 130 for Ctrl-C."""
    try:
        with sigterm_unwinds():
            return main()
    except KeyboardInterrupt as exc:
        stopped = isinstance(exc, Terminated)
        print(f"{prog or os.path.basename(sys.argv[0])}: {'terminated' if stopped else 'interrupted'}",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if stopped else signal.SIGINT)


def run_child(cmd: list[str]) -> dict:
    """Run `cmd` to its end: wall seconds, peak RSS (bytes), exit code, stdout and the last line of stderr. The
    child is stopped (SIGTERM, so that it cleans up too) when this process is stopped or interrupted."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, sigterm_unwinds():
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return {"wall": time.perf_counter() - start, "rss": usage.ru_maxrss * 1024, "rc": proc.returncode,
                "stdout": out.read(), "error": (err.read().strip().splitlines() or [""])[-1][:200]}
