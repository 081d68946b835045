"""How a global sparsity target is split across layers when nothing is measured: uniform against LAMP.

    python -m evonnx.tools.bench.allocation [--models NAME ...] [--sparsities 0.5 0.7] [--out FILE.md]

One-shot magnitude pruning per layer (no re-fit) of corpus models at each sparsity, the per-layer targets
split uniformly or by LAMP scores; fidelity against the original on the corpus calibration set (top-1
agreement where there is a classifier output, and the lowest output's mean cosine). This is the fallback
Directed Evolution takes when a time limit leaves no room to measure sensitivities.
"""
from __future__ import annotations

import argparse

from evonnx.passes.base import PassContext
from evonnx.passes.engine.calib import load_npz
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.state import load_state
from evonnx.tools.bench import emit
from evonnx.tools.corpus.models import BY_NAME

ALLOCATIONS = ("uniform", "lamp")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.allocation", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ppocr-cls", "orientation", "magika"], choices=list(BY_NAME))
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--out")
    args = p.parse_args(argv)
    lines = ["| model | sparsity | " + " | ".join(f"{a} top-1 | {a} min cos" for a in ALLOCATIONS) + " |",
             "|---|---:|" + "---:|---:|" * len(ALLOCATIONS)]
    for name in args.models:
        entry = BY_NAME[name]
        state = load_state(str(entry.path()))
        ctx = PassContext(load_npz(entry.calib_path(), state.model), progress=False)
        engine = ctx.engine(state)
        for sparsity in args.sparsities:
            cells = []
            for allocation in ALLOCATIONS:
                step = ("magnitude", {"sparsity": sparsity, "scope": "layer", "allocation": allocation, "refit": False})
                out = Pipeline([step]).run(state, ctx)
                m = engine.evaluate([{n: out.current(n) for n in engine.weight_names}])[0]
                cells += ["–" if m.top1 is None else f"{m.top1:.3f}", f"{m.min_cosine:.4f}"]
            lines.append(f"| {name} | {sparsity:g} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return emit("\n".join(lines), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))
