"""Decode-time search vs the plain decoder on the published test sets: greedy, rerank, refine at several budgets, the
search-only baseline (no network) and refine with library candidates, side by side in one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_refine.py --model outputs/quality/run \
        --test ../shared/data/balanced_test_3000.csv ../shared/data/depth8_ood_500.csv [--per_depth 50] \
        [--strategies greedy rerank refine:0.25 refine:1 search:0.25 hybrid:0.5] --out outputs/bench_refine

Strategies (all constrained, batches of 32): greedy; rerank (8 beams + greedy); refine:B (those candidates refined
within B s of search per formula); hybrid:B (the greedy output + the 8 library formulae nearest to the target,
refined); search:B (`stldec.refine.search`: the 8 nearest library formulae, no network, refined); nearest (the
closest of those, unrefined). A third field sets `size_tolerance` (search:0.25:0.002: the smallest formula within
0.002 of the best embedding distance). The search
sees the target embeddings and the model's encoder only; metrics use 1000 base-measure trajectories of seed 0
(the model's encoder must use another seed: checked). Writes <out>/results.json (every metric, overall and by
depth) and prints one Markdown table per test file, plus the overlap of the search library with the test sets
(it must be 0).
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from stldec.decoding import decode, load_model_encoder
from stldec.evaluation import compute_metrics
from stldec.modeling import StlDecForCausalLM
from stldec.refine import formula_library, search
from stldec.stl import parse
from stldec.tokenization import StlTokenizer

COLUMNS = ("validity", "cos_rho_mean", "cos_rho_q25", "cos_rho_median", "cos_rho_q75", "cos_rho_share_above_0.9",
           "sign_agreement", "node_ratio", "repeated_digit_rate")


def run_strategy(name: str, model, tok, encoder, e: torch.Tensor) -> list[str]:
    """greedy | rerank (k=8 beams + greedy) | refine:B (those candidates) | hybrid:B (greedy + the 8 nearest library
    formulae) | search:B (the 8 nearest library formulae, no network), refined within B s per formula."""
    kind, budget, tolerance = (name.split(":") + ["", ""])[:3]
    common = dict(encoder=encoder, batch_size=32, constrained=True, n_vars=encoder.n_vars,
                  max_horizon=encoder.n_points - 1)
    search_settings = dict(budget_s=float(budget or 1), rounds=10_000,  # anytime: the budget decides
                           size_tolerance=float(tolerance or 0))
    if kind in ("greedy", "rerank"):
        return decode(model, tok, e, strategy=kind, **common)
    if kind in ("refine", "hybrid"):
        k, library = (8, 0) if kind == "refine" else (0, 8)
        return decode(model, tok, e, strategy="refine", k=k, library=library, **search_settings, **common)
    if kind in ("search", "nearest"):  # nearest: the closest of the 8 nearest library formulae, no refinement
        settings = search_settings if kind == "search" else dict(rounds=0, size_tolerance=float(tolerance or 0))
        return [f.to_string() for i in range(0, len(e), 32) for f, _ in search(e[i : i + 32], encoder, k=8, **settings)]
    raise ValueError(f"unknown strategy {name!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="outputs/quality/run")
    p.add_argument("--test", nargs="+", default=["../shared/data/balanced_test_3000.csv",
                                                 "../shared/data/depth8_ood_500.csv"])
    p.add_argument("--per_depth", type=int, default=None, help="first N formulae of each depth (default: all)")
    p.add_argument("--strategies", nargs="+", default=["greedy", "rerank", "refine:0.25", "refine:1", "search:0.25",
                                                        "hybrid:0.5"])
    p.add_argument("--out", default="outputs/bench_refine")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = StlDecForCausalLM.from_pretrained(a.model).eval()
    tok = StlTokenizer.from_pretrained(a.model)
    encoder = load_model_encoder(a.model)
    if encoder.seed == 0:
        raise SystemExit("the model's encoder samples seed 0, the metrics' seed: the search would see them")
    library, _ = formula_library(encoder)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    for test in a.test:
        df = pd.read_csv(test)
        if "depth" not in df:  # depth8_ood_500.csv has only the formulae
            df["depth"] = [parse(s).depth for s in df["formula"]]
        if a.per_depth:
            df = df.groupby("depth").head(a.per_depth)
        gold = list(df["formula"])
        overlap = len({parse(s) for s in gold} & set(library))
        e = encoder.encode(gold)
        rows = []
        for name in a.strategies:
            key = f"{Path(test).stem}|{len(gold)}|{name}"
            if key not in results:
                t0 = time.perf_counter()
                decoded = run_strategy(name, model, tok, encoder, e)
                seconds = time.perf_counter() - t0
                m = compute_metrics(gold, decoded, n_trajectories=1000, seed=0, depths=list(df["depth"]))
                results[key] = {"overall": m["overall"], "by_depth": m["by_depth"], "seconds": seconds,
                                "formulae_per_s": len(gold) / seconds, "threads": torch.get_num_threads(),
                                "library_overlap": overlap}
                (out / "results.json").write_text(json.dumps(results, indent=2))
            r = results[key]
            by_depth = " / ".join(f"{v['cos_rho_mean']:.3f}" for _, v in sorted(r["by_depth"].items()))
            rows.append(f"| {name} | " + " | ".join(f"{r['overall'][c]:.3f}" for c in COLUMNS)
                        + f" | {by_depth} | {r['formulae_per_s']:.2f} |")
        print(f"\n{test}: {len(gold)} formulae, library overlap {overlap}, {torch.get_num_threads()} threads\n")
        print("| strategy | " + " | ".join(COLUMNS) + " | cos_ρ mean by depth | formulae/s |")
        print("|---" * (len(COLUMNS) + 3) + "|")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
