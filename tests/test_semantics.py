"""Robustness semantics: textbook == rtamt, reference == a literal transcription of the published procedure,
hand-computed cases, and the API contract (shapes, NaN domain, dtype, chunking, batching, errors)."""

import math
import random

import pytest
import torch

from stldec.stl import Always, And, Atom, Eventually, Interval, Not, Or, Until, native, parse, semantics
from stldec.stl.rtamt_oracle import rtamt_robustness
from stldec.stl.semantics import compile_plan, release_workspace, robustness, satisfaction

INF = math.inf


@pytest.fixture(params=["native", "torch"])
def engine(request):
    """Both engines: the fused CPU kernel (native.py) and the torch plan (also the GPU one)."""
    if request.param == "native" and native.library() is None:
        pytest.skip("no C++ compiler here: the fused kernel is not built")
    return request.param


def random_formula(rng: random.Random, depth: int, n_vars: int = 2, max_t: int = 6):
    """Small recursive sampler: every operator, bounded / [a,inf) / unbounded intervals, nested temporal ops."""
    if depth <= 1 or rng.random() < 0.2:
        return Atom(rng.randrange(n_vars), round(rng.uniform(-1.5, 1.5), 4), rng.random() < 0.5)
    sub = lambda: random_formula(rng, depth - 1, n_vars, max_t)  # noqa: E731
    kind = rng.choice(["not", "and", "or", "G", "F", "U", "U"])
    if kind == "not":
        return Not(sub())
    if kind in ("and", "or"):
        return (And if kind == "and" else Or)(sub(), sub())
    r = rng.random()
    a = rng.randrange(max_t)
    interval = None if r < 0.25 else Interval(a, None) if r < 0.45 else Interval(a, a + rng.randrange(max_t))
    if kind == "U":
        return Until(sub(), sub(), interval)
    return (Always if kind == "G" else Eventually)(sub(), interval)


# ---------------------------------------------------------------------------------------------------------------
# textbook == rtamt


def test_textbook_matches_rtamt(engine):
    pytest.importorskip("rtamt")
    rng = random.Random(0)
    pairs = 0
    for i in range(130):
        T = rng.randrange(12, 22)
        f = random_formula(rng, rng.randrange(2, 6))
        x = torch.randn(4, 2, T, generator=torch.Generator().manual_seed(i), dtype=torch.float64).cumsum(-1) * 0.5
        ours = robustness(f, x, convention="textbook", at="all", engine=engine)[0]  # (N, T)
        wanted = rtamt_robustness([f], x)[0]
        for n, want in enumerate(wanted):
            assert torch.equal(torch.isinf(ours[n]), torch.isinf(want)), (str(f), ours[n], want)
            assert torch.allclose(ours[n], want, rtol=0, atol=1e-12), (str(f), ours[n], want)
            pairs += 1
    assert pairs >= 500


def test_textbook_empty_windows_are_infinite(engine):
    x = torch.zeros(1, 1, 5)
    r = robustness(["always[3,4] ( x_0 >= -1 )", "eventually[3,4] ( x_0 >= -1 )", "( x_0 >= 0 until[3,4] x_0 >= 0 )"],
                   x, convention="textbook", at="all", engine=engine)[:, 0]
    assert torch.equal(r[0], torch.tensor([1, 1, INF, INF, INF]))
    assert torch.equal(r[1], torch.tensor([1, 1, -INF, -INF, -INF]))
    assert torch.equal(r[2], torch.tensor([0, 0, -INF, -INF, -INF]))


# ---------------------------------------------------------------------------------------------------------------
# reference == literal transcription of the published procedure (children of timed operators see x[a:])


def brute_reference(f, x: list[list[float]]) -> list[float]:
    match f:
        case Atom():
            return [f.threshold - v if f.lte else v - f.threshold for v in x[f.var]]
        case Not():
            return [-v for v in brute_reference(f.child, x)]
        case And() | Or():
            l, r = brute_reference(f.left, x), brute_reference(f.right, x)
            op = min if isinstance(f, And) else max
            return [op(p, q) for p, q in zip(l, r)]
        case Always() | Eventually():
            op = min if isinstance(f, Always) else max
            a, b = (0, None) if f.interval is None else (f.interval.start, f.interval.end)
            v = brute_reference(f.child, [row[a:] for row in x])
            if b is None:
                return [op(v[t:]) for t in range(len(v))]
            return [op(v[t : t + b - a + 1]) for t in range(len(v) - (b - a))]
        case Until():
            if f.interval is None:
                l, r = brute_reference(f.left, x), brute_reference(f.right, x)
                n = min(len(l), len(r))
                return [max(min(r[s], min(l[t : s + 1])) for s in range(t, n)) for t in range(n)]
            a = f.interval.start
            g = brute_reference(Always(f.left, Interval(0, a)), x)
            h = brute_reference(Eventually(f.right, f.interval), x)
            u = brute_reference(Eventually(Until(f.left, f.right), Interval(a, None)), x)
            return [min(p, q, s) for p, q, s in zip(g, h, u)]
    raise TypeError(f)


def test_reference_matches_brute_force(engine):
    rng = random.Random(1)
    checked = 0
    while checked < 150:
        T = rng.randrange(10, 24)
        f = random_formula(rng, rng.randrange(2, 6))
        if f.time_horizon >= T:
            continue
        x = torch.randn(3, 2, T, generator=torch.Generator().manual_seed(checked), dtype=torch.float64).cumsum(-1)
        ours = robustness(f, x, at="all", engine=engine)[0]
        for n in range(x.shape[0]):
            want = brute_reference(f, x[n].tolist())
            assert 0 < len(want) <= T - 0
            assert not ours[n, : len(want)].isnan().any() and ours[n, len(want) :].isnan().all(), (str(f), len(want))
            assert torch.allclose(ours[n, : len(want)], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
        checked += 1


X_HAND = torch.tensor([[[3.0, -1, 4, 1, -5, 9, 2, 6], [0, 2, -2, 1, 3, -1, 0, 1]]])  # (1, 2, 8)
NAN = math.nan


@pytest.mark.parametrize(
    "text, want",
    [
        ("x_0 >= 1", [2, -2, 3, 0, -6, 8, 1, 5]),
        ("x_0 <= 1", [-2, 2, -3, 0, 6, -8, -1, -5]),
        ("not ( x_1 >= 0 )", [0, -2, 2, -1, -3, 1, 0, -1]),
        ("( x_0 >= 1 and x_1 >= 0 )", [0, -2, -2, 0, -6, -1, 0, 1]),
        ("( x_0 >= 1 or x_1 >= 0 )", [2, 2, 3, 1, 3, 8, 1, 5]),
        ("eventually[1,3] ( x_0 >= 1 )", [3, 3, 8, 8, 8, NAN, NAN, NAN]),
        ("always[1,3] ( x_0 >= 1 )", [-2, -6, -6, -6, 1, NAN, NAN, NAN]),
        ("always[2,inf] ( x_0 >= 1 )", [-6, -6, -6, 1, 1, 5, NAN, NAN]),
        ("eventually ( x_0 >= 1 )", [8, 8, 8, 8, 8, 8, 5, 5]),
        ("( x_0 >= 1 until x_1 >= 0 )", [0, -2, 0, 0, -6, 1, 1, 1]),
        ("( x_0 >= 1 until[1,3] x_1 >= 0 )", [-2, -2, 0, -6, -6, NAN, NAN, NAN]),
        ("( x_0 >= 1 until[1,inf] x_1 >= 0 )", [-2, -2, 0, -6, -6, 1, 1, NAN]),
        ("always[0,2] ( eventually[1,inf] ( x_0 >= 1 ) )", [8, 8, 8, 5, 5, NAN, NAN, NAN]),
    ],
)
def test_reference_hand_computed(text, want, engine):
    got = robustness(parse(text, dialect="textbook"), X_HAND, at="all", engine=engine)[0, 0]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-6, equal_nan=True), got


# ---------------------------------------------------------------------------------------------------------------
# API contract


def walks(n: int, n_vars: int = 3, T: int = 30, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, n_vars, T, generator=torch.Generator().manual_seed(seed), dtype=dtype).cumsum(-1) * 0.3


FORMULAE = ["eventually[0,5] ( x_0 >= 0.5 )", "( x_1 <= 0.2 until[2,6] x_2 >= 0.1 )", "always ( x_1 >= -1 )",
            "not ( ( x_0 <= 0.2 until x_1 >= 0.1 ) )", "( always[1,inf] ( x_2 >= 0 ) or eventually[3,9] ( x_0 <= 0 ) )"]


@pytest.mark.parametrize("convention", ["reference", "textbook"])
def test_shapes_at_all_and_satisfaction(convention):
    x = walks(7)
    start = robustness(FORMULAE, x, convention=convention)
    full = robustness(FORMULAE, x, convention=convention, at="all")
    assert start.shape == (5, 7) and full.shape == (5, 7, 30) and start.dtype == torch.float32
    assert torch.equal(full[..., 0], start)
    sat = satisfaction(FORMULAE, x, convention=convention, at="all")
    assert sat.dtype == torch.bool and torch.equal(sat, full > 0)  # 0 and NaN are "not satisfied"
    if convention == "reference":
        horizons = torch.tensor([4, 5, 0, 0, 8])  # [a,B] in the reference dialect is offsets a..B-1
        assert torch.equal(full.isnan().sum(-1), horizons.view(-1, 1).expand(5, 7))


def test_str_and_formula_inputs_agree():
    x = walks(4)
    f = parse(FORMULAE[1])
    assert torch.equal(robustness(FORMULAE[1], x), robustness(f, x))
    assert torch.equal(robustness([f], x), robustness(FORMULAE[1:2], x))


def test_dtype_and_device():
    x = walks(4, dtype=torch.float64)
    r = robustness(FORMULAE, x)
    assert r.dtype == torch.float64 and r.device == x.device
    assert robustness(FORMULAE, x.half()).dtype == torch.float32
    assert torch.allclose(robustness(FORMULAE, x.float()), r.float(), rtol=0, atol=1e-5)


def test_horizon_error_names_formula_horizon_and_T():
    with pytest.raises(ValueError, match=r"eventually\[0,31\].*horizon 30.*T=30"):
        robustness("eventually[0,31] ( x_0 >= 0 )", walks(2))
    robustness("eventually[0,31] ( x_0 >= 0 )", walks(2), convention="textbook")  # textbook: defined (±inf)


def test_bad_arguments():
    with pytest.raises(ValueError, match="convention"):
        robustness(FORMULAE, walks(2), convention="strict")
    with pytest.raises(ValueError, match="at must be"):
        robustness(FORMULAE, walks(2), at="end")
    with pytest.raises(ValueError, match="variables"):
        robustness("x_5 >= 0", walks(2))
    with pytest.raises(ValueError, match="shape"):
        robustness(FORMULAE, torch.zeros(3, 30))
    with pytest.raises(ValueError, match="no sample"):
        robustness(FORMULAE, torch.zeros(3, 3, 0), convention="textbook")


@pytest.mark.parametrize("convention", ["reference", "textbook"])
def test_chunked_and_batched_equal_unchunked_and_one_by_one(convention, monkeypatch):
    rng = random.Random(2)
    fs = [f for f in (random_formula(rng, 5, n_vars=3) for _ in range(60)) if f.time_horizon < 30]
    fs += fs[:5]  # duplicates share nodes
    x = walks(37)
    whole = robustness(fs, x, convention=convention, at="all")
    same = lambda a, b: torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)  # noqa: E731  (exactly equal)
    assert same(robustness(fs, x, convention=convention, at="all", chunk_size=5), whole)
    assert same(robustness(fs, x, convention=convention, chunk_size=8), whole[..., 0])
    for i, f in enumerate(fs):
        assert same(robustness(f, x, convention=convention, at="all")[0], whole[i]), str(f)
    monkeypatch.setattr(semantics, "ROW_OPS", 1)  # force the per-node path meant for long rows on these short ones
    assert same(robustness(fs, x, convention=convention, at="all", engine="torch"), whole)
    assert same(robustness(fs, x, convention=convention, engine="torch"), whole[..., 0])


def test_satisfaction_of_zero_robustness_is_false():
    x = torch.ones(2, 1, 5)
    assert robustness("x_0 >= 1", x).eq(0).all() and not satisfaction("x_0 >= 1", x).any()


def test_groups_larger_than_one_op_are_split():
    fs = [Eventually(Atom(i % 3, i / 100, i % 2 == 0), Interval(i % 5, i % 5 + 3)) for i in range(300)]
    x = walks(6)
    r = robustness(fs, x, at="all")
    for i in range(0, 300, 37):
        assert torch.allclose(r[i], robustness(fs[i], x, at="all")[0], rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = walks(50)
    for convention in ("reference", "textbook"):
        cpu = robustness(FORMULAE, x, convention=convention, at="all")
        gpu = robustness(FORMULAE, x.cuda(), convention=convention, at="all")
        assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("convention", ["reference", "textbook"])
def test_start_reads_only_needed_samples(convention):
    """at="start" computes each node on the samples its readers need: poisoning the workspace with NaN first must
    not change any value (nothing unneeded is read)."""
    rng = random.Random(3)
    for T in (12, 25, 40):
        fs = tuple(f for f in (random_formula(rng, 6, n_vars=3, max_t=8) for _ in range(40)) if f.time_horizon < T)
        x = walks(9, T=T, seed=T)
        plan = compile_plan(fs, T, convention, "cpu", "start", "torch")
        release_workspace()
        plan(x)
        semantics._LOCAL.buffers[x.device, x.dtype].fill_(math.nan)
        want = robustness(fs, x, convention=convention, at="all", engine="torch")[..., 0]
        assert torch.allclose(plan(x), want, rtol=0, atol=0, equal_nan=True)
        assert not want.isnan().any()


def test_empty_batches_and_inputs_requiring_grad():
    assert robustness([], walks(3)).shape == (0, 3)
    assert robustness(FORMULAE, walks(0), at="all").shape == (5, 0, 30)
    x = walks(3).requires_grad_()
    assert torch.equal(robustness(FORMULAE, x), robustness(FORMULAE, x.detach()))


# ---------------------------------------------------------------------------------------------------------------
# the fused CPU kernel == the torch engine, bitwise


@pytest.mark.parametrize("threads", [1, 2])
def test_native_equals_torch_bitwise(threads):
    """Windows narrower and wider than the trace, starts past its end, both untils, both conventions, both dtypes,
    at="start" and "all", N not a multiple of the 16 lanes, one and two threads."""
    if native.library() is None:
        pytest.skip("no C++ compiler here: the fused kernel is not built")
    same = lambda a, b: a.dtype == b.dtype and torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5))  # noqa: E731
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed, (T, max_t, N) in enumerate([(12, 4, 37), (30, 8, 16), (40, 20, 1), (7, 3, 33), (60, 70, 50)]):
            rng = random.Random(seed)
            fs = [random_formula(rng, 6, n_vars=3, max_t=max_t) for _ in range(120)]
            for convention in ("textbook", "reference"):
                gs = fs if convention == "textbook" else [f for f in fs if f.time_horizon < T]
                for dtype in (torch.float32, torch.float64):
                    x = walks(N, T=T, seed=seed, dtype=dtype)
                    for at in ("start", "all"):
                        want = robustness(gs, x, convention=convention, at=at, engine="torch")
                        got = robustness(gs, x, convention=convention, at=at, engine="native")
                        assert same(got, want), (seed, convention, dtype, at)
    finally:
        torch.set_num_threads(old)


def test_nan_input_runs_on_torch_engine():
    x = walks(20)
    x[3, 1, 7] = math.nan
    want = robustness(FORMULAE, x, at="all", engine="torch")
    assert want[:, 3].isnan().any()
    assert torch.equal(robustness(FORMULAE, x, at="all").nan_to_num(0.5), want.nan_to_num(0.5))
    if native.library() is not None:
        with pytest.raises(native.NaNInputError, match="NaN"):
            robustness(FORMULAE, x, engine="native")


def test_without_a_compiler_the_torch_engine_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("STLDEC_CACHE", str(tmp_path))
    native.library.cache_clear()
    compile_plan.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert native.library() is None
        assert isinstance(compile_plan(tuple(parse(f) for f in FORMULAE), 30), semantics.RobustnessPlan)
        assert robustness(FORMULAE, walks(3)).shape == (5, 3)
        with pytest.raises(RuntimeError, match="engine='torch'"):
            robustness(FORMULAE, walks(3), engine="native")
    finally:
        native.library.cache_clear()
        compile_plan.cache_clear()


@pytest.mark.slow
def test_a_truncated_cached_library_is_rebuilt_not_loaded(tmp_path):
    """A cut-off fused-*.so (a full disk, a partial copy of the cache) would kill every process loading it with
    SIGBUS: its recorded size and sha256 no longer match, so it is rebuilt. Run in subprocesses: a SIGBUS there
    cannot kill pytest, and this process never maps the file that is truncated."""
    import os
    import subprocess
    import sys

    if native.library() is None:
        pytest.skip("no C++ compiler here: the fused kernel is not built")
    code = (f"import torch; from stldec.stl import robustness; x = torch.randn(40, 3, 30); f = {FORMULAE!r}; "
            "assert torch.equal(robustness(f, x, engine='native'), robustness(f, x, engine='torch'))")

    def run():
        return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, STLDEC_CACHE=str(tmp_path)),
                              capture_output=True, text=True, timeout=300)

    assert run().returncode == 0  # builds the library into the empty cache
    (lib,) = tmp_path.glob("fused-*.so")
    size = lib.stat().st_size
    os.truncate(lib, size // 2)
    again = run()
    assert again.returncode == 0, (again.returncode, again.stderr[-2000:])  # -7 (SIGBUS) when loaded unchecked
    assert lib.stat().st_size == size and sorted(p.name for p in tmp_path.iterdir()) == [lib.stem + ".json", lib.name]


def test_engine_errors():
    with pytest.raises(ValueError, match="unknown engine"):
        robustness(FORMULAE, walks(2), engine="fast")
    if native.library() is not None:  # a plan called directly checks what the kernel would otherwise read past
        plan = compile_plan(tuple(parse(f) for f in FORMULAE), 30, engine="native")
        for bad in (walks(2, T=20), walks(2, n_vars=2), walks(2).half()):
            with pytest.raises(ValueError, match=r"\(N, >= 3, 30\)"):
                plan(bad)
    with pytest.raises(ValueError, match="CPU only"):
        compile_plan((parse(FORMULAE[0]),), 30, device="cuda", engine="native")
