"""Acceptance check: the parser and printer reproduce every published formula exactly.

For every line of anchors_1024.txt and every `formula` of balanced_test_3000.csv and depth8_ood_500.csv:
`parse(s).to_string() == s`, and where the file has a `depth` column it equals `Formula.depth`. Prints counts and
exits non-zero on any failure.

    .venv/bin/python benchmarks/check_parse_roundtrip.py [--data ../shared/data]
"""

import argparse
import csv
import sys
from pathlib import Path

from stldec.stl import STLParseError, parse


def check(name: str, rows: list[dict]) -> int:
    failures = 0
    for i, row in enumerate(rows):
        s = row["formula"]
        try:
            f = parse(s)
        except STLParseError as e:
            failures += 1
            print(f"  {name}:{i}: parse error: {e}")
            continue
        if f.to_string() != s:
            failures += 1
            print(f"  {name}:{i}: printed differently:\n    {s}\n    {f.to_string()}")
        elif "depth" in row and int(row["depth"]) != f.depth:
            failures += 1
            print(f"  {name}:{i}: depth column {row['depth']} != Formula.depth {f.depth}")
    depth = " (depth column checked)" if rows and "depth" in rows[0] else ""
    print(f"{name}: {len(rows) - failures}/{len(rows)} ok{depth}")
    return failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    data = Path(p.parse_args().data)
    failures = check("anchors_1024.txt", [{"formula": s} for s in (data / "anchors_1024.txt").read_text().splitlines()])
    for name in ("balanced_test_3000.csv", "depth8_ood_500.csv"):
        with open(data / name, newline="") as f:
            failures += check(name, list(csv.DictReader(f)))
    print("FAILED" if failures else "all formulae round-trip")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
