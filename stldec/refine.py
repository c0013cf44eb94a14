"""Decode-time search: refine candidate formulae until their kernel embedding is as close as we can get to a target.

The network is good at the *shape* of a formula and poor at its numbers; the kernel encoder is a known, cheap
function, so the numbers (and small edits) are found by search against the target embedding:

    chosen = refine(candidates, targets, encoder, rounds=3)      # candidates[i]: formulae for target row i

For every target row, the candidates are scored by their embedding distance to the target; the best `top` of them
are refined in `rounds` (a candidate that reaches a local optimum hands over to the row's next one), each round
1. fitting their thresholds by gradient descent on the embedding distance (`stl.params.fit_thresholds`: robustness
   is piecewise linear in the thresholds, the kernel smooth in the robustness; anchors' robustness is cached), the
   result rounded to the printed 4 decimals; then
2. trying every one-edit neighbour (`stl.params.neighbours`: window end-points ±1/±4, always <-> eventually,
   and <-> or, <= <-> >=, another variable, a node replaced by an operand) and moving to the best one when it is
   closer (or no farther and smaller).
Every formula scored on the way is remembered; the row's answer is the closest of all of them, the smallest one
among those within `size_tolerance` of the best distance. Since the starting candidates are among them, the
answer is never farther from the target than re-ranking's. The search sees only the target embeddings and the
encoder (its anchors and trajectories): never a gold formula, never the trajectories the metrics use.

`search` is the same refinement without a network: its candidates are the library formulae (`formula_library`,
generated and embedded once per encoder) nearest to the target embedding — the baseline that shows what the
decoder adds. `budget_s` bounds the time per target row (anytime: the search stops after the phase that crosses
it); `rounds` alone makes the result deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .stl import FormulaGenerator, StlKernelEncoder
from .stl.formula import Formula
from .stl.params import Template, fit_thresholds, neighbours, printable

DISTANCES = ("cosine", "l2")
LIBRARY_SIZE = 20_000  # formulae in the search library (half `balanced`, half `random`)


def embedding_distance(embeddings: torch.Tensor, targets: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Row-wise distance (B,) between embeddings (B, D) and targets (B, D): 1 - cosine, or the L2 norm."""
    if distance == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(embeddings, targets.to(embeddings), dim=1)
    return (embeddings - targets.to(embeddings)).norm(dim=1)


def fits(f: Formula | None, encoder: StlKernelEncoder) -> bool:
    """f is a formula the encoder can embed (horizon and variables within its trajectories)."""
    return f is not None and f.time_horizon < encoder.n_points and max(f.variables) < encoder.n_vars


class _Scorer:
    """Embedding distances of (target row, formula) pairs, remembered per row: every formula the search scores."""

    def __init__(self, encoder: StlKernelEncoder, targets: torch.Tensor, distance: str):
        self.encoder, self.targets, self.distance = encoder, targets, distance
        self.seen: list[dict[Formula, float]] = [{} for _ in range(len(targets))]

    def loss(self, rows: Sequence[int]):
        """d(rho) for candidates of these rows: the differentiable objective of `fit_thresholds`."""
        t = self.targets[list(rows)]
        return lambda rho: embedding_distance(self.encoder.embed_robustness(rho), t, self.distance)

    def score(self, pairs: Sequence[tuple[int, Formula]], batch_size: int = 512) -> list[float]:
        """Distances of (row, formula) pairs, each formula embedded once per call; all are remembered."""
        todo = [(r, f) for r, f in pairs if f not in self.seen[r]]
        unique = list(dict.fromkeys(f for _, f in todo))
        if unique:
            emb = self.encoder.encode(unique, batch_size=batch_size)
            where = {f: i for i, f in enumerate(unique)}
            rows = [r for r, _ in todo]
            d = embedding_distance(emb[[where[f] for _, f in todo]], self.targets[rows], self.distance)
            for (r, f), v in zip(todo, d.tolist()):
                self.seen[r][f] = v
        return [self.seen[r][f] for r, f in pairs]

    def choose(self, row: int, size_tolerance: float) -> tuple[Formula, float]:
        """The closest formula seen for `row`, the smallest within `size_tolerance` of it."""
        seen = self.seen[row]
        limit = min(seen.values()) + size_tolerance
        f = min((f for f, d in seen.items() if d <= limit), key=lambda f: (f.size, seen[f], str(f)))
        return f, seen[f]


def refine(candidates: Sequence[Sequence[Formula | None]], targets: torch.Tensor, encoder: StlKernelEncoder, *,
           rounds: int = 3, steps: int = 10, lr: float = 0.05, top: int = 2, budget_s: float | None = None,
           distance: str = "cosine", size_tolerance: float = 0.0) -> list[tuple[Formula, float]]:
    """Per target row i, the (formula, embedding distance) found from `candidates[i]` (None entries and formulae
    the encoder cannot embed are skipped; a row left without any is a ValueError). See the module docstring.

    rounds: threshold fits + edit moves per row (0: re-ranking only); steps, lr: Adam steps and step size of each
    threshold fit; top: candidates refined per row (the closest ones); budget_s: seconds per row, None = no limit.
    """
    targets = torch.as_tensor(targets, dtype=torch.float32)
    if len(candidates) != len(targets):
        raise ValueError(f"{len(candidates)} candidate lists for {len(targets)} target embeddings")
    if targets.dim() != 2 or targets.shape[1] != encoder.embedding_dim:
        raise ValueError(f"targets must have shape (B, {encoder.embedding_dim}) for this encoder, got "
                         f"{tuple(targets.shape)}")
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is not one of {DISTANCES}")
    for name, value in (("rounds", rounds), ("steps", steps)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if top < 1 or not lr > 0 or size_tolerance < 0:
        raise ValueError(f"need top >= 1, lr > 0 and size_tolerance >= 0; got {top}, {lr}, {size_tolerance}")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be > 0 seconds per formula (or None for no limit), got {budget_s}")
    deadline = None if budget_s is None else time.monotonic() + budget_s * len(targets)
    out_of_time = lambda: deadline is not None and time.monotonic() > deadline  # noqa: E731

    pairs = [(i, f) for i, row in enumerate(candidates) for f in dict.fromkeys(row) if fits(f, encoder)]
    empty = sorted(set(range(len(targets))) - {i for i, _ in pairs})
    if empty:
        raise ValueError(f"no candidate the encoder can embed (valid, horizon < {encoder.n_points}, variables < "
                         f"{encoder.n_vars}) for target rows {empty[:10]}{' ...' * (len(empty) > 10)}")
    scorer = _Scorer(encoder, targets, distance)
    scorer.score(pairs)
    queue = []  # per row, its candidates closest first: the next one starts when a refined one is at an optimum
    for i in range(len(targets)):
        ranked = sorted(scorer.seen[i].items(), key=lambda kv: (kv[1], kv[0].size, str(kv[0])))
        queue.append([(i, f) for f, _ in reversed(ranked)])
    active = [queue[i].pop() for i in range(len(targets)) for _ in range(min(top, len(queue[i])))]
    for _ in range(rounds):
        if not active or out_of_time():
            break
        before = [scorer.seen[r][f] for r, f in active]
        rows = [r for r, _ in active]
        fitted, _ = fit_thresholds([Template(f) for _, f in active], scorer.loss(rows), encoder.trajectories,
                                   steps=steps, lr=lr, convention=encoder.convention)
        rounded = [(r, printable(f)) for r, f in zip(rows, fitted)]
        values = scorer.score(rounded)
        improved = [v < b for v, b in zip(values, before)]
        active = [new if better else old for new, better, old in zip(rounded, improved, active)]
        if out_of_time():
            break
        moves = [[(r, g) for g in neighbours(f, n_vars=encoder.n_vars, n_points=encoder.n_points)] for r, f in active]
        values = iter(scorer.score([p for ms in moves for p in ms]))
        moved = []
        for (r, f), ms, better in zip(active, moves, improved):
            d, best = scorer.seen[r][f], (r, f)
            for p, v in zip(ms, values):
                if v < d - 1e-7 or (v <= d + size_tolerance and p[1].size < best[1].size and d <= v + 1e-7):
                    d, best = v, p
            if best != (r, f) or better:
                moved.append(best)
            elif queue[r]:  # a local optimum: refine the row's next candidate instead
                moved.append(queue[r].pop())
        active = list(dict.fromkeys(moved))
    return [scorer.choose(i, size_tolerance) for i in range(len(targets))]


_LIBRARIES: dict[tuple[str, int, int], tuple[list[Formula], torch.Tensor]] = {}  # the last two made


def formula_library(encoder: StlKernelEncoder, n: int | None = None, seed: int = 0
                    ) -> tuple[list[Formula], torch.Tensor]:
    """n (default `LIBRARY_SIZE`) generated formulae (half `balanced`, half `random` presets, seeded) and their
    embeddings (n, D), made once per (encoder fingerprint, n, seed) in a process: the candidates of `search` and of
    `decode(strategy="refine", library=k)`."""
    n = n or LIBRARY_SIZE
    key = (encoder.fingerprint, n, seed)
    if key not in _LIBRARIES:
        kw = dict(n_vars=encoder.n_vars, n_points=encoder.n_points)
        formulae = FormulaGenerator("balanced", seed=seed, **kw).sample(n // 2)
        formulae += FormulaGenerator("random", seed=seed + 1, **kw).sample(n - n // 2)
        formulae = list(dict.fromkeys(formulae))
        while len(_LIBRARIES) >= 2:
            _LIBRARIES.pop(next(iter(_LIBRARIES)))
        _LIBRARIES[key] = formulae, encoder.encode(formulae)
    return _LIBRARIES[key]


def nearest_library(targets: torch.Tensor, encoder: StlKernelEncoder, k: int, *, library_size: int | None = None,
                    seed: int = 0) -> list[list[Formula]]:
    """Per target row, the `k` library formulae whose embeddings are nearest to it (by cosine)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    formulae, emb = formula_library(encoder, library_size, seed)
    targets = torch.as_tensor(targets, dtype=torch.float32)
    sim = torch.nn.functional.normalize(targets, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T  # (B, L)
    return [[formulae[j] for j in row] for row in sim.topk(min(k, len(formulae)), dim=1).indices.tolist()]


def search(targets: torch.Tensor, encoder: StlKernelEncoder, *, k: int = 8, library_size: int | None = None,
           seed: int = 0, **settings) -> list[tuple[Formula, float]]:
    """The search-only baseline (no network): the `k` library formulae nearest to each target embedding, refined
    like `refine(..., **settings)`."""
    return refine(nearest_library(targets, encoder, k, library_size=library_size, seed=seed), targets, encoder,
                  **settings)
