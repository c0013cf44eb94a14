"""Mixture experiments: the same model trained on several training mixtures, compared on the same held-out files.

A mixtures file (YAML/JSON):

    base: examples/configs/tiny.yaml          # an experiment file: model, data, training
    mixtures: {easy: {preset: easy}, hard: {preset: hard}}   # name -> overrides of the base `data` section
    validation: null                          # file shared by every run; null: generated once (balanced preset)
    test: [../shared/data/balanced_test_3000.csv]   # file(s) every model is scored on; null: generated once
    n_test: 300                               # size of the generated test set
    training: {max_steps: 200}                # overrides of the base `training` section for every run

`run_mixtures` trains one run per mixture in `<output_dir>/<name>` (each resumable), decodes every test file with
every model (greedy), scores them with `stldec.evaluation.compute_metrics`, and writes `comparison.csv` /
`comparison.md` (one row per mixture x test file) and `by_depth.csv` + `metric_vs_depth.png` (cos_rho and
validity by gold depth).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .. import data as D
from .experiment import Experiment
from .run import VALIDATION_SEED_OFFSET, make_encoder, train
from .trainer import generate_texts

KEYS = ("base", "mixtures", "validation", "test", "n_test", "training")
COLUMNS = ("validity", "cos_rho_mean", "cos_rho_median", "cos_rho_share_above_0.9", "sign_agreement",
           "skeleton_match", "exact_match")
TEST_SEED = 2 * VALIDATION_SEED_OFFSET


def _shared_file(path: str | None, out: Path, name: str, n: int, encoder, seed: int) -> str:
    """`path`, or a balanced set of n formulae generated (once) into `out/name.parquet`."""
    if path is not None:
        return path
    target = out / f"{name}.parquet"
    if not target.exists():
        D.save_formulae(D.generate_dataset(n, encoder, preset="balanced", seed=seed), target)
    return str(target)


def evaluate_model(model_dir: str | Path, test_file: str, encoder) -> dict:
    """Greedy-decode every row of `test_file` with the model in `model_dir` (at most twice the longest gold
    formula's tokens; the model must have been trained with `encoder`); `compute_metrics` of the result."""
    import torch

    from ..decoding import check_encoder, load_model
    from ..evaluation import compute_metrics
    from ..tokenization import StlTokenizer

    model = load_model(model_dir)
    check_encoder(model, encoder)
    tokenizer = StlTokenizer.from_pretrained(model_dir)
    rows = D.load_formulae(test_file, encoder)[:]  # {column: list}
    longest = max(len(ids) for ids in tokenizer(rows["formula"])["input_ids"])
    texts = generate_texts(model, tokenizer, torch.tensor(rows["embedding"], dtype=torch.float32),
                           max_new_tokens=min(2 * longest, model.config.max_position_embeddings - 1))
    return compute_metrics(rows["formula"], texts, depths=rows["depth"], n_vars=encoder.n_vars,
                           n_points=encoder.n_points)


def run_mixtures(config: str | Path, output_dir: str | Path, *, validation: str | None = None,
                 test: list[str] | None = None, max_steps: int | None = None) -> list[dict]:
    """Train and compare the mixtures of `config` (see the module docstring); returns the comparison rows."""
    import pandas as pd

    spec = yaml.safe_load(Path(config).read_text())
    unknown = set(spec) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} in {config}; valid: {KEYS}")
    if len(spec.get("mixtures") or {}) < 2:
        raise ValueError(f"{config}: `mixtures` needs at least two entries to compare")
    training = dict(spec.get("training") or {}, **({"max_steps": max_steps} if max_steps else {}))
    base = Experiment.load(spec["base"]).override(training)
    runs = {name: base.override({f"data.{k}": v for k, v in (overrides or {}).items()})
            for name, overrides in spec["mixtures"].items()}  # every field checked before anything runs
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = make_encoder(base.data.encoder)
    validation = validation or spec.get("validation")
    if validation is not None or base.data.n_validation > 0:
        validation = _shared_file(validation, out, "validation", base.data.n_validation, encoder,
                                  base.data.seed + VALIDATION_SEED_OFFSET)
    tests = test or spec.get("test") or [None]
    tests = [tests] if isinstance(tests, str) else tests
    tests = [_shared_file(t, out, "test", spec.get("n_test", 300), encoder, TEST_SEED) for t in tests]

    rows, depth_rows = [], []
    for name, experiment in runs.items():
        experiment = dataclasses.replace(experiment, data=dataclasses.replace(experiment.data, validation=validation))
        print(f"=== mixture {name}: {experiment.data}", flush=True)
        train(experiment, out / name)
        for t in tests:
            result = evaluate_model(out / name, t, encoder)
            rows.append({"mixture": name, "test": Path(t).name, "n": result["overall"]["n"],
                         **{k: result["overall"][k] for k in COLUMNS}})
            depth_rows += [{"mixture": name, "test": Path(t).name, "depth": d, "n": m["n"],
                            **{k: m[k] for k in COLUMNS}} for d, m in result["by_depth"].items()]
    table, by_depth = pd.DataFrame(rows), pd.DataFrame(depth_rows)
    table.to_csv(out / "comparison.csv", index=False)
    by_depth.to_csv(out / "by_depth.csv", index=False)
    (out / "comparison.md").write_text(_markdown(table))
    _plot(by_depth, out / "metric_vs_depth.png")
    print(_markdown(table))
    return rows


def _markdown(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plot(by_depth, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("cos_rho_mean", "validity")):
        for (mixture, test), g in by_depth.groupby(["mixture", "test"]):
            ax.plot(g["depth"], g[metric], marker="o", label=f"{mixture} / {test}")
        ax.set_ylim(min(0.0, by_depth[metric].min()) - 0.02, 1.02)
        ax.set_xlabel("gold depth")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
