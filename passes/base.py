"""The pass interface, its typed configs, the registry, and the context passes run in."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from evonnx.errors import EvonnxError
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.state import ModelState

_REGISTRY: dict[str, type["Pass"]] = {}


def param(default: Any, help: str, **kwargs) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with a default and a one-line description."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def register(cls: type["Pass"]) -> type["Pass"]:
    """Class decorator: make a pass available by its `name` to pipelines and the CLI."""
    _REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type["Pass"]:
    from evonnx.passes import load_all
    load_all()
    if name not in _REGISTRY:
        raise EvonnxError(f"unknown pass {name!r} (available: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def available() -> list[str]:
    from evonnx.passes import load_all
    load_all()
    return sorted(_REGISTRY)


@dataclass
class PassContext:
    """What a pass may use besides the state: calibration data, the shared fitness engine, a work dir."""

    calib: CalibData
    device: str = "auto"
    seed: int = 0
    workdir: Path | None = None
    progress: bool = True
    batch_size: int | None = None
    folders: dict[str, str] = field(default_factory=dict)  # pass name -> its folder's name, if not the name
    metric: Any = None  # the run's task metric (passes/engine/tasks.py), for budgets measured as the user would
    _engines: dict = field(default_factory=dict, repr=False)

    def engine(self, state: ModelState, weights: list[str] | None = None):
        """The fitness engine of this teacher model, exposing `weights` (default: every float weight, since
        re-fitting may change biases too)."""
        from evonnx.passes.engine.fitness import FitnessEngine
        names = tuple(weights if weights is not None else state.table.weights)
        key = (id(state.model), names)
        if key not in self._engines:
            self._engines[key] = FitnessEngine(state.model, self.calib, names, device=self.device,
                                               batch_size=self.batch_size, label=state.label)
        return self._engines[key]

    def pass_dir(self, name: str) -> Path | None:
        """A per-pass folder in the work dir for checkpoints and logs (None without a work dir)."""
        if self.workdir is None:
            return None
        path = Path(self.workdir) / self.folders.get(name, name)
        path.mkdir(parents=True, exist_ok=True)
        return path


class Pass:
    """A pass reads a state and returns a new one; it never writes files except in its work dir."""

    name: ClassVar[str]

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any = None, **overrides: Any):
        base = config if config is not None else self.Config()
        known = {f.name for f in dataclasses.fields(base)}
        unknown = set(overrides) - known
        if unknown:
            raise EvonnxError(f"pass {self.name!r}: unknown parameter(s) {sorted(unknown)} (known: {sorted(known)})")
        self.config = dataclasses.replace(base, **overrides)

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) of each config parameter, for docs and the CLI."""
        return [(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory(),
                 f.metadata.get("help", "")) for f in dataclasses.fields(cls.Config)]
