"""Prune-and-regrow of a fixed-count sparse weight (RigL, Evci et al. 2020), for distillation.

Every few steps a fraction of each mask's kept entries moves: the kept entries of smallest magnitude are
dropped, and as many pruned entries are grown where the loss gradient with respect to the *effective*
(masked) weight is largest, starting at zero. Kept counts, and so each layer's sparsity, never change;
the fraction decays with a cosine to zero at `until` of the run, as in the paper.

With `cost`, both rankings are per estimated coded bit (`coded_bits`): a kept entry in a sparse row or
column costs more mask bits than one in a dense row, so entries gather in fewer rows and columns, which the
GRID mask coder (formats/masks.py) stores cheaper, and rows or columns left empty are not regrown lightly.
"""
from __future__ import annotations

import math

import torch


def fraction(step: int, steps: int, start: float, until: float) -> float:
    """The share of kept entries to move at `step`: `start`, cosine-decayed to 0 at `until` x `steps`."""
    end = until * steps
    return 0.0 if step >= end else start * 0.5 * (1 + math.cos(math.pi * step / end))


VALUE_BITS = 3.0   # what a kept value costs at the bit widths of extreme sparsity (2-4 bits after entropy coding)


def coded_bits(mask: torch.Tensor) -> torch.Tensor:
    """Estimated bits of each entry when kept: VALUE_BITS plus -log2 of its density under independent row and
    column densities of `mask` (2-D view (shape[0], rest), as the mask coder sees it): (n_i + 1/2)(m_j + 1/2) / N
    for n_i kept in its row, m_j in its column and N in all."""
    m = mask.reshape(mask.shape[0], -1).float()
    density = (m.sum(1, keepdim=True) + 0.5) * (m.sum(0, keepdim=True) + 0.5) / m.sum().clamp(min=1.0)
    return (VALUE_BITS - torch.log2(density.clamp(max=1.0))).reshape(mask.shape)


def regrow(weight: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, share: float, cost: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new mask, dropped flat indices, grown flat indices) for one weight; `mask` is bool, `grad` the
    gradient at the masked weight (dense); `cost` ranks by magnitude and gradient per `coded_bits`. Entries
    dropped now are not grown back at the same step."""
    flat_mask = mask.reshape(-1)
    kept = int(flat_mask.sum())
    k = min(int(share * kept), int((~flat_mask).sum()))
    empty = torch.zeros(0, dtype=torch.long, device=weight.device)
    if k <= 0:
        return mask, empty, empty
    per_bit = coded_bits(mask).reshape(-1).to(weight.dtype) if cost else torch.ones_like(weight.reshape(-1))
    magnitude = torch.where(flat_mask, weight.detach().reshape(-1).abs() / per_bit,
                            torch.full_like(flat_mask, math.inf, dtype=weight.dtype))
    dropped = torch.topk(magnitude, k, largest=False).indices
    score = torch.where(flat_mask, torch.full_like(flat_mask, -math.inf, dtype=grad.dtype),
                        grad.reshape(-1).abs() / per_bit.to(grad.dtype))
    grown = torch.topk(score, k).indices
    new = flat_mask.clone()
    new[dropped] = False
    new[grown] = True
    return new.reshape(mask.shape), dropped, grown
