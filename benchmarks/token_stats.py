"""Tokens per formula and tokenisation throughput: `StlTokenizer` vs the reference scheme (spaces as tokens).

The reference scheme (research/reference-stldec.md §6) is RE-IMPLEMENTED here from its description, for counting
and timing only: the text is wrapped as `/s <formula> s`, every space becomes an `@` token, and the string is cut
by greedy longest match from the left, each step probing all remaining substrings from the longest down to length
1 against its 35-token vocabulary (O(len²) probes). Both counts include BOS and EOS.

    .venv/bin/python benchmarks/token_stats.py [path/to/formulae.csv] [--n_throughput 100000]
"""

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

from stldec.tokenization import StlTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data seen from the repository root
REFERENCE_VOCAB = {"unk", "pad", "/s", "s", "(", ")", "always", "eventually", "until", "and", "or", "not", ">=",
                   "<=", ">", "<", "=", "x_", "[", "]", ",", "inf", "-", ".", "@", *"0123456789"}


def reference_tokens(formula: str) -> list[str]:
    """Re-implementation of the reference's greedy longest-match (described in research §6), spaces as `@`."""
    text, out, i = ("/s " + formula + " s").replace(" ", "@"), [], 0
    while i < len(text):
        for j in range(len(text), i, -1):  # longest remaining substring first
            if text[i:j] in REFERENCE_VOCAB:
                out.append(text[i:j])
                i = j
                break
        else:
            out.append("unk")
            i += 1
    return out


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call: CPU time is the fairer figure on a shared, loaded machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", nargs="?", default=str(DATA / "balanced_test_3000.csv"), help="CSV with a formula column")
    p.add_argument("--n_throughput", type=int, default=100_000, help="formulae tokenised for the throughput figures")
    p.add_argument("--n_reference", type=int, default=3000, help="formulae timed, reference scheme")
    args = p.parse_args()
    with open(args.path, newline="") as f:
        rows = list(csv.DictReader(f))
    formulae = [r["formula"] for r in rows]
    depths = [int(r["depth"]) if r.get("depth") else "-" for r in rows]  # "-": the file has no depth column
    tok = StlTokenizer()

    ours = [len(ids) for ids in tok(formulae)["input_ids"]]
    ref = [reference_tokens(s) for s in formulae]
    assert tok.batch_decode(tok(formulae)["input_ids"], skip_special_tokens=True) == formulae, "round trip failed"
    by_depth = defaultdict(list)
    for d, n, r in zip(depths, ours, ref):
        by_depth[d].append((n, len(r), r.count("@")))
    print(f"# token counts on {args.path} ({len(formulae)} formulae; BOS and EOS included)\n")
    print("| depth | n | ours: mean tokens | reference scheme: mean tokens | of which spaces | ours / reference |")
    print("|---|---|---|---|---|---|")
    for d, counts in sorted(by_depth.items()) + [("all", [x for v in by_depth.values() for x in v])]:
        o, r, sp = (mean(x[i] for x in counts) for i in range(3))
        print(f"| {d} | {len(counts)} | {o:.1f} | {r:.1f} | {sp:.1f} ({sp / r:.0%}) | {o / r:.2f} |")
    print(f"\nmax tokens: ours {max(ours)}, reference scheme {max(map(len, ref))}; "
          f"reference unk tokens: {sum(r.count('unk') for r in ref)}")

    reps = -(-args.n_throughput // len(formulae))
    many = (formulae * reps)[: args.n_throughput]
    n, nr = len(many), min(args.n_reference, len(formulae))
    raw = timed(lambda: [tok.convert_tokens_to_ids(tok.tokenize(s)) for s in many])
    call = timed(lambda: tok(many))
    batched = timed(lambda: [tok(many[i : i + 32], padding=True, return_tensors="pt") for i in range(0, n, 32)])
    ids = tok(many)["input_ids"]
    dec = timed(lambda: tok.batch_decode(ids, skip_special_tokens=True))
    spread = formulae[:: len(formulae) // nr][:nr]  # every depth, not just the first rows
    reft = timed(lambda: [reference_tokens(s) for s in spread])
    print(f"\n# throughput (formulae/s, single process; {n} formulae, reference scheme on {nr})\n")
    print("| path | wall s | CPU s | formulae/s (CPU) |\n|---|---|---|---|")
    for name, (wall, secs), count in [("ours: tokenize + convert_tokens_to_ids (regex pass)", raw, n),
                              ("ours: tokenizer(list) (full HF call, no padding)", call, n),
                              ("ours: tokenizer(batch of 32, padding=True, return_tensors='pt')", batched, n),
                              ("ours: batch_decode(skip_special_tokens=True)", dec, n),
                              ("reference scheme re-implemented: greedy longest match", reft, nr)]:
        print(f"| {name} | {wall:.2f} | {secs:.2f} | {count / secs:,.0f} |")


if __name__ == "__main__":
    main()
