"""The work dir: `run.json` names the run (a fingerprint of the model, calibration data, settings and seed)
and whether it finished; the passes keep their checkpoints in sub-folders. Without `resume` a fresh run
starts there (an unfinished run in it is refused, not overwritten); with `resume` the run recorded there
must be this very run, and Directed Evolution continues from its checkpoint."""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from evonnx.errors import EvonnxError
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.passes.compress.auto import AUTO_DIR

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


@contextlib.contextmanager
def work_dir(workdir: str | Path | None, report: str | Path | None) -> Iterator[Path | None]:
    """The given work dir; a temporary one when only a report needs the search logs; else none."""
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    elif report is not None:
        with tempfile.TemporaryDirectory(prefix="evonnx-") as tmp:
            yield Path(tmp)
    else:
        yield None


def claim(wd: Path, fp: str, resume: bool, source: str) -> None:
    """Refuse what would mix two runs in one work dir; start fresh or continue (see the module docstring)."""
    run_file = wd / RUN_FILE
    try:
        previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    except (OSError, ValueError):
        previous = {"fingerprint": None, "source": "?", "finished": False}
    if resume:
        if previous is None:
            raise EvonnxError(f"{wd}: no run to resume ({RUN_FILE} is missing); start it without --resume")
        if previous.get("fingerprint") != fp:
            raise EvonnxError(f"{wd}: holds a run of another model, calibration set or settings "
                              f"({previous.get('source')}); --resume needs the same command line")
        log.info(f"resuming the run in {wd}")
        return
    if previous is not None and not previous.get("finished"):
        raise EvonnxError(f"{wd}: holds an unfinished run ({previous.get('source')}); add --resume to continue it, "
                          "or remove the folder or use another --workdir to start over")
    for sub in wd.iterdir():  # what an earlier finished run left: the passes' folders
        if sub.is_dir() and (sub.name == AUTO_DIR or (sub / "checkpoint.npz").exists() or (sub / "log.jsonl").exists()):
            shutil.rmtree(sub)
    atomic_write_bytes(run_file, json.dumps({"fingerprint": fp, "source": source, "finished": False}).encode())


def finish_run(wd: Path) -> None:
    run = json.loads((wd / RUN_FILE).read_text())
    atomic_write_bytes(wd / RUN_FILE, json.dumps({**run, "finished": True}).encode())


def read_logs(wd: Path) -> list[dict]:
    """Directed Evolution's log.jsonl entries, each tagged with its run (the folder below the work dir)."""
    entries = []
    for path in sorted(wd.rglob("log.jsonl")):
        run = str(path.parent.relative_to(wd))
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append({"run": run, **json.loads(line)})
    return entries
