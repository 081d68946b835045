"""The default pipeline: Directed Evolution to the sparsity target, dead units cleared, then bits."""
from __future__ import annotations

from evonnx.passes.compress.timing import SEARCH_SHARE, Budget
from evonnx.passes.pipeline import Pipeline


def default_pipeline(sparsity: float | str, bits: int | str, max_drop: float, time_limit: float | None, *,
                     prune: list[str] | None = None, keep: list[str] = (), budget: Budget | None = None,
                     target_bytes: int = 0) -> Pipeline:
    """Directed Evolution to the sparsity target, dead units cleared, then the bit allocation (or fixed bits).
    `prune` restricts pruning to those weights (None: all targets); `keep` stays exact; `budget` fits a time
    limit; `target_bytes` > 0 makes the bit allocation fit that size instead of `max_drop`."""
    budget = budget or Budget()
    steps: list = []
    if sparsity not in (0, 0.0, "0") and prune != []:
        de: dict = {"sparsity": float(sparsity)}
        if prune is not None and keep:
            de["weights"] = list(prune)
        if time_limit:  # the search stops early, then reaches the target the cheap way
            de.update(time_limit=float(time_limit) * SEARCH_SHARE, on_budget="finish", **budget.de)
        steps.append(("directed-evolution", de))
        steps.append(("dead-units", {}))
    if bits == "auto" and (budget.bits is not None or target_bytes):
        steps.append(("bit-allocation", {"max_drop": float(max_drop), **({"keep": list(keep)} if keep else {}),
                                         **(budget.bits or {}), **({"target_bytes": target_bytes} if target_bytes
                                                                   else {})}))
    else:
        steps.append(fixed_bits(8 if bits == "auto" else int(bits), keep, quick=bool(time_limit)))
    return Pipeline(steps)


def fixed_bits(bits: int, keep: list[str] = (), quick: bool = False) -> tuple[str, dict]:
    """The quantize step at one bit width for every target (`keep` exact); `quick` skips measuring each
    layer alone for the report."""
    return ("quantize", {"bits": bits, **({"layers": {n: "raw" for n in keep}} if keep else {}),
                         **({"measure_alone": False} if quick else {})})
