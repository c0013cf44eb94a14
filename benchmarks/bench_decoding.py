"""Decoding throughput (formulae/s) and quality per strategy, batched, next to the one-at-a-time loop.

    python benchmarks/bench_decoding.py --model outputs/quickstart/model [--n 256] [--batch_size 64] [--out FILE]

Embeds a slice of a test file (default ../shared/data/balanced_test_3000.csv, rows whose horizon fits the model's
encoder) with the model's own kernel encoder, then decodes it in the same run with: the one-formula-at-a-time greedy
loop of the research code (generate() per embedding, on the first `loop_n` rows), batched greedy, beam 4,
grammar-constrained greedy and beam 4, and re-ranking with k = 8 beam candidates (constrained). Each line gives
formulae/s (decoding only; re-ranking includes re-embedding its candidates), validity, mean cos_rho (1000
trajectories) and the mean cosine distance of the decoded formula's embedding to the target.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from stldec import StlDecForCausalLM, StlTokenizer
from stldec.decoding import decode, load_model_encoder
from stldec.evaluation import compute_metrics
from stldec.stl import parse

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "balanced_test_3000.csv"


def one_at_a_time(model, tokenizer, embeddings: torch.Tensor, max_new_tokens: int) -> list[str]:
    """The research code's loop: one generate() call per embedding."""
    out = []
    for e in embeddings:
        bos = torch.full((1, 1), tokenizer.bos_token_id, device=model.device)
        ids = model.generate(input_ids=bos, formula_embedding=e[None].to(model.device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="trained model folder with its encoder/")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CSV with a `formula` column")
    p.add_argument("--n", type=int, default=256, help="formulae to decode")
    p.add_argument("--loop_n", type=int, default=64, help="formulae for the one-at-a-time loop (it is slow)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import pandas as pd

    model = StlDecForCausalLM.from_pretrained(args.model).eval().to(args.device)
    tokenizer, encoder = StlTokenizer(), load_model_encoder(args.model)
    rows = pd.read_csv(args.data)["formula"].tolist()
    fits = [f for f in rows if parse(f).time_horizon < encoder.n_points and max(parse(f).variables) < encoder.n_vars]
    gold = fits[:: max(len(fits) // args.n, 1)][: args.n]
    print(f"{len(gold)} formulae from {args.data} ({len(fits)} of {len(rows)} fit the encoder's {encoder.n_points} "
          f"points); model {args.model} ({model.num_parameters():,} parameters) on {args.device}", flush=True)
    embeddings = encoder.encode(gold)
    max_new = model.config.max_position_embeddings - 1
    constraints = dict(constrained=True, n_vars=encoder.n_vars, max_horizon=encoder.n_points - 1)
    runs = {
        "one-at-a-time greedy loop": None,
        "greedy": dict(),
        "beam 4": dict(strategy="beam", num_beams=4),
        "constrained greedy": constraints,
        "constrained beam 4": dict(strategy="beam", num_beams=4, **constraints),
        "rerank k=8 (beam, constrained)": dict(strategy="rerank", k=8, **constraints),
    }
    decode(model, tokenizer, embeddings[:4], progress=False)  # warm-up
    results = {}
    for name, settings in runs.items():
        n = args.loop_n if settings is None else len(gold)
        t0 = time.perf_counter()
        if settings is None:
            texts = one_at_a_time(model, tokenizer, embeddings[:n], max_new)
        else:
            texts = decode(model, tokenizer, embeddings, encoder=encoder, batch_size=args.batch_size, progress=False,
                           **settings)
        seconds = time.perf_counter() - t0
        m = compute_metrics(gold[:n], texts, encoder=encoder, gold_embeddings=embeddings[:n], n_vars=encoder.n_vars,
                            n_points=encoder.n_points)["overall"]
        results[name] = {"n": n, "seconds": seconds, "formulae_per_s": n / seconds, "validity": m["validity"],
                         "cos_rho_mean": m["cos_rho_mean"], "embedding_distance": 1 - (m["embedding_cosine"] or 0)}
        r = results[name]
        print(f"| {name} | {r['n']} | {r['formulae_per_s']:.1f} | {r['validity']:.3f} | {r['cos_rho_mean']:.3f} | "
              f"{r['embedding_distance']:.3f} |", flush=True)
    meta = {"model": args.model, "data": args.data, "device": args.device, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "machine": platform.processor() or platform.machine()}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
