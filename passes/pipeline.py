"""Pipelines: passes in order, from code or from a TOML/YAML/JSON file."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, get_pass
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


class Pipeline:
    """Run passes in order; each step is a Pass, a registered name, or (name, params)."""

    def __init__(self, steps: list[Pass | str | tuple[str, dict[str, Any]]]):
        self.passes = [self._make(step) for step in steps]

    @staticmethod
    def _make(step: Pass | str | tuple[str, dict[str, Any]]) -> Pass:
        if isinstance(step, Pass):
            return step
        name, params = (step, {}) if isinstance(step, str) else step
        return get_pass(name)(**params)

    @classmethod
    def from_file(cls, path: str | Path) -> "Pipeline":
        """Read `passes = [{name = "...", <param> = ...}, ...]` from a .toml, .json, .yaml or .yml file."""
        path = Path(path)
        if not path.is_file():
            raise EvonnxError(f"{path}: no such pipeline file")
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                try:
                    import tomllib
                except ImportError:  # Python 3.10: the same parser, as a package
                    import tomli as tomllib
                data = tomllib.loads(text)
            elif path.suffix == ".json":
                data = json.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml  # the `yaml` extra: only for YAML pipelines
                data = yaml.safe_load(text)
            else:
                raise EvonnxError(f"{path}: pipeline files are .toml, .json or .yaml")
        except (ValueError, ImportError) as exc:
            raise EvonnxError(f"{path}: cannot read pipeline: {exc}") from None
        steps = data.get("passes") if isinstance(data, dict) else None
        if not isinstance(steps, list) or not all(isinstance(s, dict) and "name" in s for s in steps):
            raise EvonnxError(f"{path}: expected a list 'passes' of tables with a 'name'")
        return cls([(s["name"], {k: v for k, v in s.items() if k != "name"}) for s in steps])

    def folders(self) -> list[str]:
        """Each pass's folder in the work dir: its name, then "NAME.2", "NAME.3" for a pass that occurs again."""
        seen: dict[str, int] = {}
        out = []
        for p in self.passes:
            seen[p.name] = seen.get(p.name, 0) + 1
            out.append(p.name if seen[p.name] == 1 else f"{p.name}.{seen[p.name]}")
        return out

    def run(self, state: ModelState, ctx: PassContext, start: int = 0, stop: int | None = None) -> ModelState:
        """Passes `start` to `stop` (default: all) in turn, each keeping its checkpoints in its own folder."""
        before = dict(ctx.folders)
        try:
            for p, folder in list(zip(self.passes, self.folders()))[start:stop]:
                ctx.folders[p.name] = folder
                t0 = time.perf_counter()
                state = p.run(state, ctx)
                log.info(f"{p.name}: done in {time.perf_counter() - t0:.1f} s")
        finally:
            ctx.folders.clear()
            ctx.folders.update(before)
        return state

    def __repr__(self) -> str:
        return f"Pipeline({[p.name for p in self.passes]})"
