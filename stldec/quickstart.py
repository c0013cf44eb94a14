"""`stldec quickstart` (and `make run`): the whole tool chain in a few minutes on a laptop CPU, offline.

1. a small kernel encoder (anchors drawn from the generator, a few hundred trajectories);
2. generated, embedded training data and a small conditional decoder trained on it (`stldec.trainers.train`);
3. held-out generated formulae embedded and decoded greedily, with grammar constraints, with re-ranking and with
   decode-time search (`strategy="refine"`: the re-ranking candidates plus the nearest generated formulae, refined
   against the target embedding on the encoder's trajectories, seed 1 — the metrics use seed 0);
4. the metrics (`stldec.evaluation.compute_metrics`) printed as a table and written to `metrics.json`, with the
   decoded vs gold formulae in `decoded.csv`.

Everything lands in `output_dir`: `model/` (a `from_pretrained` folder with its `encoder/`), `metrics.json`,
`decoded.csv`. Rerunning continues an interrupted training run and recomputes the rest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SETTINGS = {  # (normal, tiny)
    "anchors": (64, 16), "n_trajectories": (500, 200), "n_points": (50, 30), "n_train": (6000, 400),
    "n_test": (200, 12), "max_steps": (1000, 30), "hidden_size": (128, 64), "num_hidden_layers": (3, 2),
    "max_position_embeddings": (160, 80),
}
SHOWN = ("validity", "cos_rho_mean", "cos_rho_median", "cos_rho_share_above_0.9", "sign_agreement",
         "skeleton_match", "embedding_cosine", "node_ratio", "depth_ratio")


def experiment_dict(tiny: bool = False, max_steps: int | None = None) -> dict:
    """The quickstart's training experiment (the same structure as examples/configs/*.yaml)."""
    s = {k: v[tiny] for k, v in SETTINGS.items()}
    steps = max_steps or s["max_steps"]
    return {
        "model": {"head": "decoder", "preset": "tiny", "hidden_size": s["hidden_size"],
                  "intermediate_size": 4 * s["hidden_size"], "num_hidden_layers": s["num_hidden_layers"],
                  "max_position_embeddings": s["max_position_embeddings"]},
        "data": {"preset": "easy", "n_train": s["n_train"], "n_validation": 64, "n_generate": 0, "seed": 0,
                 "encoder": {"anchors": s["anchors"], "n_trajectories": s["n_trajectories"],
                             "n_points": s["n_points"], "seed": 1}},  # the metrics sample seed 0
        "training": {"max_steps": steps, "per_device_train_batch_size": 32, "learning_rate": 3e-3,
                     "warmup_steps": 0.05, "logging_steps": max(steps // 10, 1), "eval_steps": steps,
                     "save_steps": max(steps // 2, 1), "save_total_limit": 1, "report_to": [],
                     "disable_tqdm": tiny},
    }


def run_quickstart(output_dir: str = "outputs/quickstart", *, tiny: bool = False, max_steps: int | None = None,
                   quiet: bool = False) -> dict:
    """Train, decode and score (see the module docstring); returns {strategy: overall metrics}."""
    import pandas as pd
    import torch
    from transformers.utils import logging as hf_logging

    from .data import generate_dataset
    from .decoding import decode, load_model, load_model_encoder
    from .evaluation import compute_metrics
    from .tokenization import StlTokenizer
    from .trainers import Experiment, train

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    hf_logging.set_verbosity_error()
    out, t0 = Path(output_dir), time.time()
    experiment = Experiment.from_dict(experiment_dict(tiny, max_steps))
    data = experiment.data
    say(f"[1/3] training a {experiment.model['num_hidden_layers']}-layer decoder on {data.n_train} generated "
        f"formulae ({data.encoder['anchors']}-anchor kernel encoder, {experiment.training['max_steps']} steps)")
    model_dir = train(experiment, out / "model")
    model, tokenizer = load_model(model_dir), StlTokenizer()
    encoder = load_model_encoder(model_dir)

    n_test = SETTINGS["n_test"][tiny]
    say(f"[2/3] decoding {n_test} held-out formulae ({time.time() - t0:.0f} s so far)")
    test = generate_dataset(n_test, encoder, preset=data.preset, seed=data.seed + 7_777_777)
    gold, emb = list(test["formula"]), torch.tensor(test["embedding"])
    constraints = dict(n_vars=encoder.n_vars, max_horizon=encoder.n_points - 1)
    runs = {"greedy": dict(), "constrained": dict(constrained=True, **constraints),
            "rerank k=4": dict(strategy="rerank", k=4, constrained=True, **constraints),
            "refine": dict(strategy="refine", k=4, library=4, rounds=2, constrained=True, **constraints)}
    decoded = {name: decode(model, tokenizer, emb, encoder=encoder, progress=False, **s) for name, s in runs.items()}

    say(f"[3/3] scoring ({time.time() - t0:.0f} s so far)")
    metrics = {name: compute_metrics(gold, texts, encoder=encoder, gold_embeddings=emb, n_vars=encoder.n_vars,
                                     n_points=encoder.n_points)["overall"] for name, texts in decoded.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pd.DataFrame({"gold": gold, **{f"decoded_{k.split()[0]}": v for k, v in decoded.items()}}).to_csv(
        out / "decoded.csv", index=False)

    table = pd.DataFrame({name: {k: m[k] for k in SHOWN} for name, m in metrics.items()})
    say("\n" + table.to_string(float_format=lambda v: f"{v:.3f}"))
    say("\ngold -> decoded (constrained greedy):")
    for g, d in list(zip(gold, decoded["constrained"]))[:5]:
        say(f"  {g}\n    -> {d}")
    say(f"\ndone in {time.time() - t0:.0f} s: model in {model_dir}, metrics in {out / 'metrics.json'}, "
        f"formulae in {out / 'decoded.csv'}")
    return metrics
