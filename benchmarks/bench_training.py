"""Training throughput in real (non-pad) tokens/s: our batch layout vs the reference's, same model, same run, CPU.

    .venv/bin/python benchmarks/bench_training.py [--preset small] [--batch 32] [--steps 6] [--rounds 3]

Layouts (one AdamW step = forward + backward + update of StlDecForCausalLM with cross-attention):
- reference: every row padded to 499 tokens and the loss taken on the padding too (research/reference-stldec.md §8);
- dynamic:   each batch padded to its own longest row, labels -100 on padding, rows in random order;
- grouped:   dynamic + length grouping (`GroupedSampler`, as `train_sampling_strategy="group_by_length"` uses).
Rows are formulae of ../shared/data/balanced_test_3000.csv (depths 2-7) with random embeddings (throughput does
not depend on their values). The layouts are timed in interleaved rounds and the median step time is reported, so a
busy machine slows all of them alike.
"""

import argparse
import statistics
import time

import pandas as pd
import torch

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.data import StlCollator
from stldec.trainers import GroupedSampler

REFERENCE_LENGTH = 499


def batches(ids: list[list[int]], layout: str, batch: int, steps: int, emb_dim: int, tok, seed: int):
    """`steps` batches of `batch` rows in `layout`."""
    g = torch.Generator().manual_seed(seed)
    if layout == "grouped":
        s = GroupedSampler([len(x) for x in ids], batch, seed=seed)
        order = list(s)
    else:
        order = torch.randperm(len(ids), generator=g).tolist()
    collate = StlCollator(tok, "decoder")
    out = []
    for k in range(steps):
        rows = [{"input_ids": ids[i], "formula_embedding": torch.rand(emb_dim, generator=g).tolist()}
                for i in order[k * batch : (k + 1) * batch]]
        b = collate(rows)
        if layout == "reference":  # pad to 499, attention mask on real tokens, loss on every position
            T = b["input_ids"].shape[1]
            b["input_ids"] = torch.nn.functional.pad(b["input_ids"], (0, REFERENCE_LENGTH - T), value=tok.pad_token_id)
            b["attention_mask"] = torch.nn.functional.pad(b["attention_mask"], (0, REFERENCE_LENGTH - T))
            b["labels"] = b["input_ids"].clone()
        out.append(b)
    return out


def time_steps(model, opt, bs) -> tuple[float, int]:
    """(median seconds per step, real tokens per step on average)."""
    times = []
    for b in bs:
        t = time.perf_counter()
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times), sum(int(b["attention_mask"].sum()) for b in bs) / len(bs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--embedding_dim", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="steps per layout per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="../shared/data/balanced_test_3000.csv")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = StlTokenizer()
    ids = tok(list(pd.read_csv(a.data)["formula"]))["input_ids"]
    config = StlDecConfig.from_preset(a.preset, embedding_dim=a.embedding_dim, max_position_embeddings=512)
    model = StlDecForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    print(f"model {a.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, batch {a.batch}, "
          f"{torch.get_num_threads()} threads; mean formula length {sum(map(len, ids)) / len(ids):.1f} tokens")
    layouts = ("reference", "dynamic", "grouped")
    results = {k: [] for k in layouts}
    for r in range(a.rounds):
        for layout in layouts:
            bs = batches(ids, layout, a.batch, a.steps + 1, config.embedding_dim, tok, seed=r)
            time_steps(model, opt, bs[:1])  # warm-up
            results[layout].append(time_steps(model, opt, bs[1:]))
    rows = []
    for layout in layouts:
        sec = statistics.median(t for t, _ in results[layout])
        real = statistics.mean(n for _, n in results[layout])
        rows.append((layout, sec, real / sec))
    base = rows[0][2]
    print("\n| layout | s/step | real tokens/s | speed-up vs reference |\n|---|---|---|---|")
    for layout, sec, tps in rows:
        print(f"| {layout} | {sec:.3f} | {tps:,.0f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
