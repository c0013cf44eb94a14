"""Write the package's default anchor set, stldec/stl/anchors_default.txt: `make_anchors(1024, seed=0)`.

    .venv/bin/python benchmarks/make_default_anchors.py          # (re)write the file
    .venv/bin/python benchmarks/make_default_anchors.py --check  # exit 1 if the shipped file differs
"""

import argparse
import sys
from pathlib import Path

from stldec.stl.kernel import DEFAULT_ANCHORS, make_anchors

HEADER = """# stldec default anchors for StlKernelEncoder (reference dialect, one formula per line):
# make_anchors(1024, n_vars=3, n_points=100, seed=0), written by benchmarks/make_default_anchors.py
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    path = Path(__file__).resolve().parents[1] / "stldec" / "stl" / DEFAULT_ANCHORS
    text = HEADER + "".join(f"{f}\n" for f in make_anchors(1024, n_vars=3, n_points=100, seed=0))
    if p.parse_args().check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'matches' if same else 'DIFFERS from'} make_anchors(1024, seed=0)")
        sys.exit(0 if same else 1)
    path.write_text(text)
    print(f"wrote {text.count(chr(10)) - HEADER.count(chr(10))} anchors to {path}")


if __name__ == "__main__":
    main()
