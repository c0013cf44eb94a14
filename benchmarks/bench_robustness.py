"""Robustness throughput: stldec's two engines (the fused CPU kernel, native.py, and the torch plan) vs a naive
one-formula-at-a-time torch baseline, rtamt and stlcg++.

Workload: 50 formulae of depth <= 5 (FormulaGenerator "random" preset, seed 0, max_depth 5, when it exists; else
the seeded sampler below) x 1000 base-measure trajectories (seed 0) x 101 points, textbook convention (the one
every peer implements); the reference convention is timed too. Throughput = formula * trajectory * timepoint
evaluations per second (every implementation computes the whole robustness trace); nodes/s counts AST nodes.
rtamt and stlcg++ run on a subsample and are extrapolated.

    .venv/bin/python benchmarks/bench_robustness.py [--threads 1] [--repeat 5] [--rtamt 4] [--stlcg 10] [--against REV]

`--against REV` also times `robustness` (stldec/stl/semantics.py) as of git revision REV, interleaved with the
current one, to measure a change on a shared machine. The first row is the headline; the speed-ups compare it with
every other row.
"""

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as Fn

from stldec.stl import Always, And, Atom, Eventually, Formula, Interval, Not, Or, Until, native, robustness
from stldec.stl.rtamt_oracle import rtamt_robustness

INF = float("inf")


def workload(n_formulae: int = 50, n_vars: int = 3, n_points: int = 101) -> tuple[list[Formula], str]:
    try:
        from stldec.stl import FormulaGenerator

        gen = FormulaGenerator(preset="random", seed=0, n_vars=n_vars, n_points=n_points, max_depth=5)
        return gen.sample(n_formulae), "FormulaGenerator('random', seed=0, max_depth=5)"
    except (ImportError, TypeError, AttributeError):
        rng, fs = random.Random(0), []
        while len(fs) < n_formulae:
            f = sample(rng, 5, n_vars)
            if f.depth >= 3 and f.time_horizon < n_points:
                fs.append(f)
        return fs, "benchmark's own seeded sampler (FormulaGenerator not available)"


def sample(rng: random.Random, depth: int, n_vars: int) -> Formula:
    """Depth <= `depth`; integer bounds in [0, 20]; 25 % unbounded, 20 % right-unbounded temporal operators."""
    if depth <= 1 or rng.random() < 0.2:
        return Atom(rng.randrange(n_vars), round(rng.uniform(-2, 2), 4), rng.random() < 0.5)
    sub = lambda: sample(rng, depth - 1, n_vars)  # noqa: E731
    kind = rng.choice(["not", "and", "or", "G", "F", "U"])
    if kind == "not":
        return Not(sub())
    if kind in ("and", "or"):
        return (And if kind == "and" else Or)(sub(), sub())
    r, a = rng.random(), rng.randrange(21)
    interval = None if r < 0.25 else Interval(a, None) if r < 0.45 else Interval(a, rng.randrange(a, 21))
    return Until(sub(), sub(), interval) if kind == "U" else (Always if kind == "G" else Eventually)(sub(), interval)


# ---------------------------------------------------------------------------------------------------------------
# BASELINE: the plain vectorised version (one formula at a time, recursive, every node a full (N, T) trace)


def _shift(r: torch.Tensor, k: int, fill: float) -> torch.Tensor:  # y[:, t] = r[:, t+k], fill past the end
    k = min(k, r.shape[1])
    return torch.cat([r[:, k:], r.new_full((r.shape[0], k), fill)], 1)


def _window_max(r: torch.Tensor, a: int, b: int | None) -> torch.Tensor:  # max over [t+a, t+b], -inf if empty
    s = _shift(r, a, -INF)
    if b is None:
        return s.flip(1).cummax(1).values.flip(1)
    w = b - a + 1
    return Fn.max_pool1d(torch.cat([s, s.new_full((s.shape[0], w - 1), -INF)], 1).unsqueeze(1), w, 1).squeeze(1)


def _until(r1: torch.Tensor, r2: torch.Tensor, a: int, b: int | None) -> torch.Tensor:  # strict, truncated
    T = r1.shape[1]
    if b is None and a == 0:  # out(t) = max(r2(t), min(r1(t), out(t+1))): log-doubling composition
        A, B, d = r2, r1, 1
        while d < T:
            A, B, d = torch.maximum(A, torch.minimum(B, _shift(A, d, -INF))), torch.minimum(B, _shift(B, d, INF)), 2 * d
        return A
    out, m = None, None
    for k in range(min(T - 1 if b is None else b, T + a) + 1):
        if k >= a:
            term = _shift(r2, k, -INF) if m is None else torch.minimum(m, _shift(r2, k, -INF))
            out = term if out is None else torch.maximum(out, term)
        s1 = _shift(r1, k, INF)
        m = s1 if m is None else torch.minimum(m, s1)
    return out if out is not None else torch.full_like(r1, -INF)


def naive(f: Formula, x: torch.Tensor) -> torch.Tensor:
    """Textbook robustness trace (N, T) of one formula on x (N, n_vars, T)."""
    match f:
        case Atom():
            return f.threshold - x[:, f.var] if f.lte else x[:, f.var] - f.threshold
        case Not():
            return -naive(f.child, x)
        case And() | Or():
            return (torch.minimum if isinstance(f, And) else torch.maximum)(naive(f.left, x), naive(f.right, x))
        case Always() | Eventually():
            a, b = (0, None) if f.interval is None else (f.interval.start, f.interval.end)
            sign = -1 if isinstance(f, Always) else 1
            return sign * _window_max(sign * naive(f.child, x), a, b)
        case Until():
            a, b = (0, None) if f.interval is None else (f.interval.start, f.interval.end)
            return _until(naive(f.left, x), naive(f.right, x), a, b)


# ---------------------------------------------------------------------------------------------------------------
# peers


def to_stlcg(f: Formula, T: int):
    import stlcgpp.formula as S

    iv = lambda i: None if i is None else [i.start, torch.inf if i.end is None else i.end]  # noqa: E731
    match f:
        case Atom():
            p = S.Predicate(f"x{f.var}", lambda s, v=f.var: s[:, v])
            return S.LessThan(p, f.threshold) if f.lte else S.GreaterThan(p, f.threshold)
        case Not():
            return S.Negation(to_stlcg(f.child, T))
        case And() | Or():
            return (S.And if isinstance(f, And) else S.Or)(to_stlcg(f.left, T), to_stlcg(f.right, T))
        case Always() | Eventually():
            return (S.Always if isinstance(f, Always) else S.Eventually)(to_stlcg(f.child, T), iv(f.interval))
        case Until():
            return S.Until(to_stlcg(f.left, T), to_stlcg(f.right, T), iv(f.interval))


def run_stlcg(fs: list[Formula], x: torch.Tensor) -> torch.Tensor:
    signal = x.permute(0, 2, 1).contiguous()  # (N, T, n_vars), one trajectory per vmapped call
    return torch.stack([torch.vmap(to_stlcg(f, x.shape[-1]))(signal) for f in fs])


def timed(cases: dict, repeat: int) -> dict:
    """name -> ((best wall, best CPU) seconds, last output) over `repeat` rounds; the cases run interleaved (one run of
    each per round) so that load changes on a shared machine hit all alike; CPU time is the steadier measure."""
    best = {name: [INF, INF, None] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            b = best[name]
            b[:] = min(b[0], time.perf_counter() - t0), min(b[1], time.process_time() - c0), out
    return {name: ((w, c), out) for name, (w, c, out) in best.items()}


def engine_at(rev: str):
    """The `robustness` function of stldec/stl/semantics.py as of git revision `rev` (imported beside the current)."""
    src = subprocess.run(["git", "show", f"{rev}:stldec/stl/semantics.py"], capture_output=True, text=True, check=True)
    path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    path.write(src.stdout)
    path.close()
    spec = importlib.util.spec_from_file_location(f"stldec.stl._semantics_{rev}", path.name)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.robustness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000, help="trajectories")
    ap.add_argument("--rtamt", type=int, default=4, help="trajectories for rtamt (0: skip)")
    ap.add_argument("--stlcg", type=int, default=10, help="trajectories for stlcg++ (0: skip)")
    ap.add_argument("--against", default=None, help="git revision whose engine is timed too (textbook at='all')")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fs, origin = workload()
    try:
        from stldec.stl import BaseMeasure

        x, xorigin = BaseMeasure().sample(args.n, 3, 101, seed=0), "BaseMeasure seed 0"
    except ImportError:
        x, xorigin = torch.randn(args.n, 3, 101, generator=torch.Generator().manual_seed(0)).cumsum(-1) * 0.3, "walks"
    F, (N, _, T), nodes = len(fs), x.shape, sum(f.size for f in fs)
    print(f"workload: {F} formulae ({origin}), {nodes} AST nodes, max depth {max(f.depth for f in fs)}; "
          f"{N} trajectories ({xorigin}) x {T} points; torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []

    print(f"{'':<36}{'wall ms':>10} {'CPU ms':>10} {'M evals/s':>11} {'(CPU)':>9} {'M nodes/s':>11} {'(CPU)':>9}")

    def report(name: str, seconds: tuple[float, float], n_traj: int, note: str = ""):
        (wall, cpu), work = seconds, F * n_traj * T
        rows.append((name, work / wall, work / cpu))
        print(f"{name:<36}{wall * 1e3:10.1f} {cpu * 1e3:10.1f} {work / wall / 1e6:11.3f} {work / cpu / 1e6:9.3f} "
              f"{nodes * n_traj * T / wall / 1e6:11.3f} {nodes * n_traj * T / cpu / 1e6:9.3f}  {note}")

    engines = ["native", "torch"] if native.library() is not None else ["torch"]
    cases = {}
    for engine in engines:
        cases |= {f"stldec {engine} textbook at='all'": lambda e=engine: robustness(fs, x, convention="textbook",
                                                                                  at="all", engine=e),
                  f"stldec {engine} textbook at='start'": lambda e=engine: robustness(fs, x, convention="textbook",
                                                                                    engine=e),
                  f"stldec {engine} reference at='start'": lambda e=engine: robustness(fs, x, engine=e)}
    cases["BASELINE naive one-at-a-time"] = lambda: torch.stack([naive(f, x) for f in fs])
    if args.against:
        old = engine_at(args.against)
        cases[f"stldec@{args.against} textbook at='all'"] = lambda: old(fs, x, convention="textbook", at="all")
    for fn in cases.values():  # warm up (plans are compiled once and cached)
        fn()
    res = timed(cases, args.repeat)
    ours = res[f"stldec {engines[0]} textbook at='all'"][1]
    for name, (t, out) in res.items():
        other = "all" in name and "textbook" in name and out is not ours
        report(name, t, N, f"max|ours-this| {(ours - out).nan_to_num().abs().max():.2g}" if other else "")
    from stldec.stl.semantics import compile_plan

    for engine in engines:
        compile_plan.cache_clear()
        t0 = time.perf_counter()
        compile_plan(tuple(fs), T, "textbook", "cpu", "all", engine)
        print(f"{f'  ({engine} plan compilation, once)':<36}{(time.perf_counter() - t0) * 1e3:10.1f}")
    if args.rtamt:
        xs = x[: args.rtamt].double()
        t, ref = timed({"rtamt": lambda: rtamt_robustness(fs, xs)}, 1)["rtamt"]
        ours64 = robustness(fs, xs, convention="textbook", at="all", engine=engines[0])
        report(f"rtamt 0.4.10 ({args.rtamt} traj, extrapolated)", t, args.rtamt,
               f"max|ours-rtamt| {(ours64 - ref).nan_to_num().abs().max():.2g}")
    if args.stlcg:
        try:
            xs = x[: args.stlcg]
            t, _ = timed({"stlcg": lambda: run_stlcg(fs, xs)}, 1)["stlcg"]
            report(f"stlcg++ 0.0.2 vmap ({args.stlcg} traj, extrap.)", t, args.stlcg, "(own conventions)")
        except ImportError:
            print("stlcg++ not installed: pip install stlcgpp==0.0.2 torch==2.13.0")
    for i, kind in ((1, "wall"), (2, "CPU")):
        print(f"speed-up of {rows[0][0]} ({kind} time): "
              + ", ".join(f"vs {r[0].split(' (')[0]} {rows[0][i] / r[i]:,.1f}x" for r in rows[1:]))


if __name__ == "__main__":
    main()
