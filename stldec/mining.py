"""Requirement mining: learn an STL formula whose robustness separates positive from negative trajectories.

    data = load_dataset("../shared/data/mining/maritime")     # (N, V, T) trajectories, ±1 labels
    result = cross_validate(data, folds=5, seeds=[0, 1, 2])    # per seed a stratified k-fold split, per fold a miner
    result["mean_test_accuracy"], result["best_formula"]

Protocol (the published one, research §10, without its in-place mutation bug): per seed a stratified k-fold split;
per fold the variables are z-normalised with the training fold's mean and sd (each variable over all its samples), a
formula is mined on the training fold, a robustness threshold τ is chosen on the training fold (`ρ > τ` ⇒ +1, the
τ of best training accuracy), and accuracy, precision, recall and misclassification rate are measured on the test fold.

Objective: the separation (mean ρ⁺ − mean ρ⁻)/(sd ρ⁺ + sd ρ⁻) of tanh-squashed robustness (as published) at t = 0 on
the training fold, with the sign free: a formula whose separation is negative is used negated. Its thresholds are
fitted by `stl.params.fit_thresholds` (the one threshold optimiser: Adam through the exact robustness subgradient),
minimising −|separation|. Formulae are values: every step builds new ones.

Time: candidates are drawn (generator, decoder) on the kernel's base grid of `BASE_POINTS` = 100 samples (with a
decoder: its encoder's `n_points`); a dataset of T samples per trajectory gets them rescaled, sample offset
t -> floor(t (T - 1) / 99) at every window end-point. Since a horizon is a max over paths of sums of end-points, the
rescaled horizon is <= T - 1: every rescaled formula fits the data. All search after that (threshold fits, edits)
runs on the dataset's own grid, where windows count samples (`times.csv`, when present, only labels the plot's
time axis: `always[3,5]` on maritime, sampled every 5 s, spans 10-20 s after t).

Search (`mine`): `candidates` formulae from several generator settings (`CANDIDATE_GENERATORS`, the dataset's
variables) are scored in one batched robustness call; with a decoder, an evolutionary search in its embedding space
(`EmbeddingSearch`) adds the decoded formulae. The `top` best distinct skeletons are refined for up to `rounds`
rounds: a threshold fit, then the best one-edit neighbour (`stl.params.neighbours`: windows, operators,
comparisons, variables, simplifications) when it separates better; thresholds are rounded to the printed 4
decimals, so the printed formula is the one scored. The answer is the smallest formula scored on the way whose
separation is within `size_tolerance` (5 %) of the best one: on these datasets that halves the formulae's size at
no cost in accuracy.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .stl import FormulaGenerator, parse, robustness
from .stl.formula import Atom, Formula, Not
from .stl.params import Template, fit_thresholds, neighbours, printable

BASE_POINTS = 100  # the grid candidates are drawn on (the kernel's and the decoder's)
SD_FLOOR = 1e-6  # added to the separation's denominator: a formula constant on both classes separates 0
# candidate generators: (preset, overrides); small depths, since a training fold holds tens to a few thousand traces
CANDIDATE_GENERATORS = (("easy", {"depth_shares": {2: 3, 3: 2}}), ("random", {"max_depth": 4}))


# ---------------------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class MiningData:
    """A labelled trajectory set: x (N, V, T) float32 in the file's units, labels (N,) int64 ±1."""

    name: str
    x: torch.Tensor
    labels: torch.Tensor
    variables: list[str]
    times: list[float] | None = None


def _numbers(path: Path, line: str, lineno: int) -> list[float]:
    values = []
    for col, cell in enumerate(line.split(","), 1):
        try:
            v = float(cell)
        except ValueError:
            raise ValueError(f"{path}: line {lineno}, column {col}: {cell.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{path}: line {lineno}, column {col}: {cell.strip()!r} is not a finite number")
        values.append(v)
    return values


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def load_dataset(directory: str | Path) -> MiningData:
    """Read `data.csv` (a header of variable names, then one trajectory per line, variables interleaved: value j is
    variable j mod V at sample j // V), `labels.csv` (one line of ±1) and optional `times.csv` (one line, T values).
    Malformed files raise a one-line error naming the file, line and column."""
    d = Path(directory)
    data_path, labels_path, times_path = d / "data.csv", d / "labels.csv", d / "times.csv"
    lines = _lines(data_path)
    if len(lines) < 2:
        raise ValueError(f"{data_path}: needs a header line and at least one trajectory, found {len(lines)} lines")
    variables = [v.strip() for v in lines[0].lstrip("#").split(",")]
    V = len(variables)
    rows = [_numbers(data_path, line, i) for i, line in enumerate(lines[1:], 2)]
    width = len(rows[0])
    for i, r in enumerate(rows, 2):
        if len(r) != width:
            raise ValueError(f"{data_path}: line {i} has {len(r)} values, line 2 has {width} (ragged lines)")
    if width % V:
        raise ValueError(f"{data_path}: line 2 has {width} values, not a multiple of the {V} variables of the header "
                         f"({', '.join(variables)})")
    x = torch.tensor(rows, dtype=torch.float32).view(len(rows), width // V, V).transpose(1, 2).contiguous()
    label_lines = _lines(labels_path)
    if len(label_lines) != 1:
        raise ValueError(f"{labels_path}: expected one line of ±1 labels, found {len(label_lines)} lines")
    labels = _numbers(labels_path, label_lines[0], 1)
    for col, v in enumerate(labels, 1):
        if v not in (1.0, -1.0):
            raise ValueError(f"{labels_path}: line 1, column {col}: label {v:g} is not +1 or -1")
    if len(labels) != len(rows):
        raise ValueError(f"{labels_path}: line 1 has {len(labels)} labels but {data_path} has {len(rows)} "
                         f"trajectories (lines 2-{len(rows) + 1})")
    times = None
    if times_path.exists():
        time_lines = _lines(times_path)
        if len(time_lines) != 1:
            raise ValueError(f"{times_path}: expected one line of time stamps, found {len(time_lines)} lines")
        times = _numbers(times_path, time_lines[0], 1)
        if len(times) != x.shape[2]:
            raise ValueError(f"{times_path}: line 1 has {len(times)} time stamps but the trajectories of {data_path} "
                             f"have {x.shape[2]} samples")
    return MiningData(d.name, x, torch.tensor(labels, dtype=torch.int64), variables, times)


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k (train, test) index splits; each class is shuffled (seeded) and dealt into k near-equal test parts."""
    parts: list[list[int]] = [[] for _ in range(k)]
    rng = np.random.default_rng(seed)
    for cls in (1, -1):
        idx = (labels == cls).nonzero().flatten().numpy()
        if len(idx) < k:
            raise ValueError(f"only {len(idx)} trajectories labelled {cls:+d}: fewer than the {k} folds")
        for i, chunk in enumerate(np.array_split(rng.permutation(idx), k)):
            parts[i] += chunk.tolist()
    all_idx = torch.arange(len(labels))
    out = []
    for p in parts:
        test = torch.tensor(sorted(p))
        out.append((all_idx[~torch.isin(all_idx, test)], test))
    return out


def normaliser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-variable mean and sd (1, V, 1) over all trajectories and samples of x (N, V, T); a constant variable
    gets sd 1 (it is only centred)."""
    mean, sd = x.mean(dim=(0, 2), keepdim=True), x.std(dim=(0, 2), keepdim=True)
    return mean, torch.where(sd > 0, sd, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# formulae on the dataset's grid


def rescale(formula: Formula, n_points: int, base_points: int = BASE_POINTS) -> Formula:
    """The formula with every window end-point t mapped to floor(t (n_points - 1) / (base_points - 1)): a formula
    of horizon < base_points gets horizon < n_points (see the module docstring)."""
    def at(t):
        return None if t is None else t * (n_points - 1) // (base_points - 1)

    t = Template(formula)
    return t.build(windows=[None if w is None else (at(w[0]), at(w[1])) for w in t.windows])


def relabel(formula: Formula, mapping: Sequence[int]) -> Formula:
    """The formula with variable x_i renamed x_{mapping[i]}."""
    if isinstance(formula, Atom):
        return replace(formula, var=mapping[formula.var])
    return replace(formula, **{n: relabel(getattr(formula, n), mapping) for n in ("child", "left", "right")
                               if hasattr(formula, n)})


def separation(rho: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(mean ρ⁺ − mean ρ⁻)/(sd ρ⁺ + sd ρ⁻) per row of tanh(rho) (B, N) given labels (N,) ±1: (B,), differentiable."""
    r = torch.tanh(rho)
    pos, neg = r[:, labels > 0], r[:, labels < 0]
    spread = pos.std(dim=1, unbiased=False) + neg.std(dim=1, unbiased=False)
    return (pos.mean(dim=1) - neg.mean(dim=1)) / (spread + SD_FLOOR)


def fit_threshold(rho: torch.Tensor, labels: torch.Tensor) -> float:
    """The τ maximising the accuracy of `ρ > τ ⇒ +1` on (rho (N,), labels (N,)): a midpoint between consecutive
    distinct values (the middle one of the best cuts)."""
    v, order = rho.double().sort()
    y = labels[order]
    zero = torch.zeros(1, dtype=torch.long)
    neg_below = torch.cat([zero, (y < 0).long().cumsum(0)])  # cut i: the i lowest are predicted -1
    pos_above = (y > 0).sum() - torch.cat([zero, (y > 0).long().cumsum(0)])
    correct = neg_below + pos_above  # (N + 1,)
    valid = torch.ones_like(correct, dtype=torch.bool)
    valid[1:-1] = v[1:] > v[:-1]
    best = torch.where(valid, correct, -1)
    cuts = (best == best.max()).nonzero().flatten()
    i = int(cuts[len(cuts) // 2])
    if i == 0:
        return float(v[0]) - 1.0
    return float(v[-1]) if i == len(v) else float((v[i - 1] + v[i]) / 2)


def classification_scores(predicted: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, precision, recall (of the +1 class; 0 when undefined) and misclassification rate."""
    tp = int(((predicted > 0) & (labels > 0)).sum())
    pp, ap, acc = int((predicted > 0).sum()), int((labels > 0).sum()), float((predicted == labels).float().mean())
    return {"accuracy": acc, "precision": tp / pp if pp else 0.0, "recall": tp / ap if ap else 0.0,
            "misclassification_rate": 1.0 - acc}


# ---------------------------------------------------------------------------------------------------------------
# search


class _Pool:
    """Signed separation on the training fold of every formula scored, remembered; one robustness call per batch."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor):
        self.x, self.labels, self.seen = x, labels, {}

    def score(self, formulae: Sequence[Formula]) -> list[float]:
        todo = [f for f in dict.fromkeys(formulae) if f not in self.seen]
        if todo:
            sep = separation(robustness(todo, self.x), self.labels)
            self.seen.update(zip(todo, sep.tolist()))
        return [self.seen[f] for f in formulae]

    def rank(self, f: Formula) -> tuple:
        return -abs(self.seen[f]), f.size, str(f)

    def best(self, n: int, distinct: bool = False) -> list[Formula]:
        """The n best formulae seen (with `distinct`, at most one per skeleton)."""
        out, keys = [], set()
        for f in sorted(self.seen, key=self.rank):
            key = Template(f).key if distinct else f
            if key not in keys:
                keys.add(key)
                out.append(f)
                if len(out) == n:
                    break
        return out


def base_candidates(n: int, n_vars: int, seed: int, n_points: int = BASE_POINTS) -> list[Formula]:
    """n generated formulae on a grid of n_points (`CANDIDATE_GENERATORS` in equal shares, seeded), distinct."""
    per = -(-n // len(CANDIDATE_GENERATORS))
    out = []
    for i, (preset, overrides) in enumerate(CANDIDATE_GENERATORS):
        gen = FormulaGenerator(preset, seed=seed * 1000 + i, n_vars=n_vars, n_points=n_points, **overrides)
        out += gen.sample(per)
    return list(dict.fromkeys(out))[:n]


@dataclass(frozen=True)
class Mined:
    """A mined formula (separation >= 0 on its training fold: negated when needed) and where the search found it:
    `scored` distinct formulae, of which `decoded` came from the decoder; the best separation (absolute) among
    the generated and the decoded candidates before refinement (None without a decoder)."""

    formula: Formula
    separation: float
    scored: int
    decoded: int
    best_generated: float
    best_decoded: float | None


def mine(x: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, candidates: int = 3000, top: int = 8,
         rounds: int = 5, steps: int = 30, lr: float = 0.05, size_tolerance: float = 0.05,
         search: EmbeddingSearch | None = None) -> Mined:
    """Mine a formula on trajectories x (N, V, T) with labels (N,) ±1 (see the module docstring): `candidates`
    generated formulae, plus the decoder's with `search`; the `top` best skeletons refined for up to `rounds`
    rounds of a threshold fit (`steps` Adam steps of size `lr`) and one-edit moves; the answer is the smallest
    formula whose separation is within `size_tolerance` (relative) of the best one."""
    if x.dim() != 3 or labels.shape != (len(x),) or not ((labels > 0).any() and (labels < 0).any()):
        raise ValueError(f"need trajectories (N, V, T) and N labels of both signs, got shapes {tuple(x.shape)} and "
                         f"{tuple(labels.shape)} with labels {sorted(set(labels.tolist()))}")
    if candidates < 1 or top < 1 or rounds < 0 or not 0 <= size_tolerance < 1:
        raise ValueError(f"need candidates >= 1, top >= 1, rounds >= 0 and 0 <= size_tolerance < 1; got {candidates}, "
                         f"{top}, {rounds}, {size_tolerance}")
    V, T = x.shape[1], x.shape[2]
    base_points = BASE_POINTS if search is None else search.encoder.n_points
    pool = _Pool(x, labels)
    base = base_candidates(candidates, V, seed, base_points)
    best_generated = max(map(abs, pool.score([rescale(f, T, base_points) for f in base])))
    decoded = [] if search is None else search.propose(pool, base, seed=seed)
    loss = lambda rho: -separation(rho, labels).abs()  # noqa: E731
    active = pool.best(top, distinct=True)
    for _ in range(rounds):
        fitted, _ = fit_thresholds([Template(f) for f in active], loss, x, steps=steps, lr=lr)
        fitted = [printable(f) for f in fitted]
        pool.score(fitted)
        moves = [neighbours(f, n_vars=V, n_points=T) for f in fitted]
        pool.score([g for m in moves for g in m])
        moved = [min([f, old, *m], key=pool.rank) for f, old, m in zip(fitted, active, moves)]
        if moved == active:
            break
        active = list(dict.fromkeys(moved))
    top_sep = abs(pool.seen[pool.best(1)[0]])
    best = min((f for f, s in pool.seen.items() if abs(s) >= (1 - size_tolerance) * top_sep),
               key=lambda f: (f.size, pool.rank(f)))
    sep = pool.seen[best]
    return Mined(best if sep >= 0 else Not(best), abs(sep), len(pool.seen), len(decoded), best_generated,
                 None if search is None else max(map(abs, pool.score(decoded)), default=0.0))


class EmbeddingSearch:
    """Evolutionary search in a decoder's embedding space. The kernel embeddings of the `elites` best candidates
    seen so far are the parents; each of `generations` generations makes `population` children, each a random
    convex combination of two parents plus Gaussian noise (`spread` times the parents' per-dimension sd), decodes
    them in one batch (grammar-constrained sampling at temperature 1: greedy and beam decoding of a weak decoder
    collapse to a few atomic formulae), scores the decoded formulae on the training fold (one robustness call) and
    re-embeds them, so the next parents are real formulae. Decoded formulae whose horizon does not fit the
    encoder's grid are dropped. Seeded: reproducible.

    The decoder writes variables x_0..x_{m-1}, m = the encoder's n_vars: a dataset with more variables maps x_i
    to its variable of rank i by the best single-variable generated candidate (the others are reached by the
    refinement's variable edits)."""

    def __init__(self, model, tokenizer, encoder, *, population: int = 32, generations: int = 4, elites: int = 8,
                 spread: float = 0.25):
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.population, self.generations, self.elites, self.spread = population, generations, elites, spread

    def _variables(self, pool: _Pool, n_vars: int) -> list[int]:
        best = dict.fromkeys(range(n_vars), 0.0)
        for f, s in pool.seen.items():
            if len(f.variables) == 1:
                v = next(iter(f.variables))
                best[v] = max(best[v], abs(s))
        return sorted(range(n_vars), key=lambda v: -best[v])[: self.encoder.n_vars]

    def propose(self, pool: _Pool, base: Sequence[Formula], *, seed: int) -> list[Formula]:
        """Search from the generated candidates `base` (on the encoder's grid); the decoded formulae (on the
        dataset's grid, all scored in `pool`)."""
        from .decoding import decode

        V, T, P = pool.x.shape[1], pool.x.shape[2], self.encoder.n_points
        mapping = self._variables(pool, V)
        inverse = [mapping.index(v) if v in mapping else -1 for v in range(V)]
        parents = {relabel(f, inverse): abs(pool.score([rescale(f, T, P)])[0]) for f in base
                   if f.variables <= set(mapping)}
        g = torch.Generator().manual_seed(seed)
        settings = dict(strategy="sample", constrained=True, n_vars=len(mapping), max_horizon=P - 1,
                        batch_size=self.population, progress=False)
        out = []
        for generation in range(self.generations):
            elite = sorted(parents, key=lambda f: (-parents[f], f.size, str(f)))[: self.elites]
            if not elite:
                break
            z = self.encoder.encode(elite)  # (E, D)
            a, b = torch.randint(len(z), (2, self.population), generator=g)
            w = torch.rand(self.population, 1, generator=g)
            noise = torch.randn(self.population, z.shape[1], generator=g) * z.std(0, unbiased=False) * self.spread
            children = w * z[a] + (1 - w) * z[b] + noise  # (population, D)
            decoded = [f for f in map(_parse, decode(self.model, self.tokenizer, children,
                                                                 seed=seed * 1000 + generation, **settings))
                       if f is not None and f not in parents and f.time_horizon < P]
            on_data = [rescale(relabel(f, mapping), T, P) for f in decoded]
            parents.update(zip(decoded, map(abs, pool.score(on_data))))
            out += on_data
        return list(dict.fromkeys(out))


def _parse(text: str) -> Formula | None:
    try:
        return parse(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# cross-validation, results, plot


def cross_validate(data: MiningData, *, folds: int = 5, seeds: Sequence[int] = (0, 1, 2),
                   search: EmbeddingSearch | None = None, **settings) -> dict:
    """Mine a classifier on every training fold of every seed's split and score it on the test fold: the results
    dict (`per_fold` rows, `mean_test_accuracy`, `best_formula` = the one of the best test fold)."""
    if folds < 2:
        raise ValueError(f"--folds must be >= 2, got {folds}")
    start, rows = time.monotonic(), []
    for seed in seeds:
        for k, (train, test) in enumerate(stratified_folds(data.labels, folds, seed)):
            t0 = time.monotonic()
            mean, sd = normaliser(data.x[train])
            x_train, x_test = (data.x[train] - mean) / sd, (data.x[test] - mean) / sd
            m = mine(x_train, data.labels[train], seed=seed * 100 + k, search=search, **settings)
            rho_train, rho_test = robustness(m.formula, x_train)[0], robustness(m.formula, x_test)[0]
            tau = fit_threshold(rho_train, data.labels[train])
            train_acc = float((torch.where(rho_train > tau, 1, -1) == data.labels[train]).float().mean())
            scores = classification_scores(torch.where(rho_test > tau, 1, -1), data.labels[test])
            rows.append({"seed": seed, "fold": k, "formula": str(m.formula), "train_separation": m.separation,
                         "threshold": tau, "train_accuracy": train_acc, **scores, "n_train": len(train),
                         "n_test": len(test), "scored": m.scored, "decoded": m.decoded,
                         "best_generated_separation": m.best_generated, "best_decoded_separation": m.best_decoded,
                         "normalisation": {"mean": mean.flatten().tolist(), "sd": sd.flatten().tolist()},
                         "wall_s": time.monotonic() - t0})
    best = max(rows, key=lambda r: (r["accuracy"], r["train_separation"]))
    return {"dataset": data.name, "folds": folds, "seeds": list(seeds), "search": "decoder" if search else "baseline",
            "mean_test_accuracy": float(np.mean([r["accuracy"] for r in rows])),
            **{f"mean_{m}": float(np.mean([r[m] for r in rows])) for m in ("precision", "recall",
                                                                           "misclassification_rate")},
            "best_formula": best["formula"], "best_fold": {"seed": best["seed"], "fold": best["fold"]},
            "per_fold": rows, "wall_s": time.monotonic() - start}


def plot_result(data: MiningData, result: dict, path: str | Path, n_each: int = 4) -> None:
    """PNG: a few positive and negative trajectories (the best formula's variables, normalised as in its fold) with
    their robustness in the legend, and the robustness histogram of both classes with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = next(r for r in result["per_fold"] if (r["seed"], r["fold"]) == (result["best_fold"]["seed"],
                                                                             result["best_fold"]["fold"]))
    formula = parse(row["formula"])
    norm = row["normalisation"]
    x = (data.x - torch.tensor(norm["mean"]).view(1, -1, 1)) / torch.tensor(norm["sd"]).view(1, -1, 1)
    rho = robustness(formula, x)[0]
    t = data.times if data.times is not None else list(range(x.shape[2]))
    bins = np.linspace(float(rho.min()), float(rho.max()), 41)
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for cls, colour in ((1, "tab:blue"), (-1, "tab:red")):
        idx = (data.labels == cls).nonzero().flatten()[:n_each]
        for i in idx.tolist():
            for v in sorted(formula.variables):
                ax.plot(t, x[i, v].numpy(), color=colour, alpha=0.8, ls=("-", "--", ":", "-.")[v % 4],
                        label=f"{cls:+d}: ρ = {rho[i]:.2f}" if v == min(formula.variables) else None)
        hx.hist(rho[data.labels == cls].numpy(), bins=bins, alpha=0.6, color=colour, label=f"label {cls:+d}")
    hx.axvline(row["threshold"], color="k", ls="--", label=f"τ = {row['threshold']:.3f}")
    names = ", ".join(f"x_{v} = {data.variables[v]}" for v in sorted(formula.variables))
    ax.set(title=f"{data.name}: trajectories ({names}, normalised)", xlabel="time")
    ax.legend(fontsize=7, ncol=2)
    hx.set(title="robustness at t = 0, all trajectories", xlabel="ρ")
    hx.legend(fontsize=8)
    fig.suptitle(f"{row['formula']}  (test accuracy {row['accuracy']:.3f}, seed {row['seed']} fold {row['fold']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_mining(data_dir: str | Path, out: str | Path, *, folds: int = 5, seeds: Sequence[int] = (0, 1, 2),
               model_dir: str | Path | None = None, **settings) -> dict:
    """Load a dataset, cross-validate (with the decoder of `model_dir` when given), write `out/results.json` and
    `out/mining.png`; returns the results."""
    data = load_dataset(data_dir)
    search = None
    if model_dir is not None:
        from .decoding import load_model, load_model_encoder
        from .tokenization import StlTokenizer

        model = load_model(model_dir)
        encoder = load_model_encoder(model_dir)
        if encoder is None:
            raise FileNotFoundError(f"{model_dir} has no encoder/ folder: the embedding search needs the kernel "
                                    "encoder the decoder was trained with")
        tok = StlTokenizer.from_pretrained(model_dir) if Path(model_dir, "vocab.json").is_file() else StlTokenizer()
        search = EmbeddingSearch(model, tok, encoder)
    result = cross_validate(data, folds=folds, seeds=seeds, search=search, **settings)
    result["model"] = None if model_dir is None else str(model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_result(data, result, out / "mining.png")
    return result


__all__ = ["BASE_POINTS", "EmbeddingSearch", "MiningData", "classification_scores", "cross_validate",
           "fit_threshold", "load_dataset", "mine", "normaliser", "plot_result", "relabel", "rescale", "run_mining",
           "separation", "stratified_folds"]
