"""Weight Evolution (Lin et al., ACM MM 2021) for sparse, possibly quantized students.

Weak filters are not left weak (or pruned): each is crossed with an important filter of the same layer.
`evolve` works in place on the latent parameters; pruned entries (mask False) are never written, so the
constraint projection that follows only has to restore the quantization grid. Filters are output channels
(the weight's channel axis moved to the front).

Rules, after the authors' WE/WE_cifar/we.py (github.com/BZQLin/Weight-evolution):

* Filter norm: L1 of the filter over its size, i.e. its mean |w| (pruned entries count as zeros).
* Global threshold: over the filters of all layers, th = the value at index int(N x fraction) of the
  ascending norms; a layer takes part only if it has filters with norm < th.
* Per-layer rule: the candidates are the filters with norm <= relative x the layer's largest norm
  (`relative`, the code's `lab` = 0.1). If a taking-part layer has none, a counter grows; when it reaches
  `patience` (the code's ln / ln_c, here layers / 2) the layer's weakest filter becomes a candidate and the
  counter restarts; a layer with candidates restarts it too. The count is capped by the layer's filters
  under th; the candidates are that many weakest filters.
* Matching: filters sorted by norm, descending; the k-th strongest filter is matched with the k-th
  strongest candidate (the code's zip), so with more candidates than others the weakest ones stay as is.
* Crossover, filters with spatial kernels (K > 1 elements per input channel): per input-channel slice, the
  inferior slice's smallest-|w| element (every allowed element equal to it) becomes the blend
  a x l + (1 - a) x s of it (s) and the largest-|w| element (l) of the important filter's same slice.
* Crossover, 1x1 kernels and matrices: the whole inferior filter w_j becomes a x w_j + (1 - a) x w_i with
  a = |w_j|_1 / (|w_j|_1 + |w_i|_1).
* Optimizer state is left as is (the code keeps SGD's momentum buffers; here Adam's moments).

Deviations:

* Sparsity: only allowed (mask True) entries change; the smallest element is sought among allowed entries;
  filters with no allowed entry neither rank nor evolve. An entry is blended only where the important
  filter survives too (its pruned entries are zeros: repeated blends would shrink the inferior filter's
  survivors to exactly 0, measured on lenet300 before this rule), and no survivor is set to 0.
* Norm over the filter size, not over the input channels: 1x1 / kxk convs and matrices share one scale.
* Spatial blend on magnitudes: a = |s| / (|s| + |l|) and the result keeps s's sign, i.e. sign(s) x the
  harmonic mean of |s| and |l|. Equal to the code's signed a = s / (s + l) when s and l share a sign; the
  code's form has a pole at s = -l.
* Spatial vs whole-filter by the kernel's element count (the code tests the kernel height only).
* Stateless: the starvation counter starts at 0 on every call (the code keeps it across epochs).
* BatchNorm scale / bias are not evolved (exported graphs usually fold them into the convs).
* When and how much (`fraction` per call, its decay with the learning rate) is the caller's business.
"""
from __future__ import annotations

import numpy as np
import torch


def filter_norms(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Mean |w| of every filter (output channel along `axis`)."""
    v = torch.movedim(w, axis, 0).reshape(w.shape[axis], -1)
    return v.abs().mean(dim=1)


def _cross_slices(p: torch.Tensor, q: torch.Tensor, mq: torch.Tensor, mp: torch.Tensor) -> torch.Tensor:
    """p, q: [n, I, K] important / inferior filters, mq / mp their allowed entries -> the new q. A slice
    whose important partner has no survivor is left as is (blending with 0 would zero a survivor)."""
    large = torch.where(mp, p.abs(), torch.zeros_like(p)).amax(dim=-1)
    aq = torch.where(mq, q.abs(), torch.full_like(q, torch.inf))
    s = q.gather(-1, aq.argmin(dim=-1, keepdim=True)).squeeze(-1)
    den = large + s.abs()
    blend = torch.where(den > 0, torch.sign(s) * 2 * large * s.abs() / torch.where(den > 0, den, 1), s)
    hit = mq & (q == s.unsqueeze(-1)) & mq.any(dim=-1, keepdim=True) & (large > 0).unsqueeze(-1)
    return torch.where(hit, blend.unsqueeze(-1), q)


def _cross_filters(p: torch.Tensor, q: torch.Tensor, mq: torch.Tensor, mp: torch.Tensor) -> torch.Tensor:
    """p, q: [n, F] important / inferior filters, mq / mp their allowed entries -> q blended towards p
    where both are allowed (elsewhere p is 0 and blending would only shrink q's survivors towards 0)."""
    nq, npp = q.abs().sum(dim=1, keepdim=True), p.abs().sum(dim=1, keepdim=True)
    den = nq + npp
    a = torch.where(den > 0, nq / torch.where(den > 0, den, 1), torch.ones_like(den))
    blend = a * q + (1 - a) * p
    return torch.where(mq & mp & (blend != 0), blend, q)


def select(norms: dict[str, torch.Tensor], fraction: float, relative: float = 0.1,
           patience: float | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(important, inferior) filter indices per layer from the filters' norms (NaN: not eligible)."""
    eligible = {n: torch.nonzero(~torch.isnan(r)).flatten() for n, r in norms.items()}
    pooled = torch.cat([r[eligible[n]] for n, r in norms.items()]) if norms else torch.zeros(0)
    out = {n: (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) for n in norms}
    if fraction <= 0 or len(pooled) == 0:
        return out
    th = torch.sort(pooled).values[min(int(len(pooled) * fraction), len(pooled) - 1)]
    patience = len(norms) / 2 if patience is None else patience
    starved = 0
    for n, r in norms.items():
        idx = eligible[n]
        r = r[idx]
        under = int((r < th).sum())
        if under == 0:
            continue
        count = int((r <= relative * r.max()).sum())
        if count == 0:
            starved += 1
            if starved >= patience:
                count, starved = 1, 0
        else:
            starved = 0
        count = min(count, under)
        order = idx[torch.sort(r, descending=True, stable=True).indices]
        strong, weak = order[:len(order) - count], order[len(order) - count:]
        k = min(len(strong), len(weak))
        out[n] = (strong[:k], weak[:k])
    return out


@torch.no_grad()
def evolve(weights: dict[str, torch.Tensor], masks: dict[str, np.ndarray | None], axes: dict[str, int],
           fraction: float, relative: float = 0.1, patience: float | None = None) -> dict[str, int]:
    """Cross inferior filters with important ones, in place; layers in `axes` order. -> {layer: evolved}.

    weights: latent parameters; masks: allowed entries (None: all); axes: each weight's filter axis;
    fraction: global share of filters under the threshold; relative, patience: the per-layer rule.
    """
    norms, allowed = {}, {}
    for n, axis in axes.items():
        w = weights[n]
        m = masks.get(n)
        m = torch.ones_like(w, dtype=torch.bool) if m is None else torch.as_tensor(m, device=w.device).bool()
        allowed[n] = torch.movedim(m, axis, 0).reshape(w.shape[axis], -1)
        r = filter_norms(w, axis)
        norms[n] = torch.where(allowed[n].any(dim=1), r, torch.full_like(r, torch.nan)).cpu()
    stats = {}
    for n, (strong, weak) in select(norms, fraction, relative, patience).items():
        stats[n] = len(weak)
        if not len(weak):
            continue
        w, axis = weights[n], axes[n]
        moved = torch.movedim(w, axis, 0)
        spatial = int(np.prod(moved.shape[2:])) if w.ndim >= 3 else 1
        shape = (moved.shape[0], -1, spatial) if spatial > 1 else (moved.shape[0], -1)
        v, m = moved.reshape(shape).clone(), allowed[n].reshape(shape)
        strong, weak = strong.to(w.device), weak.to(w.device)
        cross = _cross_slices if spatial > 1 else _cross_filters
        v[weak] = cross(v[strong], v[weak], m[weak], m[strong])
        w.copy_(torch.movedim(v.reshape(moved.shape), 0, axis))
    return stats
