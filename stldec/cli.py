"""The `stldec` command line: one sub-command per task, each a thin layer over the Python API.

    stldec generate ...    random formulae to CSV/Parquet/JSONL
    stldec embed ...       add kernel embeddings to a formula file (resumable)

Each sub-command registers itself with `_command` below; `main()` dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {}


def _command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args)` as sub-command `name` with the arguments `add_arguments(parser)` declares."""

    def register(run: Callable[[argparse.Namespace], None]):
        _COMMANDS[name] = (add_arguments, run)
        return run

    return register


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stldec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=(run.__doc__ or "").strip().split("\n")[0])
        add_arguments(p)
        p.set_defaults(_run=run)
    args = parser.parse_args(argv)
    args._run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
