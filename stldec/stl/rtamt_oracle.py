"""Bridge to rtamt, the independent monitor our textbook convention is checked against (tests, benchmarks, users).

`to_rtamt(f, n_points)` prints a formula in rtamt's syntax (closed AST windows; `[a, inf)` becomes `[a:T-1]`, since
rtamt has no right-unbounded interval); `rtamt_robustness(formulae, x)` evaluates with rtamt 0.4.10's
`StlDiscreteTimeOfflineSpecification`, one trajectory at a time (slow: ~10^4 evaluations/s), float64 `(B, N, T)`.
rtamt is an optional dependency (the `dev` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .formula import Always, And, Atom, Eventually, Formula, Interval, Not, Or, Until


def to_rtamt(f: Formula, n_points: int) -> str:
    """The formula in rtamt's specification language, variables named x0, x1, ..."""

    def iv(i: Interval | None) -> str:
        return "" if i is None else f"[{i.start}:{n_points - 1 if i.end is None else i.end}]"

    match f:
        case Atom():
            return f"(x{f.var} {'<=' if f.lte else '>='} {f.threshold!r})"
        case Not():
            return f"(not {to_rtamt(f.child, n_points)})"
        case And() | Or():
            op = "and" if isinstance(f, And) else "or"
            return f"({to_rtamt(f.left, n_points)} {op} {to_rtamt(f.right, n_points)})"
        case Always() | Eventually():
            op = "always" if isinstance(f, Always) else "eventually"
            return f"({op}{iv(f.interval)}{to_rtamt(f.child, n_points)})"
        case Until():
            return f"({to_rtamt(f.left, n_points)} until{iv(f.interval)} {to_rtamt(f.right, n_points)})"
    raise TypeError(f"not a formula node: {f!r}")


def rtamt_robustness(formulae: Sequence[Formula], x: torch.Tensor) -> torch.Tensor:
    """rtamt's robustness of every formula on every trajectory x (N, n_vars, T) at every sample: (B, N, T) float64."""
    import rtamt

    N, V, T = x.shape
    out = torch.empty(len(formulae), N, T, dtype=torch.float64)
    for i, f in enumerate(formulae):
        spec = rtamt.StlDiscreteTimeOfflineSpecification()
        for v in range(V):
            spec.declare_var(f"x{v}", "float")
        spec.spec = to_rtamt(f, T)
        spec.parse()
        for n in range(N):  # rtamt mutates its input lists: fresh ones every call
            data = {"time": list(range(T)), **{f"x{v}": [float(c) for c in x[n, v]] for v in range(V)}}
            out[i, n] = torch.tensor([r for _, r in spec.evaluate(data)], dtype=torch.float64)
    return out
