"""CPU quality yardstick (≤ 30 min on a 2-core CPU, data building included): validity and cos_rho of a `small`
decoder on 500 formulae (depths 2-4) of ../shared/data/balanced_test_3000.csv.

    .venv/bin/python benchmarks/quality_run.py [--out outputs/quality] [--n_train 8000] [--max_steps 800]

Steps, each resumable (rerun the same command after an interruption):
1. a kernel encoder on the published 1024 anchors with `--n_trajectories` base-measure trajectories (seed
   `--encoder_seed`, 1: never the metrics' seed 0, so decode-time search cannot see the trajectories it is scored
   on), saved with its anchor robustness to <out>/encoder;
2. `--n_train` formulae of the generator preset `--preset` embedded into <out>/data (`stldec data build`); none
   may be a formula of the published test sets (`--overlap_with`; the overlap is reported, and must be 0);
3. training of the `small` decoder (examples/configs/small.yaml sizes) into <out>/run;
4. greedy decoding of the 500 test formulae (embedded by the same encoder) scored with `stldec.evaluation`
   (1000 trajectories, seed 0): <out>/quality.json, overall and by depth.
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/quality")
    p.add_argument("--anchors", default="../shared/data/anchors_1024.txt")
    p.add_argument("--test", default="../shared/data/balanced_test_3000.csv")
    p.add_argument("--n_trajectories", type=int, default=4000)
    p.add_argument("--encoder_seed", type=int, default=1)
    p.add_argument("--preset", default="easy")
    p.add_argument("--n_train", type=int, default=8000)
    p.add_argument("--max_steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--overlap_with", nargs="*", default=["../shared/data/balanced_test_3000.csv",
                                                         "../shared/data/depth8_ood_500.csv"],
                   help="test sets the training set must not share a formula with (checked, reported)")
    a = p.parse_args()
    out, t0 = Path(a.out), time.time()

    if not (out / "encoder" / "encoder_config.json").is_file():
        enc = StlKernelEncoder(a.anchors, n_trajectories=a.n_trajectories, seed=a.encoder_seed)
        enc.save_pretrained(out / "encoder", save_robustness=True)
    encoder = StlKernelEncoder.from_pretrained(out / "encoder")
    print(f"[{time.time() - t0:.0f}s] encoder {encoder.fingerprint}", flush=True)
    build_dataset(out / "data", a.n_train, encoder, preset=a.preset, shard_size=1000)
    train_set = {parse(s) for s in load_formulae(out / "data")["formula"]}
    overlap = {t: len(train_set & {parse(s) for s in pd.read_csv(t)["formula"]}) for t in a.overlap_with}
    print(f"[{time.time() - t0:.0f}s] data built; formulae shared with the test sets: {overlap}", flush=True)
    if any(overlap.values()):
        raise SystemExit("the training set holds formulae of a published test set: change --seed or the preset")

    experiment = Experiment.from_dict({
        "model": {"head": "decoder", "preset": "small"},
        "data": {"train": str(out / "data"), "preset": a.preset, "n_validation": 100, "n_generate": 32,
                 "encoder": str(out / "encoder")},
        "training": {"max_steps": a.max_steps, "per_device_train_batch_size": a.batch,
                     "learning_rate": a.learning_rate, "warmup_steps": 0.05, "logging_steps": 25,
                     "eval_steps": a.max_steps // 4, "save_steps": a.max_steps // 4, "save_total_limit": 2},
    })
    train(experiment, out / "run")
    print(f"[{time.time() - t0:.0f}s] trained", flush=True)

    test = pd.read_csv(a.test)
    test = test[test["depth"].between(2, 4)].groupby("depth").head(167).head(500)
    test.to_csv(out / "test_500.csv", index=False)
    result = evaluate_model(out / "run", str(out / "test_500.csv"), encoder)
    keys = ("n", "validity", "cos_rho_mean", "cos_rho_median", "cos_rho_share_above_0.9", "sign_agreement",
            "skeleton_match")
    summary = {"overall": {k: result["overall"][k] for k in keys},
               "by_depth": {d: {k: m[k] for k in keys} for d, m in result["by_depth"].items()},
               "settings": vars(a), "test_overlap": overlap, "minutes": (time.time() - t0) / 60}
    (out / "quality.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
