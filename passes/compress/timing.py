"""Fitting a run into `--time-limit`: what the passes get after loading, and what they can afford."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from evonnx.passes.directed_evolution import FINISH_SHARE
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

SEARCH_SHARE = 0.7  # of --time-limit for the sparsity search; the rest is left for the bit allocation
LIGHT_BITS = {"schemes": ["uniform/channel/rate+gptq"], "bits": [2, 3, 4, 5, 6, 8]}  # the bit allocation when time is short
SCALED_FROM = "uniform/channel/rate+gptq@3"  # the one spec each layer is measured at when even LIGHT_BITS is too slow
RATE_BITS = {"schemes": ["uniform/channel/rate"], "bits": LIGHT_BITS["bits"], "scale_from": "uniform/channel/rate@3"}
FINISH_FORWARDS = 5  # passes over the calibration set after the search: final metrics, decode, verify, held out
PASS_FORWARDS = 10  # passes over it the passes spend outside their search: set-up, finishing, joint measurements
ENCODE_SECONDS_PER_PARAM = 1e-7  # entropy coding, decoding and checking the container (6e-8 on a 2-core x86-64)
FIXED_BITS_SECONDS_PER_PARAM = 3e-7  # every target at 8 bits, the run's floor (2.5e-7 on a 2-core x86-64)
QUANT_SECONDS_PER_PARAM = 1e-6  # fitting one quantization of a weight, per entry (grids, codebooks, sizing)
RATE_SECONDS_PER_PARAM = 1e-7  # likewise an entropy-sized grid (no clipping search; ~4e-8 on a 2-core x86-64)
GPTQ_SECONDS_PER_PARAM = 6e-7  # likewise with GPTQ's rounding (2.4e-7 to 4.6e-7 a weight on a 2-core AMD EPYC)
INVERSE_SECONDS_PER_K3 = 6e-11  # GPTQ's inverse factor of a K x K Gram (6 s for 8 of K = 2304 on a 2-core x86-64)
CURVES_SHARE = 0.25  # of a sparsity search's time its per-layer sensitivity curves may take
CURVE_FORWARDS = 2.0  # passes a curve's level costs with its re-fits (~1.6 on minilm-l3: 7 levels, 8 s, 0.7 s a pass)
MIN_SEARCH_SHARE = 0.1  # of --time-limit the passes get however little is left
JOINT_EVALUATIONS = 40  # about what the bit allocation's joint search measures
SCALED_JOINT = 12  # joint measurements of the scaled bit allocation (bisection, a few single-layer moves)
MAX_JOINT = 1000  # the most joint measurements a time limit ever gives the search
CROSS_FITS = 4  # more fits of each Gram-fitted quantization: one without each fold (the bit allocation's cross_fit)
IN_SAMPLE = {"cross_fit": 0}  # the bit allocation's joint measurements on the samples its rounding fitted
NO_HALVES = {"half_share": 2.0}  # no weight tries the half rates (GPTQ's rounding of each costs another sweep)
VISITED_SPECS = 5  # of a layer's quantizations the joint search visits, each fitted CROSS_FITS times (5.4 on minilm-l3)
NONTARGET_EVALUATIONS = 2  # the bit allocation's measurements of rounding the other tensors (int8, fp16)
FULL_SHARE = 0.5  # the least share of the calibration samples the full bit allocation measures layers alone on
LIGHT_SHARE = 0.125  # likewise for the uniform per-channel bits only
PROBE_FORWARDS = 30  # the embedding tables' Gram probes, in passes over their samples (~28 on minilm-l3)


@dataclass(frozen=True)
class BitCosts:
    """What the bit allocation's time grows with besides its passes over the calibration set."""

    params: int = 0  # entries of the targets, fitted once per quantization tried
    heavy: int = 0  # entries of the targets that also try half rates (bit_allocation's half_share)
    heavy_layers: int = 0  # how many targets those are
    probes: float = 0.0  # seconds of the embedding tables' Gram probes (`probe_seconds`)
    inverses: float = 0.0  # seconds of GPTQ's inverse factors (`inverse_seconds`)

    @classmethod
    def of(cls, state: ModelState, names: list[str], forward: float, samples: int) -> "BitCosts":
        """The costs of quantizing `names` (`forward`: seconds of a pass over the `samples` calibration samples)."""
        from evonnx.passes.bit_allocation import BitAllocation

        sizes = [state.table[n].size for n in names]
        heavy = [s for s in sizes if s >= BitAllocation.Config().half_share * sum(sizes)]
        return cls(sum(sizes), sum(heavy), len(heavy), probe_seconds(state, names, forward, samples),
                   inverse_seconds(state, names))


@dataclass
class Budget:
    """Settings that fit a time limit, from the measured time of one forward pass over the calibration set.

    Directed Evolution's sensitivity curves (one evaluation a target per level, plus re-fits) are not
    bounded by its time limit: when they would take over a quarter of it, a global target is split by
    LAMP scores (no data), and when their evaluations alone would, survivors are not re-fitted either
    (`curves_or_lamp`). The bit allocation measures every scheme x bit width per
    target, then searches jointly: when the time left after the sparsity search cannot pay for that, it
    measures each target on a share of the calibration samples, or tries entropy-sized per-channel grids only
    (on a share too), or measures each target at one of them only and scales the others' damage from it; when
    not even that, every target gets 8 bits. The joint measurements are capped at what the time left pays for.
    """

    de: dict = field(default_factory=dict)
    bits: dict | None = field(default_factory=dict)  # None: fixed 8 bits instead of the bit allocation

    @classmethod
    def fit(cls, targets: int, forward_seconds: float, time_limit: float, prunes: bool = True,
            costs: BitCosts = BitCosts(), refits: float = 0.0, needs_bits: bool = False) -> "Budget":
        """The settings `time_limit` pays for; without pruning (`prunes` False) the bits get all of it. `costs`: the
        bit allocation's costs beyond passes over the calibration set (`BitCosts.of`); `refits`: seconds of
        re-fitting every target once (sparsity/common.refit_seconds); `needs_bits`: a file size bound that only the
        bit allocation meets (see `bits_for`)."""
        bits_share = 1 - SEARCH_SHARE if prunes else 1.0
        return cls(de=curves_or_lamp(targets, forward_seconds, SEARCH_SHARE * time_limit, refits),
                   bits=cls.bits_for(targets, forward_seconds, bits_share * time_limit, costs, needs_bits))

    @staticmethod
    def full_bits_seconds(targets: int, forward_seconds: float, costs: BitCosts = BitCosts()) -> float:
        """Seconds the full bit allocation takes (every layer alone on all samples, then the joint search)."""
        specs, fitted = _full_specs()
        halves = _halves({})
        return (forward_seconds * (targets * specs + costs.heavy_layers * halves + JOINT_EVALUATIONS)
                + QUANT_SECONDS_PER_PARAM * (costs.params * fitted + costs.heavy * halves)
                + costs.probes + (1 + CROSS_FITS) * costs.inverses)

    @staticmethod
    def bits_for(targets: int, forward_seconds: float, seconds: float, costs: BitCosts = BitCosts(),
                 needed: bool = False) -> dict | None:
        """The bit allocation `seconds` pay for, the first of: the full search ({}), with each layer alone measured
        on a share of the calibration samples (at least FULL_SHARE); entropy-sized per-channel grids with GPTQ's
        rounding only (LIGHT_BITS), on a share (at least LIGHT_SHARE); those with each layer measured at
        SCALED_FROM only, on a share, and no half rates; the same with rounding to nearest (RATE_BITS); else none
        (None: every target at 8 bits; when `needed`, a size bound only the bit allocation meets, every tier with
        1-bit grids too, else the last tier at its least share and joint measurements: the time limit is then
        overrun by what that costs, where the full search ran before). The first two are tried with cross-fitted
        joint measurements, then without (IN_SAMPLE): the fits without each fold are what a short time limit drops
        first. Fitting each quantization of the targets' entries (and the half rates of the heaviest) and two passes
        over the calibration set (the folds' activations, then their outputs) come off `seconds` first, and, in
        every tier that rounds with GPTQ, the tables' Gram probes and the inverse factors (once more for each fold
        where the tier cross-fits); `max_joint` is what is left after the layers' measurements. `seconds` are net
        of the reserve for the fixed 8 bits (`search_seconds`), which a tier replaces."""
        seconds += FIXED_BITS_SECONDS_PER_PARAM * costs.params
        light, (full, fitted) = len(LIGHT_BITS["bits"]), _full_specs()
        refits = CROSS_FITS * VISITED_SPECS
        tiers = ((full, fitted, QUANT_SECONDS_PER_PARAM, FULL_SHARE, JOINT_EVALUATIONS, {}),
                 (full, fitted - refits, QUANT_SECONDS_PER_PARAM, FULL_SHARE, JOINT_EVALUATIONS, IN_SAMPLE),
                 (light + 1, light + refits, GPTQ_SECONDS_PER_PARAM, LIGHT_SHARE, JOINT_EVALUATIONS, LIGHT_BITS),
                 (light + 1, light, GPTQ_SECONDS_PER_PARAM, LIGHT_SHARE, JOINT_EVALUATIONS, {**LIGHT_BITS, **IN_SAMPLE}),
                 (1, light, GPTQ_SECONDS_PER_PARAM, LIGHT_SHARE, SCALED_JOINT,
                  {**LIGHT_BITS, "scale_from": SCALED_FROM, **IN_SAMPLE, **NO_HALVES}),
                 (1, light + 1, RATE_SECONDS_PER_PARAM, LIGHT_SHARE, SCALED_JOINT, RATE_BITS))
        for measured, fitted, per_param, least, joint, settings in tiers:
            gptq = settings is not RATE_BITS
            if needed and "bits" in settings:  # a size bound may take 1-bit grids, which the short tiers leave out
                settings = {**settings, "bits": [1, *settings["bits"]]}
                measured, fitted = measured + (measured > 1), fitted + 1
            halves = _halves(settings)
            folds = 1 if "cross_fit" in settings else 1 + CROSS_FITS
            fixed = costs.probes + folds * costs.inverses if gptq else 0.0
            fitting = per_param * (costs.params * fitted + costs.heavy * halves) + 2 * forward_seconds + fixed
            passes = (seconds - fitting) / max(forward_seconds, 1e-9) - NONTARGET_EVALUATIONS
            alone = targets * measured + (costs.heavy_layers * halves if measured > 1 else 0)
            share = min((passes - joint) / max(alone, 1), 1.0)
            if share >= least:
                most = min(int(passes - alone * share), MAX_JOINT)
                return {**settings, "max_joint": most, **({"sensitivity_share": round(share, 3)} if share < 1 else {})}
        return {**RATE_BITS, "bits": [1, *RATE_BITS["bits"]], "max_joint": SCALED_JOINT,
                "sensitivity_share": LIGHT_SHARE} if needed else None

    def describe(self, bits: bool = True) -> str:
        """The settings in words; without the bit allocation's when `bits` is False (the auto ladder sizes it
        from the time its rungs leave)."""
        parts = [f"{k}={v}" for k, v in self.de.items()]
        if bits and self.bits is None:
            parts.append("every target at 8 bits (no time for the bit allocation)")
        elif bits and self.bits:
            parts.append("bit allocation over " + ", ".join(f"{k}={v}" for k, v in self.bits.items()))
        return ", ".join(parts)


def curves_or_lamp(targets: int, forward_seconds: float, seconds: float, refits: float = 0.0) -> dict:
    """Directed Evolution's settings for a search of `seconds`: {} when its per-layer sensitivity curves (a pass
    over the calibration set a target per level, about CURVE_FORWARDS with the re-fits, and a re-fit of every
    target per level, `refits` seconds each time) take at most CURVES_SHARE of it; else a global target split by
    LAMP scores (curves it cannot finish are thrown away, and the search has spent its time on them), and without
    re-fits when not even the curves' passes alone would fit, or re-fitting every target once would take over
    FINISH_SHARE of it."""
    from evonnx.passes.sparsity.common import LEVELS

    passes = targets * len(LEVELS) * forward_seconds
    if passes * CURVE_FORWARDS + len(LEVELS) * refits <= CURVES_SHARE * seconds:
        return {}
    slow = passes > CURVES_SHARE * seconds or refits > FINISH_SHARE * seconds
    return {"allocation": "lamp", **({"refit": False} if slow else {})}


def _full_specs() -> tuple[int, int]:
    """Quantizations the full bit allocation measures per layer (every scheme x bit width, and exact), and those it
    fits (the ones its joint search visits again without each fold)."""
    from evonnx.passes.bit_allocation import BitAllocation

    defaults = BitAllocation.Config()
    specs = len(defaults.schemes) * len(defaults.bits)
    return specs + 1, specs + CROSS_FITS * VISITED_SPECS


def _halves(settings: dict) -> int:
    """Half-rate quantizations the bit allocation under `settings` adds for a weight of at least its half_share of
    the entries (bit_allocation.half_rates: 4 for LIGHT_BITS)."""
    from evonnx.passes.bit_allocation import BitAllocation, half_rates
    from evonnx.passes.quant.layer import QuantSpec

    defaults = BitAllocation.Config()
    if settings.get("half_share", defaults.half_share) > 1:
        return 0
    specs = list(dict.fromkeys(QuantSpec.parse(f, b) for f in settings.get("schemes", defaults.schemes)
                               for b in settings.get("bits", defaults.bits)))
    return len(half_rates(specs)) - len(specs)


def forward_seconds(engine) -> float:
    """Seconds of one evaluation over the calibration set (the better of two runs: the first warms up)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        engine.outputs({})
        times.append(time.perf_counter() - start)
    return min(times)


def search_seconds(time_limit: float, spent: float, forward: float, state: ModelState) -> float:
    """What is left of `time_limit` for the passes' searches: less what loading took, the passes' own fixed
    costs (PASS_FORWARDS passes over the calibration set) and the `ship_seconds` reserve."""
    reserve = PASS_FORWARDS * forward + ship_seconds(forward, state)
    left = time_limit - spent - reserve
    floor = MIN_SEARCH_SHARE * time_limit
    if left < floor:
        log.info(f"time limit {time_limit:g} s: loading took {spent:.0f} s, and setting up, finishing and verifying "
                 f"need about {reserve:.0f} s; "
                 f"searching for {floor:.0f} s, so the run will take longer")
    return max(left, floor)


def ship_seconds(forward: float, state: ModelState) -> float:
    """What a run keeps for shipping a result: quantizing every target at 8 bits (the fallback when the time left
    cannot pay for the bit allocation, or the searched bits fail the budget), encoding, decoding and verifying
    the container (FINISH_FORWARDS passes over the calibration set, encoding by the parameter)."""
    params = sum(w.size for w in state.table.targets)
    return FINISH_FORWARDS * forward + (ENCODE_SECONDS_PER_PARAM + FIXED_BITS_SECONDS_PER_PARAM) * params


def fallback_seconds(forward: float, state: ModelState, allocation: dict[str, str] | None) -> float:
    """What making one fallback of the searched bits `allocation` ({weight: spec label}; None: there are none)
    takes (passes/compress/guard.finer): quantizing its weights again under their schemes, where it rounds with
    GPTQ a pass for the Grams and their inverse factors, and a pass to measure it."""
    from evonnx.passes.quant.layer import QuantSpec

    if not allocation:
        return 0.0
    specs = {n: QuantSpec.parse(label) for n, label in allocation.items()}
    gptq = [n for n, s in specs.items() if s.refit]
    per = {n: GPTQ_SECONDS_PER_PARAM if s.refit else RATE_SECONDS_PER_PARAM if s.rate else QUANT_SECONDS_PER_PARAM
           for n, s in specs.items()}
    return (sum(per[n] * state.table[n].size for n in specs) + inverse_seconds(state, gptq)
            + (2 if gptq else 1) * forward)


def inverse_seconds(state: ModelState, names: list[str]) -> float:
    """Seconds of GPTQ's inverse factors of the Grams of the matrix layers among `names` (K^3 each)."""
    from evonnx.passes.quant.refit import layer_views

    return INVERSE_SECONDS_PER_K3 * sum(layer.mat_shape[1] ** 3 for layer in layer_views(state, names).values())


def probe_seconds(state: ModelState, names: list[str], forward: float, samples: int) -> float:
    """Seconds the Gram probes of the embedding tables among `names` take: PROBE_FORWARDS passes over the samples
    they probe, at most MAX_SAMPLES of each fold's (passes/quant/tables.py), of the `samples` a `forward` pass
    takes; 0 without a table."""
    from evonnx.passes.quant.tables import MAX_SAMPLES, table_views

    if not table_views(state, names):
        return 0.0
    return PROBE_FORWARDS * forward * min(1.0, CROSS_FITS * MAX_SAMPLES / max(samples, 1))
