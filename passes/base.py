"""The pass interface, its typed configs, the registry, and the context passes run in."""
from __future__ import annotations

import dataclasses
import typing
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
    workers: Any = None  # a distributed.Workers: candidates and layer sensitivities on Ray actors (None: here)
    _engines: dict = field(default_factory=dict, repr=False)

    def engine(self, state: ModelState, weights: list[str] | None = None):
        """The fitness engine of this teacher model, exposing `weights` (default: every float weight, since
        re-fitting may change biases too)."""
        from evonnx.passes.engine.fitness import FitnessEngine
        names = tuple(weights if weights is not None else state.table.weights)
        key = (id(state.model), names)
        if key not in self._engines:
            self._engines[key] = FitnessEngine(state.model, self.calib, names, device=self.device,
                                               batch_size=self.batch_size, label=state.label,
                                               original={n: state.original(n) for n in names}, held=state.held)
        self._engines[key].balance(self.metric)
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
        self.config = with_overrides(base, overrides, f"pass {self.name!r}")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) of each config parameter, for docs and the CLI; an option group's as
        "group.name"."""
        return _describe(cls.Config())


def _describe(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    rows = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += _describe(value, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value, f.metadata.get("help", "")))
    return rows


def with_overrides(config: Any, overrides: dict[str, Any], where: str) -> Any:
    """`config` with `overrides`. An option group (a dataclass field) takes a dict or dotted keys
    ("regrow.every"); the config's ALIASES map flat spellings ("regrow_every", or a group's own name for
    its switch) onto group fields."""
    aliases = getattr(type(config), "ALIASES", {})
    known = {f.name for f in dataclasses.fields(config)}
    flat: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    unknown = []
    for key, value in overrides.items():
        if key in aliases and not isinstance(value, dict):
            key = aliases[key]
        group, _, sub = key.partition(".")
        if group not in known:
            unknown.append(key)
        elif sub or dataclasses.is_dataclass(getattr(config, group)):
            groups.setdefault(group, {}).update({sub: value} if sub else dict(value))
        else:
            flat[key] = value
    if unknown:
        names = sorted(r[0] for r in _describe(config)) + sorted(aliases)
        raise EvonnxError(f"{where}: unknown parameter(s) {sorted(unknown)} (known: {names})")
    for group, values in groups.items():
        flat[group] = with_overrides(getattr(config, group), values, f"{where} {group}")
    out = dataclasses.replace(config, **flat)
    _check_choices(out, where)
    return out


def _check_choices(config: Any, where: str) -> None:
    """Fields typed `Literal[...]` hold one of their choices (checked when the pass is made, not mid-run)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint, value = hints.get(f.name), getattr(config, f.name)
        if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
            choices = " | ".join(map(str, typing.get_args(hint)))
            raise EvonnxError(f"{where}: {f.name} must be one of {choices}, got {value!r}")
