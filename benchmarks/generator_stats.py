"""Statistics of a generated set vs the published balanced test set (research/reference-stldec.md §5.4).

Both sets go through the same code: reference-scheme tokens (spaces as tokens, with BOS/EOS; `token_stats.py`),
characters, operators, atoms, horizon and variables per depth, the operator mix and the temporal interval kinds.

    .venv/bin/python benchmarks/generator_stats.py [--preset balanced] [--n 3000] [--seed 0]
"""

import argparse
import collections
import csv
from pathlib import Path
from statistics import mean

from token_stats import reference_tokens

from stldec.stl import Always, Atom, Eventually, FormulaGenerator, Until, parse

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def describe(formulae) -> tuple[list[str], str, str]:
    by_depth = collections.defaultdict(list)
    for f in formulae:
        by_depth[f.depth].append(f)
    rows = []
    for d, fs in sorted(by_depth.items()):
        toks = [len(reference_tokens(f.to_string())) for f in fs]
        nodes = [list(f.walk()) for f in fs]
        rows.append(f"| {d} | {len(fs)} | {mean(toks):.1f} / {min(toks)} / {max(toks)} "
                    f"| {mean(len(f.to_string()) for f in fs):.1f} "
                    f"| {mean(sum(not isinstance(n, Atom) for n in ns) for ns in nodes):.2f} "
                    f"| {mean(sum(isinstance(n, Atom) for n in ns) for ns in nodes):.2f} "
                    f"| {mean(f.time_horizon for f in fs):.1f} / {max(f.time_horizon for f in fs)} "
                    f"| {max(max(f.variables) for f in fs)} |")
    ops = collections.Counter(type(n).__name__.lower() for f in formulae for n in f.walk() if not isinstance(n, Atom))
    kinds = collections.Counter()
    for f in formulae:
        for n in f.walk():
            if isinstance(n, Always | Eventually | Until):
                kinds["unbounded" if n.interval is None else "right-unb." if n.interval.end is None else "bounded"] += 1
    mix = ", ".join(f"{k} {100 * v / ops.total():.1f} %" for k, v in ops.most_common())
    kind = ", ".join(f"{k} {100 * v / kinds.total():.1f} %" for k, v in kinds.most_common())
    return rows, mix, kind


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="balanced")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with open(DATA / "balanced_test_3000.csv") as fh:
        published = [parse(r["formula"]) for r in csv.DictReader(fh)]
    ours = FormulaGenerator(args.preset, seed=args.seed).sample(args.n)
    head = ("| depth | n | tokens mean / min / max | chars mean | operators mean | atoms mean | horizon mean / max "
            "| max var |\n|---|---|---|---|---|---|---|---|")
    for name, formulae in (("published balanced_test_3000.csv", published), (f"ours: {args.preset}, seed {args.seed}",
                                                                            ours)):
        rows, mix, kind = describe(formulae)
        print(f"\n### {name}\n{head}\n" + "\n".join(rows) + f"\n\noperators: {mix}\n\ntemporal: {kind}")


if __name__ == "__main__":
    main()
