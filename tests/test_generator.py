"""FormulaGenerator: reproducibility, exact depth control, presets' shares, the interval law and its conditioning."""

import collections
import json
import time

import pytest

from stldec.stl import Always, Atom, Eventually, FormulaGenerator, Not, Until, parse
from stldec.stl.generator import MAX_DEPTH, OPERATORS


def leaf_levels(f, level=0):
    """Number of operators above each atom."""
    if isinstance(f, Atom):
        return [level]
    return [x for c in f.children for x in leaf_levels(c, level + 1)]


def temporal_kinds(formulae):
    kinds = collections.Counter()
    for f in formulae:
        for node in f.walk():
            if isinstance(node, Always | Eventually | Until):
                iv = node.interval
                kinds["unbounded" if iv is None else "right" if iv.end is None else "bounded"] += 1
    return kinds


def test_deterministic_and_replayable_from_config():
    a = FormulaGenerator("balanced", seed=3).sample(200)
    assert a == FormulaGenerator("balanced", seed=3).sample(200)
    assert a != FormulaGenerator("balanced", seed=4).sample(200)
    g = FormulaGenerator("easy", seed=5, n_vars=4, n_points=60, leaf_prob=0.5)
    config = json.loads(json.dumps(g.config))  # JSON turns depth keys into strings
    assert FormulaGenerator.from_config(config).sample(100) == g.sample(100)
    assert FormulaGenerator.from_config({"preset": "hard", "seed": 1}).config == FormulaGenerator("hard", seed=1).config
    stream = iter(FormulaGenerator("random", seed=2))
    assert [next(stream) for _ in range(50)] == FormulaGenerator("random", seed=2).sample(50)


@pytest.mark.parametrize("depth", [2, 3, 5, 7, 9])
def test_sample_depth_gives_complete_trees(depth):
    g = FormulaGenerator("random", seed=depth)
    for _ in range(30):
        f = g.sample_depth(depth)
        assert f.depth == depth and set(leaf_levels(f)) == {depth - 1}  # every path has depth - 1 operators


@pytest.mark.parametrize(("preset", "n", "expected"), [
    ("balanced", 600, {d: 100 for d in range(2, 8)}),
    ("easy", 1000, {2: 300, 3: 250, 4: 180, 5: 120, 6: 90, 7: 60}),
    ("hard", 1000, {2: 60, 3: 90, 4: 120, 5: 180, 6: 250, 7: 300}),
])
def test_preset_shares_are_exact_and_depths_complete(preset, n, expected):
    formulae = FormulaGenerator(preset, seed=0).sample(n)
    assert collections.Counter(f.depth for f in formulae) == expected
    assert all(set(leaf_levels(f)) == {f.depth - 1} for f in formulae)
    assert [f.depth for f in formulae] != sorted(f.depth for f in formulae)  # shuffled, not grouped


def test_apportionment_and_stream_shares():
    counts = collections.Counter(f.depth for f in FormulaGenerator("easy", seed=0).sample(7))
    assert sum(counts.values()) == 7 and all(abs(counts[d] - 7 * s / 100) < 1 for d, s in
                                             {2: 30, 3: 25, 4: 18, 5: 12, 6: 9, 7: 6}.items())
    stream = iter(FormulaGenerator("hard", seed=0))
    counts = collections.Counter(next(stream).depth for _ in range(3000))
    assert abs(counts[7] / 3000 - 0.30) < 0.03 and abs(counts[2] / 3000 - 0.06) < 0.015


def test_random_preset_free_branching():
    formulae = FormulaGenerator("random", seed=0).sample(2000)
    depths = collections.Counter(f.depth for f in formulae)
    assert set(depths) == set(range(2, 8))  # root never an atom, leaves forced at depth 7
    assert any(len(set(leaf_levels(f))) > 1 for f in formulae)  # not complete trees
    assert 4.5 < sum(f.depth for f in formulae) / 2000 < 5.5  # published "old/random" set: 4.9


def test_n_vars_honoured_at_every_depth():
    by_depth = collections.defaultdict(set)
    for f in FormulaGenerator("balanced", seed=0, n_vars=5).sample(1200):
        by_depth[f.depth] |= f.variables
    assert all(v == set(range(5)) for v in by_depth.values()) and set(by_depth) == set(range(2, 8))


@pytest.mark.parametrize("n_points", [1, 12, 40, 100])
def test_horizon_fits_the_trajectories(n_points):
    formulae = FormulaGenerator("hard", seed=1, n_points=n_points).sample(300)
    assert max(f.time_horizon for f in formulae) <= n_points - 1


def test_thresholds_rounded_and_round_trip():
    formulae = FormulaGenerator("hard", seed=2, n_vars=12).sample(1500)
    for f in formulae:
        assert parse(f.to_string()) == f
        assert parse(f.to_string(dialect="textbook"), dialect="textbook") == f
    atoms = [node for f in formulae for node in f.walk() if isinstance(node, Atom)]
    assert all(round(a.threshold, 4) == a.threshold for a in atoms)
    assert not any(f.to_string().count("-0.0 ") for f in formulae)


def test_interval_law_matches_reference():
    g = FormulaGenerator("balanced", seed=0, n_points=10_000)  # horizon never binds: the unconditioned law
    kinds = temporal_kinds(g.sample(3000))
    total = sum(kinds.values())
    assert abs(kinds["unbounded"] / total - 0.10) < 0.015 and abs(kinds["right"] / total - 0.18) < 0.015
    bounded = [n.interval for f in g.sample(2000) for n in f.walk() if getattr(n, "interval", None)]
    assert all(0 <= iv.start <= 34 and (iv.end is None or iv.start < iv.end <= 35) for iv in bounded)


def test_horizon_conditioning_is_exact():
    """For a fixed skeleton (complete until trees), our intervals == plain rejection sampling (a horizon that never
    binds, then filtered)."""
    knobs = dict(depth_shares={4: 1}, operator_probs={"until": 1}, time_bound_max_range=20)
    ours = FormulaGenerator(None, seed=0, n_points=40, **knobs).sample(2500)  # ~75 % of first draws do not fit
    free = FormulaGenerator(None, seed=1, n_points=10_000, **knobs).sample(10_000)
    rejected = [f for f in free if f.time_horizon <= 39]
    assert len(rejected) > 2000
    mean = lambda fs: sum(f.time_horizon for f in fs) / len(fs)  # noqa: E731
    assert abs(mean(ours) - mean(rejected)) < 0.6
    k1, k2 = temporal_kinds(ours), temporal_kinds(rejected)
    for kind in ("unbounded", "right", "bounded"):
        assert abs(k1[kind] / k1.total() - k2[kind] / k2.total()) < 0.02


def test_operator_mix_is_not_thinned_by_the_horizon():
    g = FormulaGenerator(None, seed=0, depth_shares={4: 1}, operator_probs={"not": 3, "until": 1}, n_points=15)
    ops = collections.Counter(type(n).__name__ for f in g.sample(2000) for n in f.walk() if not isinstance(n, Atom))
    assert set(ops) == {"Not", "Until"} and abs(ops["Not"] / ops.total() - 0.75) < 0.03


def test_extreme_settings_never_recurse_forever():
    g = FormulaGenerator("random", seed=0, leaf_prob=0.0, max_depth=9)  # maximal branching, forced leaves
    assert all(set(leaf_levels(f)) == {8} for f in g.sample(10))
    deep = FormulaGenerator(None, depth_shares={MAX_DEPTH: 1}, operator_probs={"not": 1, "eventually": 1}).sample(3)
    assert all(f.depth == MAX_DEPTH and parse(f.to_string()) == f for f in deep)
    wide = FormulaGenerator("random", seed=0, max_depth=40).sample(100)  # super-critical default, deep cap
    assert max(f.depth for f in wide) > 10 and all(f.time_horizon <= 99 for f in wide)


def test_unique_never_repeats_and_gives_up_cleanly():
    g = FormulaGenerator(None, unique=True, depth_shares={2: 1}, n_vars=1, operator_probs={"not": 1},
                         threshold_sd=0.0)  # only two formulae exist: not ( x_0 <= 0.0 ), not ( x_0 >= 0.0 )
    assert set(g.sample(2)) == {Not(Atom(0, 0.0, True)), Not(Atom(0, 0.0, False))}
    with pytest.raises(RuntimeError, match="exhausted"):
        g.sample(1)
    formulae = FormulaGenerator("balanced", seed=0, unique=True).sample(600)
    assert len(set(formulae)) == 600


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="preset"):
        FormulaGenerator("medium")
    with pytest.raises(ValueError, match="unknown generator option"):
        FormulaGenerator(leaf_probability=0.3)
    with pytest.raises(ValueError, match="depth_shares"):
        FormulaGenerator(depth_shares={1: 1.0})
    with pytest.raises(ValueError, match="operator_probs"):
        FormulaGenerator(operator_probs={"implies": 1.0})
    with pytest.raises(ValueError, match="cannot fit"):
        FormulaGenerator(n_points=3, unbounded_prob=0.0, right_unbounded_prob=0.0, operator_probs={"always": 1})
    with pytest.raises(ValueError, match="depth"):
        FormulaGenerator().sample_depth(1)
    assert set(OPERATORS) == set(FormulaGenerator().config["operator_probs"])


@pytest.mark.slow
def test_speed_10k_formulae():
    start = time.process_time()
    FormulaGenerator("balanced", seed=0).sample(10_000)
    assert time.process_time() - start < 10.0
