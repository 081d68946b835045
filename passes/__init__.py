"""Passes: each reads a ModelState and returns a new one. Importing a pass module registers it."""
from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    """Import every pass module in this package so the registry knows them."""
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg and info.name not in ("base", "state", "pipeline"):
            importlib.import_module(f"{__name__}.{info.name}")
