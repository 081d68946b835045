"""The distillation loop: the student learns the teacher's soft outputs on (augmented) calibration inputs.

Loss per output: T^2 * KL(teacher/T || student/T) for classifier outputs ([N, C], C >= 2), relative MSE
otherwise (token outputs [N, tokens, ...] with their rows at pads zeroed in teacher and student alike, by the
attention-mask input, as the task metrics read them) plus, when the run's metric is a pooled cosine
(`cosine:mean`, `cosine:first`), 1 - that cosine of the pooled outputs, the budget's own quantity; plus
`label_weight` x cross-entropy when labels exist. Adam with a cosine learning rate; every
batch and augmentation is drawn from one numpy generator whose state the checkpoint keeps, so a resumed
run continues bit-identically. Validation (KL at T = 1 on a held-out part of the training set, or on all
of the calibration set) picks the best step when `keep_best`. With `weight_evolution`, every `we_every`
steps the evolvable weights' inferior filters are crossed with important ones (passes/torchnet/weight_evolution.py)
before the step, then projected back onto their constraints; it depends only on the step and the weights,
so resuming stays bit-identical. With `regrow`, every `regrow_every` steps a decaying share of each pruned
weight's kept entries moves to where the gradient is largest (passes/torchnet/regrow.py); the masks are part
of the snapshots and checkpoints.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from evonnx.passes.engine.metrics import kl_divergence, relative_mse
from evonnx.passes.engine.tasks import output_groups, zero_pads
from evonnx.passes.progress import progress
from evonnx.passes.sparsity import checkpoint
from evonnx.passes.sparsity.tokens import mask_input, token_keep
from evonnx.passes.torchnet import regrow, weight_evolution
from evonnx.passes.torchnet.constrain import Constraint
from evonnx.passes.torchnet.convert import OnnxModule, run_numpy

if TYPE_CHECKING:
    from evonnx.passes.distill_finetune import DistillFinetune

log = logging.getLogger(__name__)

AUGMENTS = ("shift", "noise", "mixup")


def is_classifier(t: np.ndarray | torch.Tensor) -> bool:
    return t.ndim == 2 and t.shape[1] >= 2 and t.dtype in (np.float32, np.float64, torch.float32, torch.float64)


def as_logits(x: torch.Tensor, probabilities: bool) -> torch.Tensor:
    """Class scores as logits: probabilities (a Softmax inside the model) by their log, so that a softmax
    (with a temperature) of them is a distribution again rather than a flattened one."""
    return torch.log(x.clamp_min(1e-12)) if probabilities else x


def is_probability(t: torch.Tensor) -> bool:
    return bool(t.min() >= 0 and t.max() <= 1 and torch.allclose(t.sum(-1), torch.ones((), dtype=t.dtype), atol=1e-3))


def grouped_mse(student: torch.Tensor, teacher: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """metrics.relative_mse with error groups, in torch: each group's squared error over its teacher energy,
    averaged over the groups (`groups`: ids 0..G-1 broadcast against the output)."""
    ids = groups.expand_as(teacher).reshape(-1)
    err = torch.zeros(int(ids.max()) + 1, dtype=teacher.dtype, device=teacher.device)
    err = err.index_add(0, ids, (student - teacher).pow(2).reshape(-1))
    energy = torch.zeros_like(err).index_add(0, ids, teacher.pow(2).reshape(-1))
    return (err / energy.clamp_min(1e-30)).mean()


def pooled_gap(student, teacher, tokens, pool: str):
    """Mean 1 - cosine of token outputs [N, tokens, ...] (pads zeroed) pooled as the Cosine metric pools them
    (validation measures it with the metric itself): the mean over the real tokens (`tokens` [N, tokens]; None:
    all) or the first token."""
    if pool == "first":
        s, t = student[:, 0], teacher[:, 0]
    else:
        count = student.shape[1] if tokens is None else tokens.sum(1).reshape(-1, *[1] * (student.ndim - 2))
        s, t = student.sum(1) / count, teacher.sum(1) / count
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    norms = ((s * s).sum(1) * (t * t).sum(1)) ** 0.5
    return (1 - (s * t).sum(1) / (norms + 1e-30)).mean()


def distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float,
                 groups: list[torch.Tensor | None] | None = None, tokens: torch.Tensor | None = None,
                 pool: str = "") -> torch.Tensor:
    """The loss of one batch; `groups`: each output's error groups (passes/engine/tasks.py; None: one);
    `tokens`: [N, tokens] bool, the batch's real tokens (None: no mask input); `pool`: the pooled cosine
    metric's pooling ("mean", "first"; "": none)."""
    total = 0.0
    for s, t, g in zip(student, teacher, groups or [None] * len(teacher)):
        real = tokens.to(t.dtype) if tokens is not None and t.ndim >= 3 and tuple(t.shape[:2]) == tuple(
            tokens.shape) else None
        if real is not None:
            keep = real.reshape(tuple(real.shape) + (1,) * (t.ndim - 2))
            s, t = s * keep, t * keep
        if is_classifier(t):
            probs = is_probability(t)
            s, t = as_logits(s, probs), as_logits(t, probs)
            total = total + F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                     log_target=True, reduction="batchmean") * temperature ** 2
        elif g is not None:
            total = total + grouped_mse(s, t, g)
        else:
            total = total + F.mse_loss(s, t) / (t.pow(2).mean() + 1e-12)
        if pool and t.ndim == 3 and not is_classifier(t):
            total = total + pooled_gap(s, t, real, pool)
    return total


class Distiller:
    """One run: split, batches, augmentation, optimizer, validation, checkpoints."""

    def __init__(self, teacher: OnnxModule, student: OnnxModule, constraints: dict[str, Constraint],
                 inputs: dict[str, np.ndarray], labels: np.ndarray | None, s: DistillFinetune.Config, seed: int,
                 ckpt: Path | None, fingerprint: str, progress: bool,
                 train: tuple[dict[str, np.ndarray], np.ndarray | None] | None = None,
                 evolve_axes: dict[str, int] | None = None, metric=None):
        """`inputs`/`labels`: the calibration set, split by `holdout` into training and validation;
        `train`: a separate (inputs, labels) training set, in which case `holdout` of it validates (with
        0, all of `inputs` validates: biased where earlier passes fitted weights to the calibration set);
        `evolve_axes`: weights that Weight Evolution may change, with their filter axes; `metric`: the run's task
        metric, whose error groups the loss takes (samples on axis 0 of every output)."""
        self.evolve_axes, self.evolved = dict(evolve_axes or {}), {}
        self.teacher, self.student, self.constraints, self.s = teacher, student, constraints, s
        self.ckpt, self.fp, self.progress = ckpt, fingerprint, progress
        names = student.input_names
        source, source_labels = (inputs, labels) if train is None else train
        n = len(next(iter(source.values())))
        order = np.random.default_rng([seed, 0x5E]).permutation(n)
        n_val = int(round(s.holdout * n)) if s.holdout > 0 else 0
        if n_val:
            val_x, rows = {k: source[k][order[:n_val]] for k in names}, order[n_val:]
        elif train is None:
            val_x, rows = {k: inputs[k][order] for k in names}, order
        else:
            val_x, rows = inputs, slice(None)
        self.train_x = [source[k][rows] for k in names]
        self.train_y = None if source_labels is None else source_labels[rows].astype(np.int64)
        self.val_x = {k: val_x[k] for k in names}
        self.device = student.device
        self.input_axes = {k: 0 for k in names}
        self.val_tokens = token_keep(self.val_x, self.input_axes)
        self.val_t = [zero_pads(t, self.val_tokens) for t in run_numpy(teacher, self.val_x)]
        self.groups = output_groups(metric, self.val_t, [0] * len(self.val_t))
        self.pool = getattr(metric, "pool", "")  # a pooled cosine metric's pooling
        self.metric = metric
        self.loss_groups = [None if g is None else torch.from_numpy(g).to(self.device) for g in self.groups]
        self.stds = [float(np.std(x)) if np.issubdtype(x.dtype, np.floating) else 0.0 for x in self.train_x]
        mask = mask_input(dict(zip(names, self.train_x)), self.input_axes)  # never augmented
        self.augmented = [np.issubdtype(x.dtype, np.floating) and k != mask for k, x in zip(names, self.train_x)]
        self.regrow_names = [n for n in student.weight_names if s.regrow.share > 0 and n in constraints
                             and constraints[n].mask is not None and constraints[n].record is None]
        self.regrown: dict[str, int] = {}
        self.params = {n: student.parameter(n) for n in student.weight_names}  # by name, as checkpoints hold them
        self.params.update({f"{n}/centroids": c.centroids for n, c in constraints.items() if c.centroids is not None})
        self.opt = torch.optim.Adam(list(self.params.values()), lr=s.lr, foreach=True)
        self.rng = np.random.default_rng([seed, 0xD1])
        self.step, self.elapsed_before, self.curve = 0, 0.0, []
        self.best_val, self.best_step, self.best = math.inf, 0, None
        self.t0 = time.perf_counter()

    # -- data ----------------------------------------------------------------------------------------
    def batch(self) -> tuple[list[torch.Tensor], torch.Tensor | None, tuple | None]:
        n = len(self.train_x[0])
        idx = self.rng.choice(n, min(self.s.batch_size, n), replace=False)
        xs = [x[idx].copy() for x in self.train_x]
        ys = None if self.train_y is None else self.train_y[idx]
        mix = None
        for j, x in enumerate(xs):
            if not self.augmented[j]:
                continue
            if "shift" in self.s.augment and x.ndim == 4 and self.s.shift > 0:
                xs[j] = self._shift(x)
            if "noise" in self.s.augment and self.s.noise > 0:
                xs[j] = xs[j] + (self.s.noise * self.stds[j] * self.rng.standard_normal(x.shape)).astype(x.dtype)
        if "mixup" in self.s.augment and self.s.mixup > 0:
            lam = self.rng.beta(self.s.mixup, self.s.mixup, len(idx)).astype(np.float32)
            perm = self.rng.permutation(len(idx))
            for j, x in enumerate(xs):
                if self.augmented[j]:
                    shape = (-1,) + (1,) * (x.ndim - 1)
                    xs[j] = lam.reshape(shape) * x + (1 - lam.reshape(shape)) * x[perm]
            mix = (torch.from_numpy(lam).to(self.device), torch.from_numpy(perm).to(self.device))
        labels = None if ys is None else torch.from_numpy(ys).to(self.device)
        return [torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in xs], labels, mix

    def _shift(self, x: np.ndarray) -> np.ndarray:
        k = self.s.shift
        padded = np.pad(x, ((0, 0), (0, 0), (k, k), (k, k)))
        d = self.rng.integers(0, 2 * k + 1, size=(len(x), 2))
        h, w = x.shape[2:]
        return np.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(d)])

    # -- training ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def validate(self) -> float:
        ys = [zero_pads(y, self.val_tokens) for y in run_numpy(self.student, self.val_x)]
        vals = [kl_divergence(t, s) if is_classifier(t) else relative_mse(t, s, g) + (
                self.metric.drop([t], [s], tokens=self.val_tokens).points / 100 if self.pool and t.ndim == 3 else 0.0)
                for s, t, g in zip(ys, self.val_t, self.groups)]
        kls = [v for v, t in zip(vals, self.val_t) if is_classifier(t)]
        return float(np.mean(kls if kls else vals))

    def evolve(self) -> dict[str, int]:
        """Weight Evolution on the evolvable weights, then their constraints; adds up the counts per layer."""
        s = self.s
        we = self.s.weight_evolution
        frac = we.fraction * (0.5 * (1 + math.cos(math.pi * self.step / max(s.steps, 1))) if we.decay else 1.0)
        weights = {n: self.student.parameter(n) for n in self.evolve_axes}
        masks = {n: self.constraints[n].mask if n in self.constraints else None for n in self.evolve_axes}
        stats = weight_evolution.evolve(weights, masks, self.evolve_axes, frac, we.relative)
        for n, k in stats.items():
            if n in self.constraints:
                self.constraints[n].project(weights[n])
            if k:
                self.evolved[n] = self.evolved.get(n, 0) + k
        return stats

    def train_step(self) -> float:
        s = self.s
        if self.evolve_axes and self.step and self.step % s.weight_evolution.every == 0:
            self.evolve()
        for g in self.opt.param_groups:
            g["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * self.step / max(s.steps, 1)))
        rg = s.regrow
        share = regrow.fraction(self.step, s.steps, rg.share, rg.until) \
            if self.regrow_names and self.step and self.step % rg.every == 0 else 0.0
        taps = self._tap() if share > 0 else {}
        xs, ys, mix = self.batch()
        with torch.no_grad():
            t_out = self.teacher(*xs)
        s_out = self.student(*xs)
        for name in taps:
            self.student.transforms[name] = self.constraints[name].transform
        keep = token_keep({k: x.cpu().numpy() for k, x in zip(self.student.input_names, xs)}, self.input_axes)
        tokens = None if keep is None else torch.from_numpy(keep).to(self.device)
        loss = distill_loss(s_out, t_out, s.temperature, self.loss_groups, tokens, self.pool)
        if s.label_weight > 0 and ys is not None:
            head = next((o for o in s_out if is_classifier(o)), None)
            if head is not None:
                if mix is None:
                    ce = F.cross_entropy(head, ys)
                else:
                    lam, perm = mix
                    per = F.cross_entropy(head, ys, reduction="none")
                    ce = (lam * per + (1 - lam) * F.cross_entropy(head, ys[perm], reduction="none")).mean()
                loss = loss + s.label_weight * ce
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        for name in self.student.weight_names:
            c = self.constraints.get(name)
            if c is not None:
                c.project(self.student.parameter(name))
        if taps:
            self._regrow(taps, share)
        self.step += 1
        return float(loss.item())

    def _tap(self) -> dict[str, torch.Tensor]:
        """Keep the masked weights of this step's forward, to read their (dense) gradients after backward."""
        taps: dict[str, torch.Tensor] = {}
        for name in self.regrow_names:
            def tapped(w: torch.Tensor, name: str = name) -> torch.Tensor:
                eff = self.constraints[name].transform(w)
                eff.retain_grad()
                taps[name] = eff
                return eff
            self.student.transforms[name] = tapped
        return taps

    def _regrow(self, taps: dict[str, torch.Tensor], share: float) -> None:
        """Move `share` of each mask's kept entries (regrow.py); moved entries and their Adam moments start at 0."""
        for name, eff in taps.items():
            c, p = self.constraints[name], self.student.parameter(name)
            if eff.grad is None:
                continue
            new, dropped, grown = regrow.regrow(p, eff.grad, torch.from_numpy(c.mask).to(p.device), share)
            if not len(dropped):
                continue
            moved = torch.cat([dropped, grown])
            with torch.no_grad():
                p.view(-1)[moved] = 0
                for moments in (self.opt.state.get(p, {}).get(k) for k in ("exp_avg", "exp_avg_sq")):
                    if moments is not None:
                        moments.view(-1)[moved] = 0
            c.set_mask(new.cpu().numpy())
            self.regrown[name] = self.regrown.get(name, 0) + len(dropped)

    def run(self) -> str:
        s = self.s
        if self.best is None:
            self._evaluate()
        bar = progress(s.steps, "distill-finetune", self.progress, self.step)
        stop = "steps"
        while self.step < s.steps:
            if s.time_limit and self.elapsed() >= s.time_limit:
                stop = "time_limit"
                break
            loss = self.train_step()
            bar.update(1)
            if self.step % s.eval_every == 0 or self.step == s.steps:
                self._evaluate()
                bar.set_postfix(loss=f"{loss:.4g}", val=f"{self.curve[-1][1]:.4g}", best=f"{self.best_val:.4g}")
            if self.step % s.checkpoint_every == 0:
                self.save()
        bar.close()
        if self.curve[-1][0] != self.step:
            self._evaluate()
        self.save()
        if s.keep_best:
            self.restore_best()
        return stop

    def _evaluate(self) -> None:
        val = self.validate()
        self.curve.append((self.step, val))
        if val < self.best_val or not self.s.keep_best:
            self.best_val, self.best_step, self.best = val, self.step, self._snapshot()

    def _snapshot(self) -> dict[str, dict[str, np.ndarray]]:
        """The parameters and regrown masks, by name."""
        return {"params": {n: p.detach().cpu().numpy().copy() for n, p in self.params.items()},
                "masks": {n: self.constraints[n].mask.copy() for n in self.regrow_names}}

    def _load(self, snapshot: dict[str, dict[str, np.ndarray]]) -> None:
        """Parameters (and regrown masks) from a snapshot."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(torch.from_numpy(snapshot["params"][n]))
        for n in self.regrow_names:
            self.constraints[n].set_mask(snapshot["masks"][n].astype(bool))

    def restore_best(self) -> None:
        self._load(self.best)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> None:
        if self.ckpt is None:
            return
        current = self._snapshot()
        adam = {n: self.opt.state[p] for n, p in self.params.items() if "exp_avg" in self.opt.state.get(p, {})}
        groups = {"params": current["params"], "masks": current["masks"], "best_params": self.best["params"],
                  "best_masks": self.best["masks"],
                  "adam_first_moments": {n: st["exp_avg"].cpu().numpy() for n, st in adam.items()},
                  "adam_second_moments": {n: st["exp_avg_sq"].cpu().numpy() for n, st in adam.items()}}
        adam_steps = {n: float(st["step"]) for n, st in adam.items()}
        header = {"fingerprint": self.fp, "step": self.step, "elapsed": self.elapsed(), "adam_steps": adam_steps,
                  "rng": self.rng.bit_generator.state, "best_val": self.best_val, "best_step": self.best_step,
                  "curve": self.curve, "we_evolved": self.evolved, "regrown": self.regrown}
        checkpoint.save(self.ckpt, header, groups)

    def resume(self) -> bool:
        loaded = checkpoint.load(self.ckpt, self.fp) if self.ckpt is not None else None
        if not loaded:
            return False
        header, groups = loaded
        self._load({"params": groups["params"], "masks": groups["masks"]})
        state = {i: {"step": torch.tensor(header["adam_steps"][n]),
                     "exp_avg": torch.from_numpy(groups["adam_first_moments"][n]),
                     "exp_avg_sq": torch.from_numpy(groups["adam_second_moments"][n])}
                 for i, n in enumerate(self.params) if n in header["adam_steps"]}
        self.opt.load_state_dict({"state": state, "param_groups": self.opt.state_dict()["param_groups"]})
        self.step, self.elapsed_before = header["step"], header["elapsed"]
        self.rng.bit_generator.state = header["rng"]
        self.best_val, self.best_step = header["best_val"], header["best_step"]
        self.curve = [tuple(c) for c in header["curve"]]
        self.evolved = dict(header.get("we_evolved", {}))
        self.regrown = dict(header.get("regrown", {}))
        self.best = {"params": groups["best_params"], "masks": groups["best_masks"]}
        log.info(f"distill-finetune: resumed at step {self.step}")
        return True
