"""Candidates and bit-allocation sensitivities on Ray actors: the serial bytes, through a killed worker too."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest

from corpus import mlp

ray = pytest.importorskip("ray")
distributed = pytest.importorskip("evonnx.passes.engine.distributed")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """compress(**kw) of a small MLP (default: at 60 % sparsity and 8 bits) into a fresh file, ORT on one thread;
    its bytes. A local Ray runtime of 2 CPUs lives as long as the module."""
    root = tmp_path_factory.mktemp("distributed")
    model = mlp(hidden=64, d_in=32, classes=10)
    model.ir_version = 10
    onnx.save(model, root / "m.onnx")
    np.savez(root / "c.npz", x=np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32))
    mp = pytest.MonkeyPatch()
    mp.setenv("EVONNX_ORT_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from evonnx.passes.compress import compress

    def go(name: str, **kw) -> bytes:
        kw = {"sparsity": 0.6, "bits": 8, **kw}
        compress(root / "m.onnx", root / name, calib=root / "c.npz", max_drop=math.inf, progress=False, **kw)
        return (root / name).read_bytes()

    go.root = root
    yield go
    ray.shutdown()
    mp.undo()


BITS = {"sparsity": 0, "bits": "auto"}  # the bit allocation alone: each layer's quantizations measured alone


@pytest.fixture(scope="module")
def serial(run) -> bytes:
    return run("serial.evx")


@pytest.fixture(scope="module")
def serial_bits(run) -> bytes:
    return run("serial-bits.evx", **BITS)


def _count_gathers(monkeypatch, on_call=None) -> list:
    calls: list = []
    original = distributed.gather

    def counted(futures):
        calls.append(len(futures))
        if on_call:
            on_call(len(calls))
        return original(futures)

    monkeypatch.setattr(distributed, "gather", counted)
    return calls


def test_two_workers_give_the_serial_container(run, serial, monkeypatch):
    calls = _count_gathers(monkeypatch)
    assert run("two.evx", workers=2) == serial
    assert len(calls) > 10 and max(calls) == 2  # every generation went to both actors


def test_two_workers_measure_the_bit_allocation_as_serial(run, serial_bits, monkeypatch):
    calls = _count_gathers(monkeypatch)
    assert run("two-bits.evx", workers=2, **BITS) == serial_bits
    assert calls == [2, 2]  # both layers' quantizations, across both actors


@pytest.mark.parametrize("stage, kill_at", [("search", 3), ("bits", 1)])
def test_a_killed_worker_is_replaced_and_the_result_unchanged(run, serial, serial_bits, monkeypatch, stage, kill_at):
    seen: dict = {}
    enter = distributed.Workers.__enter__

    def recording(self):
        seen["workers"] = enter(self)
        seen["pids"] = self.pids()
        return seen["workers"]

    def kill(call: int) -> None:
        if call == kill_at:  # a generation's or a layer's tasks are submitted, not gathered
            os.kill(seen["pids"][0], signal.SIGKILL)
        if call == kill_at + 1:
            seen["after"] = seen["workers"].pids()

    monkeypatch.setattr(distributed.Workers, "__enter__", recording)
    _count_gathers(monkeypatch, kill)
    if stage == "search":
        assert run("killed.evx", workers=2) == serial
    else:
        assert run("killed-bits.evx", workers=2, **BITS) == serial_bits
    assert seen["after"][0] != seen["pids"][0] and seen["after"][1] == seen["pids"][1]


def test_workers_without_ray_exit_2_naming_the_extra(run):
    code = ("import sys\nsys.modules['ray'] = None\nfrom evonnx.tools.cli import main\n"
            f"sys.exit(main(['compress', {str(run.root / 'm.onnx')!r}, '-o', {str(run.root / 'no.evx')!r}, "
            "'--synthetic-ok', '--workers', '2']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "evonnx[distributed]" in out.stderr and "Traceback" not in out.stderr
    assert not (run.root / "no.evx").exists()



def test_a_benchmark_grid_runs_as_tasks_in_order_and_a_dead_task_is_run_again(run, tmp_path):
    from evonnx.tools.bench import cells

    def square(marker: str, x: int) -> int:  # nested: Ray ships it by value, as workers cannot import tests/
        """x * x, but the first time x is 2 the worker process dies (os._exit) before answering."""
        if x == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return x * x

    marker = str(tmp_path / "died")
    grid = [(marker, x) for x in range(5)]
    assert list(cells(square, grid, workers=2)) == [0, 1, 4, 9, 16]
    assert os.path.exists(marker)  # the task of x = 2 died once, and was run again
    assert list(cells(square, grid)) == [0, 1, 4, 9, 16]  # serially, the same
