"""Evaluation reports: one Markdown file with tables, PNG plots and decoded-vs-gold examples.

`write_report(directory, result, run=..., history=...)` takes the output of `evaluation.compute_metrics` (and
optionally the registry row of the run and the registry rows of the same model's other checkpoints) and writes

    report.md             run settings, overall metrics (next to the published numbers when given), per-depth table,
                          the plots, and a few decoded vs gold formulae spread over the cos_rho range
    cos_rho_by_depth.png  distribution of cos_rho per gold depth (box plot, mean marked)
    size_scatter.png      decoded vs gold formula size (nodes), one point per formula, coloured by depth
    checkpoints.png       validity and cos_rho over training steps (only with >= 2 checkpoints in `history`)

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# research/papers.md §1.9 (c), (d): the best published decoder (random-1024, step 48k), recomputed from its outputs
PUBLISHED = {
    "balanced_test_3000": {"validity": 1.0, "exact_match": 0.0, "cos_rho_mean": 0.860, "cos_rho_q25": 0.913,
                           "cos_rho_median": 0.984, "cos_rho_q75": 0.997, "cos_rho_share_above_0.9": 0.764,
                           "sign_agreement": 0.905, "node_ratio": 0.84, "depth_ratio": 0.88},
    "depth8_ood_500": {"validity": 1.0, "cos_rho_mean": 0.732, "cos_rho_median": 0.910,
                       "cos_rho_share_above_0.9": 0.526, "sign_agreement": 0.831, "node_ratio": 0.25,
                       "depth_ratio": 0.42},
}
OVERALL = ("n", "validity", "exact_match", "skeleton_match", "threshold_error", "interval_error", "cos_rho_mean",
           "cos_rho_q25", "cos_rho_median", "cos_rho_q75", "cos_rho_share_above_0.9", "sign_agreement",
           "embedding_cosine", "embedding_l2", "node_ratio", "depth_ratio", "repeated_digit_rate",
           "gold_repeated_digit_rate", "duplicated_atom_rate", "gold_duplicated_atom_rate")
BY_DEPTH = ("n", "validity", "exact_match", "skeleton_match", "cos_rho_mean", "cos_rho_median",
            "cos_rho_share_above_0.9", "sign_agreement", "node_ratio", "depth_ratio", "duplicated_atom_rate",
            "repeated_digit_rate")


def published_reference(test_path: str | None) -> dict | None:
    """The published numbers for a test file named like one of the shared protocol sets, else None."""
    name = Path(test_path or "").stem
    return next((v for k, v in PUBLISHED.items() if k in name), None)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or isinstance(v, int | np.integer):
        return str(int(v))
    return f"{v:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r if isinstance(r, str) else _fmt(r) for r in row) + " |" for row in rows]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cos_rho_by_depth(rows: Sequence[Mapping], path: Path) -> None:
    plt = _plt()
    depths = sorted({r["depth"] for r in rows})
    data = [[r["cos_rho"] for r in rows if r["depth"] == d] for d in depths]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    box = ax.boxplot(data, tick_labels=[f"{d}\n(n={len(x)})" for d, x in zip(depths, data)], showfliers=False,
                     widths=0.6)
    box["medians"][0].set_label("median (box: q25-q75)")
    ax.plot(range(1, len(depths) + 1), [np.mean(x) for x in data], "D", color="tab:red", label="mean")
    ax.axhline(0.9, color="grey", ls=":", lw=1, label="0.9")
    ax.set(xlabel="gold depth", ylabel="cos ρ (gold, decoded)", ylim=(-1.05, 1.05),
           title="Semantic fidelity by gold depth (invalid = 0)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_size_scatter(rows: Sequence[Mapping], path: Path, seed: int = 0) -> None:
    plt = _plt()
    valid = [r for r in rows if r["valid"]]
    rng = np.random.default_rng(seed)
    g = np.array([r["gold_nodes"] for r in valid], float) + rng.uniform(-0.25, 0.25, len(valid))
    d = np.array([r["decoded_nodes"] for r in valid], float) + rng.uniform(-0.25, 0.25, len(valid))
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    sc = ax.scatter(g, d, c=[r["depth"] for r in valid], s=8, alpha=0.5, cmap="viridis")
    hi = max([*g, *d, 1]) + 1
    ax.plot([0, hi], [0, hi], color="grey", ls="--", lw=1, label="decoded = gold")
    ax.set(xlabel="gold size (nodes)", ylabel="decoded size (nodes)", xlim=(0, hi), ylim=(0, hi),
           title="Formula size: decoded vs gold (valid outputs)")
    fig.colorbar(sc, ax=ax, label="gold depth")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_checkpoints(history: Sequence[Mapping], path: Path) -> None:
    plt = _plt()
    runs = sorted((r for r in history if r["step"] is not None), key=lambda r: r["step"])
    steps = [r["step"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, label, style in (("validity", "validity", "o-"), ("cos_rho_mean", "mean cos ρ", "s-"),
                              ("cos_rho_median", "median cos ρ", "^--")):
        ax.plot(steps, [r["metrics"]["overall"].get(key) for r in runs], style, label=label)
    ax.set(xlabel="training step", ylabel="score", ylim=(min(0, ax.get_ylim()[0]), 1.02),
           title="Validity and semantic fidelity over checkpoints")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pick_examples(rows: Sequence[Mapping], n: int) -> list[Mapping]:
    """`n` rows evenly spread over the cos_rho ranking, best first."""
    ranked = sorted(rows, key=lambda r: -r["cos_rho"])
    idx = np.unique(np.linspace(0, len(ranked) - 1, min(n, len(ranked))).round().astype(int))
    return [ranked[i] for i in idx]


def write_report(directory: str | Path, result: Mapping, *, run: Mapping | None = None,
                 history: Sequence[Mapping] = (), reference: Mapping | None = None, n_examples: int = 8) -> Path:
    """Write report.md and its PNG plots into `directory`; returns the path of report.md (see module docstring)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows, overall = result["rows"], result["overall"]
    md = ["# Decoding evaluation", ""]
    if run:
        info = [("model", f"`{run['model']}`"), ("checkpoint step", _fmt(run["step"])),
                ("strategy", run["strategy"]), ("settings", f"`{json.dumps(run['settings'], sort_keys=True)}`"),
                ("test set", f"`{run['test_path']}` ({run['n']} formulae, sha256 {run['test_hash'][:12]})")]
        info += [(k, f"`{v}`" if isinstance(v, str) else _fmt(v)) for k, v in sorted(run.get("info", {}).items())]
        md += [_table(("run", ""), info), ""]
    md += ["## Overall", ""]
    header = ("metric", "value", "published") if reference else ("metric", "value")
    md += [_table(header, [(k, overall.get(k), *((reference.get(k),) if reference else ())) for k in OVERALL]), ""]
    if reference:
        md += ["Published: the best decoder of the reference paper (random-1024, step 48k), recomputed from its "
               "outputs (research/papers.md §1.9). Chance level on balanced_test_3000 (each gold formula against "
               "another gold formula, these metrics): mean cos_rho 0.016, median 0.017, share > 0.9 0.025, sign "
               "agreement 0.509 (published: 0.015, 0.017, 0.022, 0.507).", ""]
    md += ["cos_rho and sign agreement count invalid or unevaluable outputs as 0; ratios, embedding distances and "
           "artefact rates are over valid outputs; threshold/interval errors over skeleton matches.", ""]
    depth_rows = [(str(d), *(s.get(k) for k in BY_DEPTH)) for d, s in result["by_depth"].items()]
    md += ["## By gold depth", "", _table(("depth", *BY_DEPTH), depth_rows), ""]
    plot_cos_rho_by_depth(rows, out / "cos_rho_by_depth.png")
    plot_size_scatter(rows, out / "size_scatter.png")
    md += ["## Plots", "", "![cos rho by depth](cos_rho_by_depth.png)", "", "![size](size_scatter.png)", ""]
    history = list({(r["step"], r["model_sha256"]): r for r in history}.values())  # a final model = its last ckpt
    if len({r["step"] for r in history if r["step"] is not None}) >= 2:
        plot_checkpoints(history, out / "checkpoints.png")
        md += ["![checkpoints](checkpoints.png)", "",
               _table(("step", "validity", "cos_rho_mean", "cos_rho_median", "sign_agreement"),
                      [(_fmt(r["step"]), *(r["metrics"]["overall"].get(k) for k in
                                           ("validity", "cos_rho_mean", "cos_rho_median", "sign_agreement")))
                       for r in sorted(history, key=lambda r: (r["step"] is None, r["step"] or 0))]), ""]
    md += ["## Examples (spread over the cos_rho ranking)", "",
           _table(("depth", "cos_rho", "gold", "decoded"),
                  [(str(r["depth"]), r["cos_rho"], f"`{r['gold']}`", f"`{r['decoded']}`" if r["decoded"] else "")
                   for r in pick_examples(rows, n_examples)]), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
