"""Seeded random STL formulae: the reference distribution (research §5.1-5.2) without its bugs.

A formula is drawn in two steps:
1. its *skeleton* (operators and atoms). Operators follow `operator_probs` (reference: not/and/or/eventually/until
   0.166, always 0.17); atoms are `x_i <= c` / `x_i >= c` with i uniform over `n_vars`, either comparison with
   probability 1/2 and c ~ N(threshold_mean, threshold_sd²) rounded to `threshold_decimals` (default 4) decimals
   (so printing is lossless).
   Depth (DESIGN.md: an atom has depth 1) is either *exact* — every root-to-leaf path has d - 1 operators, complete
   trees like the published data — with d drawn from `depth_shares`, or *free* (`depth_shares=None`): a child is an
   atom with probability `leaf_prob`, forced to be an operator until depth `min_depth` and an atom at `max_depth`.
   The root is never an atom. Recursion is bounded by the depth (<= MAX_DEPTH): never a RecursionError.
2. its *intervals*, each from the reference law (R = `time_bound_max_range`): unbounded with probability
   `unbounded_prob`; else right-unbounded `[a, inf)` with probability `right_unbounded_prob`, a ~ U{0..R-1}; else
   bounded `[a, b]` (closed offsets; printed `[a,b+1]` in the reference dialect), a ~ U{0..R-1}, b ~ U{a+1..R} —
   conditioned on `time_horizon <= n_points - 1`. The first draw is kept when it fits; otherwise the intervals are
   drawn exactly from that conditional law by dynamic programming over the horizon budget, so there is no rejection
   loop at all. Only the intervals are conditioned: the skeleton's law (operator mix, depth) is left untouched,
   whereas the reference re-drew whole subtrees and summed the horizons of until's children, which thinned until
   and the temporal operators in its data.

Unlike the reference, `n_vars` is honoured at every depth and the default free branching (leaf_prob 0.3, super-
critical) cannot recurse forever, since leaves are forced at `max_depth`.

    >>> gen = FormulaGenerator("balanced", seed=0)
    >>> formulae = gen.sample(600)          # exactly 100 of each depth 2..7, shuffled
    >>> one = gen.sample_depth(4)           # exact depth 4
"""

from __future__ import annotations

import json
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .formula import Always, And, Atom, Eventually, Formula, Interval, Not, Or, Until

OPERATORS = ("not", "and", "or", "always", "eventually", "until")
NODES = {"not": Not, "and": And, "or": Or, "always": Always, "eventually": Eventually, "until": Until}
ARITY = {"not": 1, "and": 2, "or": 2, "always": 1, "eventually": 1, "until": 2}
TEMPORAL = ("always", "eventually", "until")
TEMPORAL_NODES = (Always, Eventually, Until)
MAX_DEPTH = 100  # formulae deeper than this would strain Python's stack in the recursive Formula properties
MAX_DUPLICATES = 10_000  # unique=True gives up (RuntimeError) after this many duplicates in a row


@dataclass
class GeneratorConfig:
    """All knobs of the formula distribution; `FormulaGenerator.config` is `asdict` of it (JSON-serialisable)."""

    seed: int = 0
    n_vars: int = 3
    n_points: int = 100  # every formula has time_horizon <= n_points - 1
    depth_shares: dict[int, float] | None = None  # exact depths {depth: relative share}; None = free branching
    min_depth: int = 2  # free branching: every leaf at depth >= min_depth
    max_depth: int = 7  # free branching: leaves forced at this depth
    leaf_prob: float = 0.3  # free branching: probability that a child that may be an atom is one
    operator_probs: dict[str, float] = field(
        default_factory=lambda: dict(zip(OPERATORS, (0.166, 0.166, 0.166, 0.17, 0.166, 0.166)))
    )
    unbounded_prob: float = 0.1
    right_unbounded_prob: float = 0.2
    time_bound_max_range: int = 35  # R: starts a ~ U{0..R-1}, bounded ends b ~ U{a+1..R}
    threshold_mean: float = 0.0
    threshold_sd: float = 1.0
    threshold_decimals: int = 4  # thresholds are rounded to this many decimals (0..4; the published data: 4)
    unique: bool = False  # never yield the same formula twice in this generator's lifetime

    def __post_init__(self):
        if self.depth_shares is not None:  # JSON turns int keys into strings
            self.depth_shares = {int(d): float(w) for d, w in self.depth_shares.items()}
            w = list(self.depth_shares.values())
            if any(not 2 <= d <= MAX_DEPTH for d in self.depth_shares) or min(w, default=-1) < 0 or not sum(w) > 0:
                raise ValueError(f"depth_shares needs depths in 2..{MAX_DEPTH} with shares >= 0 summing to > 0, "
                                 f"got {self.depth_shares}")
        if not 2 <= self.min_depth <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"need 2 <= min_depth <= max_depth <= {MAX_DEPTH}, got {self.min_depth}, "
                             f"{self.max_depth}")
        unknown = set(self.operator_probs) - set(OPERATORS)
        if unknown or min(self.operator_probs.values(), default=0) < 0 or not sum(self.operator_probs.values()) > 0:
            raise ValueError(f"operator_probs maps a subset of {OPERATORS} to weights >= 0 summing to > 0, "
                             f"got {self.operator_probs}")
        for name in ("leaf_prob", "unbounded_prob", "right_unbounded_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")
        if self.n_vars < 1 or self.n_points < 1 or self.time_bound_max_range < 1 or self.threshold_sd < 0:
            raise ValueError("need n_vars >= 1, n_points >= 1, time_bound_max_range >= 1, threshold_sd >= 0")
        if not 0 <= self.threshold_decimals <= 4:
            raise ValueError(f"threshold_decimals must be in 0..4, got {self.threshold_decimals}")


PRESETS: dict[str, dict] = {
    "random": {},  # free branching like the published "old/random" training set
    "balanced": {"depth_shares": dict.fromkeys(range(2, 8), 1.0)},
    "easy": {"depth_shares": {2: 30, 3: 25, 4: 18, 5: 12, 6: 9, 7: 6}},
    "hard": {"depth_shares": {2: 6, 3: 9, 4: 12, 5: 18, 6: 25, 7: 30}},
}


class FormulaGenerator:
    """Seeded, reproducible random formulae. `sample(n)`, `sample_depth(d)`, or iterate for an endless stream."""

    def __init__(self, preset: str | None = "balanced", *, seed: int = 0, n_vars: int = 3, n_points: int = 100,
                 **overrides):
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)} or None")
        valid = {f.name for f in fields(GeneratorConfig)}
        if unknown := set(overrides) - valid:
            raise ValueError(f"unknown generator option(s) {sorted(unknown)}; valid: {sorted(valid)}")
        base = PRESETS[preset] if preset is not None else {}
        self.cfg = c = GeneratorConfig(**{**base, "seed": seed, "n_vars": n_vars, "n_points": n_points, **overrides})
        self.rng = random.Random(c.seed)
        self.horizon = c.n_points - 1
        self._seen: set[Formula] = set()
        ops = [o for o in OPERATORS if c.operator_probs.get(o, 0) > 0]
        self._ops, self._op_cum = ops, np.cumsum([c.operator_probs[o] for o in ops]).tolist()
        self._depths = sorted(d for d, w in (c.depth_shares or {}).items() if w > 0)
        # law of an interval's horizon contribution k = 0..R (0 if unbounded, a if [a, inf), b if [a, b]), by kind
        R, pu, pr = c.time_bound_max_range, c.unbounded_prob, c.right_unbounded_prob
        self._kind_pmf = np.zeros((3, R + 1))  # (unbounded, right-unbounded, bounded) x k
        self._kind_pmf[0, 0] = pu
        self._kind_pmf[1, :R] = (1 - pu) * pr / R
        self._kind_pmf[2, 1:] = (1 - pu) * (1 - pr) * np.cumsum(1 / (R * (R - np.arange(R))))  # sum_{a<b} P(a)P(b|a)
        self._pmf = self._kind_pmf.sum(0)
        for d in self._depths or [c.max_depth]:
            self._check_fits(d)

    @classmethod
    def from_config(cls, config: dict | str | Path) -> FormulaGenerator:
        """From a dict (or a JSON file) of `GeneratorConfig` fields, optionally with a base `"preset"`."""
        if not isinstance(config, dict):
            config = json.loads(Path(config).read_text())
        return cls(**{"preset": None, **config})

    @property
    def config(self) -> dict:
        """Every knob, including the seed: `FormulaGenerator.from_config(g.config)` replays g's stream from start."""
        return asdict(self.cfg)

    def __repr__(self) -> str:
        return f"FormulaGenerator({self.config})"

    def sample(self, n: int) -> list[Formula]:
        """n formulae. With `depth_shares`, depth counts are exactly the shares' apportionment of n (largest
        remainder), in random order; with free branching, n independent draws."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not self._depths:
            return [self._draw(None) for _ in range(n)]
        w = np.array([self.cfg.depth_shares[d] for d in self._depths])
        quota = n * w / w.sum()
        counts = np.floor(quota).astype(int)
        counts[np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]] += 1
        depths = [d for d, k in zip(self._depths, counts) for _ in range(k)]
        self.rng.shuffle(depths)
        return [self._draw(d) for d in depths]

    def sample_depth(self, depth: int) -> Formula:
        """One formula of exact depth `depth` (every root-to-leaf path has depth - 1 operators)."""
        if not 2 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be in 2..{MAX_DEPTH} (the root is never an atom), got {depth}")
        self._check_fits(depth)
        return self._draw(depth)

    def __iter__(self) -> Iterator[Formula]:
        """Endless stream; with `depth_shares` each depth is drawn independently with its share's probability."""
        weights = [self.cfg.depth_shares[d] for d in self._depths]
        while True:
            yield self._draw(self.rng.choices(self._depths, weights)[0] if self._depths else None)

    # -----------------------------------------------------------------------------------------------------------

    def _check_fits(self, depth: int) -> None:
        """Every skeleton of this depth must admit intervals within the horizon (else sampling could not succeed)."""
        if any(o in TEMPORAL for o in self._ops) and (depth - 1) * int(np.argmax(self._pmf > 0)) > self.horizon:
            raise ValueError(f"depth {depth} cannot fit n_points={self.cfg.n_points} with these interval settings "
                             f"(bounded windows only: each temporal operator needs >= 1 sample)")

    def _draw(self, depth: int | None) -> Formula:
        lo, hi = (depth, depth) if depth is not None else (self.cfg.min_depth, self.cfg.max_depth)
        for _ in range(MAX_DUPLICATES):
            f, h = self._grow(0, lo, hi)
            if h > self.horizon:  # keep the skeleton, redraw its intervals conditioned on fitting (module docstring)
                fit: dict[int, np.ndarray] = {}
                self._fit(f, fit)
                f, h = self._refit(f, fit, self.horizon)
            if not self.cfg.unique:
                return f
            if f not in self._seen:
                self._seen.add(f)
                return f
        raise RuntimeError(f"unique=True: {MAX_DUPLICATES} duplicates in a row; the formula space is exhausted")

    def _grow(self, level: int, lo: int, hi: int) -> tuple[Formula, int]:
        """(formula, its horizon) with intervals from their unconditioned law; `level` = operators above this node."""
        r, c = self.rng, self.cfg
        if level >= lo - 1 and (level >= hi - 1 or r.random() < c.leaf_prob):
            threshold = round(r.gauss(c.threshold_mean, c.threshold_sd), c.threshold_decimals) + 0.0  # + 0.0: no "-0.0"
            return Atom(r.randrange(c.n_vars), threshold, r.random() < 0.5), 0
        op = self._ops[bisect(self._op_cum, r.random() * self._op_cum[-1])]
        kids = [self._grow(level + 1, lo, hi) for _ in range(ARITY[op])]
        args, h = [f for f, _ in kids], max(h for _, h in kids)
        if op in TEMPORAL:
            args.append(self._interval())
            h += _contribution(args[-1])
        return NODES[op](*args), h

    def _fit(self, f: Formula, fit: dict[int, np.ndarray]) -> np.ndarray:
        """P(horizon of f with redrawn intervals <= budget), budget = 0..horizon; stores the children's joint one."""
        if isinstance(f, Atom):
            return np.ones(self.horizon + 1)
        fit[id(f)] = p = np.prod([self._fit(k, fit) for k in f.children], axis=0)
        return np.convolve(self._pmf, p)[: self.horizon + 1] if isinstance(f, TEMPORAL_NODES) else p

    def _refit(self, f: Formula, fit: dict[int, np.ndarray], budget: int) -> tuple[Formula, int]:
        """(f with intervals drawn conditioned on horizon <= budget, its horizon), using `_fit`'s tables."""
        if isinstance(f, Atom):
            return f, 0
        interval = ()
        if isinstance(f, TEMPORAL_NODES):
            w = self._pmf[: budget + 1] * fit[id(f)][budget::-1][: self._pmf.size]  # k -> P(k) P(children fit)
            interval = (self._interval(self.rng.choices(range(w.size), w.tolist())[0]),)
        k = _contribution(*interval)
        built = [self._refit(c, fit, budget - k) for c in f.children]
        return type(f)(*(g for g, _ in built), *interval), k + max(h for _, h in built)

    def _interval(self, k: int | None = None) -> Interval | None:
        """An interval from the reference law; given `k`, from that law conditioned on its horizon contribution."""
        r, c = self.rng, self.cfg
        R = c.time_bound_max_range
        if k is None:
            if r.random() < c.unbounded_prob:
                return None
            a = r.randrange(R)
            return Interval(a, None) if r.random() < c.right_unbounded_prob else Interval(a, r.randint(a + 1, R))
        kind = r.choices(range(3), self._kind_pmf[:, k].tolist())[0]
        if kind == 0:
            return None
        if kind == 1:
            return Interval(k, None)
        return Interval(r.choices(range(k), [1 / (R - a) for a in range(k)])[0], k)  # P(a | b = k) ∝ 1 / (R - a)


def _contribution(interval: Interval | None = None) -> int:
    """What a temporal operator adds to the horizon: 0 unbounded, a for [a, inf), b for [a, b]."""
    return 0 if interval is None else interval.start if interval.end is None else interval.end
