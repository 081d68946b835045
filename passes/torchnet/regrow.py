"""Prune-and-regrow of a fixed-count sparse weight (RigL, Evci et al. 2020), for distillation.

Every few steps a fraction of each mask's kept entries moves: the kept entries of smallest magnitude are
dropped, and as many pruned entries are grown where the loss gradient with respect to the *effective*
(masked) weight is largest, starting at zero. Kept counts, and so each layer's sparsity, never change;
the fraction decays with a cosine to zero at `until` of the run, as in the paper.
"""
from __future__ import annotations

import math

import torch


def fraction(step: int, steps: int, start: float, until: float) -> float:
    """The share of kept entries to move at `step`: `start`, cosine-decayed to 0 at `until` x `steps`."""
    end = until * steps
    return 0.0 if step >= end else start * 0.5 * (1 + math.cos(math.pi * step / end))


def regrow(weight: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, share: float
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new mask, dropped flat indices, grown flat indices) for one weight; `mask` is bool, `grad` the
    gradient at the masked weight (dense). Entries dropped now are not grown back at the same step."""
    flat_mask = mask.reshape(-1)
    kept = int(flat_mask.sum())
    k = min(int(share * kept), int((~flat_mask).sum()))
    empty = torch.zeros(0, dtype=torch.long, device=weight.device)
    if k <= 0:
        return mask, empty, empty
    magnitude = torch.where(flat_mask, weight.detach().reshape(-1).abs(), torch.full_like(flat_mask, math.inf,
                                                                                         dtype=weight.dtype))
    dropped = torch.topk(magnitude, k, largest=False).indices
    score = torch.where(flat_mask, torch.full_like(flat_mask, -math.inf, dtype=grad.dtype), grad.reshape(-1).abs())
    grown = torch.topk(score, k).indices
    new = flat_mask.clone()
    new[dropped] = False
    new[grown] = True
    return new.reshape(mask.shape), dropped, grown
