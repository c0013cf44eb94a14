"""The CPU recipe: train the best greedy decoder we found for a 2-core CPU and score it on the published test sets.

    .venv/bin/python benchmarks/quality_run.py [--out outputs/quality]     # the recipe (≤ 2 h, data included)
    .venv/bin/python benchmarks/quality_run.py --quick                     # regression check (≤ 30 min)

Any recipe setting can be changed for an ablation (`--preset random --decimals 4 --model num_memory_tokens=16 ...`);
every step resumes when the same command is rerun after an interruption:
1. a kernel encoder on the published 1024 anchors with `--n_trajectories` base-measure trajectories (seed
   `--encoder_seed`, 1: never the metrics' seed 0, so decode-time search cannot see the trajectories it is scored
   on), saved to <out>/encoder (shared by every run under <out>);
2. `--n_train` formulae of generator preset `--preset` with thresholds of `--decimals` decimals embedded into
   <out>/data-...; formulae of the published test sets (`--overlap_with`) are left out (overlap checked, reported:
   0), also from a fixed validation set (300 `balanced` formulae, 4 decimals, seed 99) for the learning curve;
3. training of the decoder (`small` sizes + `--model` overrides) into <out>/<--name>; every `--eval_steps` steps
   the validation rows are decoded greedily (`validity`, `cos_rho` in metrics.jsonl: the learning curve) and a
   checkpoint is saved; the run ends with the checkpoint of best validation cos_rho mean (the model scored);
4. greedy decoding of `--test` (all rows; `--quick`: 500 of depths 2-4) and `--test_ood`, scored with
   `stldec.evaluation` (1000 trajectories, seed 0): <out>/<name>/quality.json, overall and by depth.
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from stldec.data import build_dataset, load_formulae
from stldec.stl import StlKernelEncoder, parse
from stldec.trainers import Experiment, train
from stldec.trainers.mixtures import evaluate_model

RECIPE = dict(preset="balanced", decimals=2, n_train=400_000, max_steps=15000, batch=32, learning_rate=1e-3)
QUICK = dict(n_train=30_000, max_steps=1000)
KEYS = ("n", "validity", "cos_rho_mean", "cos_rho_median", "cos_rho_share_above_0.9", "sign_agreement",
        "node_ratio", "repeated_digit_rate", "skeleton_match")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="outputs/quality")
    p.add_argument("--name", default=None, help="run folder under --out (default: recipe or quick)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK} and a 500-formula test subset")
    p.add_argument("--anchors", default="../shared/data/anchors_1024.txt")
    p.add_argument("--test", default="../shared/data/balanced_test_3000.csv")
    p.add_argument("--test_ood", default="../shared/data/depth8_ood_500.csv", help="'' to skip")
    p.add_argument("--n_test", type=int, default=None, help="score the first n rows per depth / 6 (ablations)")
    p.add_argument("--n_trajectories", type=int, default=4000)
    p.add_argument("--encoder_seed", type=int, default=1)
    p.add_argument("--preset", default=RECIPE["preset"])
    p.add_argument("--decimals", type=int, default=RECIPE["decimals"], help="threshold decimals of the training set")
    p.add_argument("--n_train", type=int, default=None)
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--eval_steps", type=int, default=None, help="default: max_steps / 8")
    p.add_argument("--batch", type=int, default=RECIPE["batch"])
    p.add_argument("--learning_rate", type=float, default=RECIPE["learning_rate"])
    p.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE", help="StlDecConfig overrides of `small`")
    p.add_argument("--overlap_with", nargs="*", default=["../shared/data/balanced_test_3000.csv",
                                                         "../shared/data/depth8_ood_500.csv"],
                   help="test sets the training set must not share a formula with (checked, reported)")
    a = p.parse_args()
    size = QUICK if a.quick else RECIPE
    a.n_train, a.max_steps = a.n_train or size["n_train"], a.max_steps or size["max_steps"]
    a.name = a.name or ("quick" if a.quick else "recipe")
    out, t0 = Path(a.out), time.time()
    run = out / a.name

    if not (out / "encoder" / "encoder_config.json").is_file():
        StlKernelEncoder(a.anchors, n_trajectories=a.n_trajectories, seed=a.encoder_seed).save_pretrained(
            out / "encoder", save_robustness=True)
    encoder = StlKernelEncoder.from_pretrained(out / "encoder")
    print(f"[{time.time() - t0:.0f}s] encoder {encoder.fingerprint}", flush=True)
    tests = {t: {parse(s) for s in pd.read_csv(t)["formula"]} for t in a.overlap_with}
    excluded = set().union(*tests.values())
    data = out / f"data-{a.preset}-d{a.decimals}-{a.n_train}"
    build_dataset(data, a.n_train, encoder, preset=a.preset, shard_size=2000, progress=False, exclude=excluded,
                  threshold_decimals=a.decimals)
    validation = build_dataset(out / "validation-300", 300, encoder, preset="balanced", seed=99, progress=False,
                               exclude=excluded)
    train_set = {parse(s) for s in load_formulae(data)["formula"]}
    overlap = {t: len(train_set & test) for t, test in tests.items()}  # 0 by construction: checked, reported
    print(f"[{time.time() - t0:.0f}s] data built: {len(train_set)} distinct formulae, {a.n_train - len(train_set)} "
          f"excluded or repeated; formulae shared with the test sets: {overlap}", flush=True)
    if any(overlap.values()):
        raise SystemExit(f"the training set holds formulae of a published test set: {overlap}")

    model = {"head": "decoder", "preset": "small"}
    for item in a.model:
        field, value = item.split("=", 1)
        model[field] = json.loads(value)
    eval_steps = a.eval_steps or max(a.max_steps // 8, 1)
    experiment = Experiment.from_dict({
        "model": model,
        "data": {"train": str(data), "validation": str(validation), "n_generate": 300, "encoder": str(out / "encoder")},
        "training": {"max_steps": a.max_steps, "per_device_train_batch_size": a.batch,
                     "learning_rate": a.learning_rate, "lr_scheduler_type": "cosine", "warmup_steps": 0.03,
                     "logging_steps": 50, "eval_steps": eval_steps, "save_steps": eval_steps, "save_total_limit": 2,
                     "load_best_model_at_end": True, "metric_for_best_model": "cos_rho_mean",
                     "greater_is_better": True},
    })
    train(experiment, run)
    minutes_train = (time.time() - t0) / 60
    print(f"[{time.time() - t0:.0f}s] trained", flush=True)

    summary = {"settings": vars(a), "test_overlap": overlap, "minutes_data_and_training": minutes_train}
    for key, path in (("test", a.test), ("ood", a.test_ood)):
        if not path:
            continue
        rows = pd.read_csv(path)
        if key == "test" and (a.quick or a.n_test):
            n = a.n_test or 500
            rows = rows[rows["depth"].between(2, 4)] if a.quick else rows
            rows = rows.groupby("depth").head(-(-n // rows["depth"].nunique())).head(n)
        elif key == "ood" and (a.quick or a.n_test):
            continue
        rows.to_csv(run / f"{key}_rows.csv", index=False)
        result = evaluate_model(run, str(run / f"{key}_rows.csv"), encoder)
        summary[key] = {"overall": {k: result["overall"][k] for k in KEYS},
                        "by_depth": {d: {k: m[k] for k in KEYS} for d, m in result["by_depth"].items()}}
        print(f"[{time.time() - t0:.0f}s] {key}: {json.dumps(summary[key]['overall'])}", flush=True)
    curve = {}  # step -> eval loss and generation metrics (logged as two lines)
    for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        curve.setdefault(r["step"], {"step": r["step"]}).update({k: v for k, v in r.items() if k.startswith("eval_")
                                                                 and "runtime" not in k and "per_second" not in k})
    summary["curve"] = [c for c in curve.values() if len(c) > 1]
    summary["minutes"] = (time.time() - t0) / 60
    (run / "quality.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("curve", "minutes")}, indent=1))


if __name__ == "__main__":
    main()
