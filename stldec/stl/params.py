"""Parametrised formulae: a formula's template and its parameter vector, and robustness differentiable in it.

A `Template` is a formula with its numbers taken out: the thresholds of its atoms (in post-order, `Formula.walk`)
and the integer windows of its temporal operators (post-order too). `build` puts numbers back and returns a new
formula; nothing is ever mutated in place (formulae are frozen).

    >>> t = Template(parse("always[0,10] ( x_0 >= 0.5 )"))
    >>> t.thresholds, t.windows
    ([0.5], [(0, 9)])
    >>> str(t.build([0.25], [(2, 9)]))
    'always[2,10] ( x_0 >= 0.25 )'

Robustness is piecewise linear in the thresholds: at each trajectory the time-0 value is `±(x_v(t) - c_k)` for one
atom k, the one the min/max path selects, so its gradient is ±1 on that atom and 0 elsewhere. `active_atoms`
finds that atom for every (formula, trajectory) with *two* passes of the fused engine: one at the thresholds, one
with atom k shifted by `(k + 1) * EPS`; the change reads off k and the sign. `threshold_robustness` wraps this as a
torch autograd function, so any torch loss on robustness can be minimised over the thresholds of a batch of
candidates (`fit_thresholds`); the kernel refinement (`stldec.refine`) and requirement mining both use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from .formula import Always, And, Atom, Eventually, Formula, Interval, Not, Or, Until, parse
from .semantics import robustness

TEMPORAL = (Always, Eventually, Until)
EPS = 1e-4  # atom k is shifted by (k + 1) * EPS to find the active atom; float32 robustness resolves it easily


class Template:
    """A formula's structure with its thresholds (P floats) and windows (W pairs `(start, end | None)`) apart.

    `windows[i]` is None for an unbounded operator (no interval). Two formulae that differ only in their numbers
    have equal `key`s.
    """

    __slots__ = ("formula", "thresholds", "windows", "key")

    def __init__(self, formula: Formula | str):
        self.formula = parse(formula) if isinstance(formula, str) else formula
        nodes = list(self.formula.walk())
        self.thresholds = [float(n.threshold) for n in nodes if isinstance(n, Atom)]
        self.windows = [None if n.interval is None else (n.interval.start, n.interval.end)
                        for n in nodes if isinstance(n, TEMPORAL)]
        self.key = self.build([0.0] * len(self.thresholds), [None if w is None else (0, 0) for w in self.windows])

    @property
    def n_thresholds(self) -> int:
        return len(self.thresholds)

    def build(self, thresholds: Sequence[float] | torch.Tensor | None = None,
              windows: Sequence[tuple[int, int | None] | None] | None = None) -> Formula:
        """A new formula with these thresholds (default: the template's) and windows (default: the template's)."""
        th = self.thresholds if thresholds is None else [float(c) for c in thresholds]
        ws = self.windows if windows is None else list(windows)
        if len(th) != len(self.thresholds) or len(ws) != len(self.windows):
            raise ValueError(f"the template has {len(self.thresholds)} thresholds and {len(self.windows)} windows, "
                             f"got {len(th)} and {len(ws)}")
        if not all(map(math.isfinite, th)):
            raise ValueError(f"thresholds must be finite, got {th}")
        it_t, it_w = iter(th), iter(ws)

        def rebuild(f: Formula) -> Formula:
            if isinstance(f, Atom):
                return replace(f, threshold=next(it_t))
            kids = {name: rebuild(getattr(f, name)) for name in ("child", "left", "right") if hasattr(f, name)}
            if isinstance(f, TEMPORAL):
                w = next(it_w)
                if (w is None) != (f.interval is None):
                    raise ValueError(f"window {w} cannot replace {f.interval} (bounded and unbounded differ)")
                kids["interval"] = None if w is None else Interval(int(w[0]), None if w[1] is None else int(w[1]))
            return replace(f, **kids)

        return rebuild(self.formula)  # children are rebuilt before their parent: the post-order of `walk`

    def __repr__(self) -> str:
        return f"Template({str(self.formula)!r})"


def printable(formula: Formula) -> Formula:
    """The formula with its thresholds rounded to the 4 decimals it prints with (-0.0 as 0.0): the formula a search
    scores is then exactly the one its text gives back."""
    t = Template(formula)
    return t.build([round(c, 4) + 0.0 for c in t.thresholds])


def active_atoms(formulae: Sequence[Formula], trajectories: torch.Tensor, *, convention: str = "reference"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Time-0 robustness (B, N) and, per (formula, trajectory), the index of the atom (post-order) whose value it
    is (B, N) int64, -1 where none could be told apart (ties) — and its sign (B, N): +1 when robustness grows with
    that threshold (`x <= c` under an even number of negations), -1 when it falls. One batched call of the engine
    on 2B formulae."""
    templates = [Template(f) for f in formulae]
    shifted = [t.build([c + (k + 1) * EPS for k, c in enumerate(t.thresholds)]) for t in templates]
    rho = robustness(list(formulae) + shifted, trajectories, convention=convention)
    base, moved = rho[: len(formulae)], rho[len(formulae):]
    delta = (moved.double() - base.double()) / EPS  # ±(k + 1) up to float32 rounding
    k = delta.abs().round().long() - 1
    n_atoms = torch.tensor([t.n_thresholds for t in templates], device=k.device).view(-1, 1)
    ok = (k >= 0) & (k < n_atoms) & ((delta.abs() - (k + 1)).abs() < 0.25)
    return base, torch.where(ok, k, -1), torch.where(ok, delta.sign(), 0.0).to(base.dtype)


class _ThresholdRobustness(torch.autograd.Function):
    """thresholds (sum of P_b,) -> robustness (B, N) in the trajectories' dtype; backward scatters ±grad onto
    each trajectory's active atom."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, templates, trajectories, convention):
        sizes = [t.n_thresholds for t in templates]
        parts = flat.detach().cpu().double().split(sizes)
        formulae = [t.build(p.tolist()) for t, p in zip(templates, parts)]
        rho, k, sign = active_atoms(formulae, trajectories, convention=convention)
        offsets = torch.tensor([0] + sizes[:-1], device=k.device).cumsum(0).view(-1, 1)
        ctx.save_for_backward(torch.where(k >= 0, k + offsets, 0), sign)
        ctx.n, ctx.dtype = flat.numel(), flat.dtype
        return rho

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, sign = ctx.saved_tensors
        out = torch.zeros(ctx.n, dtype=ctx.dtype, device=grad.device)
        out.scatter_add_(0, index.flatten(), (grad * sign).flatten().to(ctx.dtype))
        return out, None, None, None


def threshold_robustness(templates: Sequence[Template], thresholds: torch.Tensor, trajectories: torch.Tensor, *,
                         convention: str = "reference") -> torch.Tensor:
    """Time-0 robustness (B, N) of `templates[b]` built with its slice of `thresholds` (the concatenation of every
    template's thresholds, a 1-D tensor), differentiable in `thresholds` (the exact subgradient: ±1 on the atom
    the min/max path selects)."""
    n = sum(t.n_thresholds for t in templates)
    if thresholds.dim() != 1 or thresholds.numel() != n:
        raise ValueError(f"the templates have {n} thresholds together, got a tensor of shape {tuple(thresholds.shape)}")
    return _ThresholdRobustness.apply(thresholds, list(templates), trajectories, convention)


def fit_thresholds(templates: Sequence[Template], loss: Callable[[torch.Tensor], torch.Tensor],
                   trajectories: torch.Tensor, *, steps: int = 30, lr: float = 0.05,
                   start: torch.Tensor | None = None, convention: str = "reference"
                   ) -> tuple[list[Formula], torch.Tensor]:
    """Minimise `loss(rho) -> (B,)` (one value per template, lower is better; rho (B, N)) over the thresholds with
    Adam for `steps` steps, keeping each template's best thresholds seen (never worse than the start).

    Returns the best formulae and their losses (B,). `start`: the flat initial thresholds (default: the
    templates' own)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    theta0 = torch.tensor([c for t in templates for c in t.thresholds], dtype=torch.float64) if start is None \
        else start.detach().double().clone()
    theta = theta0.clone().requires_grad_(True)
    sizes = [t.n_thresholds for t in templates]
    owner = torch.repeat_interleave(torch.arange(len(templates)), torch.tensor(sizes, dtype=torch.long))
    best, best_loss = theta0.clone(), torch.full((len(templates),), float("inf"), dtype=torch.float64)
    opt = torch.optim.Adam([theta], lr=lr)
    for step in range(steps + 1):
        with torch.enable_grad():  # also under a caller's no_grad (decoding)
            values = loss(threshold_robustness(templates, theta, trajectories, convention=convention))
            total = values.sum()
        better = values.detach().double() < best_loss
        best_loss = torch.where(better, values.detach().double(), best_loss)
        best = torch.where(better[owner], theta.detach(), best)
        if step == steps or not any(sizes):
            break
        opt.zero_grad()
        total.backward()
        opt.step()
    formulae = [t.build(p.tolist()) for t, p in zip(templates, best.split(sizes))]
    return formulae, best_loss


def neighbours(formula: Formula, *, n_vars: int, n_points: int, steps: Sequence[int] = (1, 4)) -> list[Formula]:
    """Formulae one edit away (new objects; `formula` is untouched), each fitting `n_vars` variables and horizon
    <= n_points - 1: a window end-point moved by ±s (s in `steps`) or the whole window shifted by ±s; always <->
    eventually; and <-> or; an atom's <= <-> >= or its variable; and simplifications: a binary node replaced by
    either operand, a unary node by its operand (`not` of an atom by the flipped atom,
    which is equal). Duplicates and the formula itself are dropped."""

    out: dict[Formula, None] = {}

    def edits(f: Formula):
        """Every one-edit variant of the subtree f."""
        match f:
            case Atom():
                yield replace(f, lte=not f.lte)
                yield from (replace(f, var=v) for v in range(n_vars) if v != f.var)
                return
            case Always() | Eventually():
                yield (Eventually if isinstance(f, Always) else Always)(f.child, f.interval)
            case And() | Or():
                yield (Or if isinstance(f, And) else And)(f.left, f.right)
        if len(f.children) == 1 or isinstance(f, And | Or):
            yield from (replace(c, lte=not c.lte) if isinstance(f, Not) and isinstance(c, Atom) else c
                        for c in f.children)
        if getattr(f, "interval", None) is not None:
            a, b = f.interval.start, f.interval.end
            moves = [(a + d, b) for s in steps for d in (-s, s)]
            if b is not None:
                moves += [(a, b + d) for s in steps for d in (-s, s)] + [(a + d, b + d) for s in steps for d in (-s, s)]
            for a2, b2 in moves:
                if a2 >= 0 and (b2 is None or b2 >= a2):
                    yield replace(f, interval=Interval(a2, b2))
        for name in ("child", "left", "right"):
            if hasattr(f, name):
                yield from (replace(f, **{name: g}) for g in edits(getattr(f, name)))

    for g in edits(formula):
        if g != formula and not isinstance(g, Atom) and g.time_horizon < n_points:
            out[g] = None
    return list(out)
