"""Requirement mining on the five published datasets: mean test accuracy over all folds and seeds next to the
published means (research §10, decoder 1024 @ 24k steps), with and without a decoder, and the wall time per dataset.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mining.py --folds 5 --seeds 0 1 2 \
        [--model outputs/quality/run] --out outputs/bench_mining | tee outputs/bench_mining.md

Each run is `stldec.mining.run_mining` (what `stldec mine` runs): <out>/<dataset>/<baseline|decoder>/results.json
and mining.png. Prints one Markdown table. "decoder ≥ generated" counts the folds where the best decoded candidate
separated the training fold at least as well as the best generated one, before refinement.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stldec.mining import load_dataset, run_mining

PUBLISHED = {"human": 0.897, "linear": 0.985, "maritime": 0.583, "robot5": 0.808, "train": 0.780}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_root", default="../shared/data/mining")
    p.add_argument("--datasets", nargs="+", default=list(PUBLISHED))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", help="a trained decoder folder with encoder/ (adds the decoder columns)")
    p.add_argument("--out", default="outputs/bench_mining")
    args = p.parse_args()

    runs = {}
    for name in args.datasets:
        for kind, model in (("baseline", None), ("decoder", args.model)):
            if kind == "decoder" and model is None:
                continue
            t0 = time.monotonic()
            r = run_mining(Path(args.data_root) / name, Path(args.out) / name / kind, folds=args.folds,
                           seeds=args.seeds, model_dir=model)
            runs[name, kind] = r
            accs = [row["accuracy"] for row in r["per_fold"]]
            print(f"<!-- {name} {kind}: {np.mean(accs):.4f} in {time.monotonic() - t0:.0f} s -->", flush=True)

    kinds = ["baseline"] + (["decoder"] if args.model else [])
    head = "| dataset | N × V × T | published |" + "".join(f" {k} accuracy (sd) | {k} s |" for k in kinds)
    head += " decoder ≥ generated |" if args.model else ""
    print(f"\nfolds {args.folds}, seeds {' '.join(map(str, args.seeds))} ({args.folds * len(args.seeds)} test folds "
          f"per dataset); model: {args.model or 'none'}\n")
    print(head + " best formula (baseline) |")
    print("|" + " --- |" * (head.count("|") - 1 + 1))
    for name in args.datasets:
        data = load_dataset(Path(args.data_root) / name)
        cells = [name, "×".join(map(str, data.x.shape)), f"{PUBLISHED.get(name, float('nan')):.3f}"]
        for kind in kinds:
            accs = [row["accuracy"] for row in runs[name, kind]["per_fold"]]
            cells += [f"**{np.mean(accs):.3f}** ({np.std(accs):.3f})", f"{runs[name, kind]['wall_s']:.0f}"]
        if args.model:
            rows = runs[name, "decoder"]["per_fold"]
            wins = sum(r["best_decoded_separation"] >= r["best_generated_separation"] for r in rows)
            cells.append(f"{wins}/{len(rows)}")
        cells.append(f"`{runs[name, 'baseline']['best_formula']}`")
        print("| " + " | ".join(cells) + " |")
    (Path(args.out) / "summary.json").write_text(json.dumps(
        {f"{n}/{k}": {"mean_test_accuracy": r["mean_test_accuracy"], "wall_s": r["wall_s"]}
         for (n, k), r in runs.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
