"""Decode-time search: templates, robustness gradients in the thresholds, edit moves, refinement, decode(refine)."""

import pytest
import torch

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.decoding import decode
from stldec.refine import embedding_distance, refine, search
from stldec.stl import BaseMeasure, FormulaGenerator, StlKernelEncoder, parse, robustness
from stldec.stl.params import Template, active_atoms, fit_thresholds, neighbours, threshold_robustness

T = 30


@pytest.fixture(scope="module")
def encoder():
    return StlKernelEncoder(FormulaGenerator("random", seed=1, n_points=T).sample(64), n_trajectories=1000,
                            n_points=T, seed=3)


def distance(encoder, formulae, targets):
    return embedding_distance(encoder.encode(formulae), targets)


def test_template_splits_and_rebuilds_without_mutation():
    f = parse("( always[0,10] ( ( x_0 >= 0.53 and not ( x_2 <= -1.1 ) ) ) until[2,inf] eventually ( x_1 <= 3 ) )")
    t = Template(f)
    assert t.thresholds == [0.53, -1.1, 3.0] and t.windows == [(0, 9), None, (2, None)]
    assert t.build() == f and Template(str(f)).key == t.key
    g = t.build([1, 2, 3], [(1, 4), None, (5, None)])
    assert str(g) == "( always[1,5] ( ( x_0 >= 1.0 and not ( x_2 <= 2.0 ) ) ) until[5,inf] eventually ( x_1 <= 3.0 ) )"
    assert Template(g).key == t.key and t.build() == f  # f and the template are untouched
    with pytest.raises(ValueError, match="3 thresholds and 3 windows, got 2 and 3"):
        t.build([1, 2])
    with pytest.raises(ValueError, match="finite"):
        t.build([1, float("nan"), 3])
    with pytest.raises(ValueError, match="bounded and unbounded"):
        t.build(None, [(0, 9), (0, 3), (2, None)])


def test_active_atoms_and_gradients_match_finite_differences():
    x = BaseMeasure().sample(500, 3, T, seed=7).double()
    formulae = FormulaGenerator("balanced", seed=5, n_points=T).sample(40)
    rho, k, sign = active_atoms(formulae, x)
    assert torch.equal(rho, robustness(formulae, x))
    assert (k >= 0).float().mean() > 0.99 and set(sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    templates = [Template(f) for f in formulae]
    theta = torch.tensor([c for t in templates for c in t.thresholds], dtype=torch.float64, requires_grad=True)
    w = torch.randn(len(formulae), 500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (threshold_robustness(templates, theta, x) * w).sum().backward()
    h = 1e-6  # far below the spacing of the kinks: central differences are exact except at a kink
    for i in range(len(theta)):
        up, down = theta.detach().clone(), theta.detach().clone()
        up[i] += h
        down[i] -= h
        fd = ((threshold_robustness(templates, up, x) - threshold_robustness(templates, down, x)) * w).sum() / (2 * h)
        assert abs(theta.grad[i] - fd) <= 2 * w.abs().max() + 1e-6 * abs(fd), i  # at most ~one kink's worth
    with pytest.raises(ValueError, match="thresholds together"):
        threshold_robustness(templates, theta.detach()[:3], x)


def test_neighbours_are_one_edit_away_and_fit():
    f = parse("always[0,10] ( ( x_0 >= 0.53 and not ( x_2 <= -1.1 ) ) )")
    ns = neighbours(f, n_vars=3, n_points=12)
    assert len(ns) == len(set(ns)) and f not in ns and all(g.time_horizon < 12 for g in ns)
    texts = {str(g) for g in ns}
    assert {"eventually[0,10] ( ( x_0 >= 0.53 and not ( x_2 <= -1.1 ) ) )",
            "always[0,10] ( ( x_0 >= 0.53 or not ( x_2 <= -1.1 ) ) )",
            "always[0,10] ( ( x_0 >= 0.53 and x_2 >= -1.1 ) )",  # not of an atom -> the flipped atom
            "always[1,11] ( ( x_0 >= 0.53 and not ( x_2 <= -1.1 ) ) )",
            "always[0,10] ( ( x_1 >= 0.53 and not ( x_2 <= -1.1 ) ) )"} <= texts
    assert "always[0,12] ( ( x_0 >= 0.53 and not ( x_2 <= -1.1 ) ) )" not in texts  # horizon 11 >= n_points - 1


@pytest.mark.parametrize("gold", ["always[0,10] ( x_0 >= 0.5 )",
                                  "( eventually[0,5] ( x_1 <= -0.3 ) and always[2,8] ( x_0 >= 0.2 ) )"])
def test_refinement_recovers_thresholds_from_the_template(encoder, gold):
    gold = parse(gold)
    target = encoder.encode([gold])
    start = Template(gold).build([c + 0.4 for c in Template(gold).thresholds])
    (found, d), = refine([[start]], target, encoder, rounds=6, steps=40, lr=0.05, top=1)
    assert d <= distance(encoder, [start], target).item()
    fitted, _ = fit_thresholds([Template(start)], lambda rho: embedding_distance(encoder.embed_robustness(rho),
                                                                                  target), encoder.trajectories,
                               steps=200, lr=0.02)
    assert max(abs(a - b) for a, b in zip(Template(fitted[0]).thresholds, Template(gold).thresholds)) < 0.05
    assert d < 1e-3


def test_refine_is_never_worse_than_its_start_and_deterministic(encoder):
    gen = FormulaGenerator("balanced", seed=9, n_points=T)
    targets = encoder.encode(gen.sample(6))
    pool = gen.sample(18)
    rows = [pool[3 * i : 3 * i + 3] + [None] for i in range(6)]
    found = refine(rows, targets, encoder, rounds=2, steps=5)
    assert found == refine(rows, targets, encoder, rounds=2, steps=5)
    for (f, d), row, target in zip(found, rows, targets):
        start = distance(encoder, row[:3], target.expand(3, -1))
        assert d <= start.min().item() + 1e-6
        assert abs(distance(encoder, [f], target[None]).item() - d) < 1e-5  # the reported distance is f's
    none = refine(rows, targets, encoder, rounds=0)  # re-ranking only: the closest candidate
    for (_, d), row, target in zip(none, rows, targets):
        assert d == pytest.approx(distance(encoder, row[:3], target.expand(3, -1)).min().item(), abs=1e-6)


def test_refine_errors(encoder):
    targets = encoder.encode(["eventually[0,3] ( x_0 >= 0 )"])
    good = [[parse("always[0,3] ( x_1 <= 1 )")]]
    for budget in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="budget_s must be > 0"):
            refine(good, targets, encoder, budget_s=budget)
    with pytest.raises(ValueError, match=r"no candidate the encoder can embed .* rows \[0\]"):
        refine([[]], targets, encoder)
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        refine([[None, parse(f"always[0,{T + 5}] ( x_0 >= 0 )")]], targets, encoder)
    with pytest.raises(ValueError, match="2 candidate lists for 1 target"):
        refine(good * 2, targets, encoder)
    with pytest.raises(ValueError, match=r"shape \(B, 64\)"):
        refine(good, torch.zeros(1, 5), encoder)
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        refine(good, targets, encoder, rounds=-1)


def test_a_budget_bounds_the_time(encoder):
    import time

    gen = FormulaGenerator("balanced", seed=11, n_points=T)
    targets, rows = encoder.encode(gen.sample(4)), [[f] for f in gen.sample(4)]
    start = time.perf_counter()
    refine(rows, targets, encoder, rounds=10_000, steps=5, budget_s=0.2)
    assert time.perf_counter() - start < 4 * 0.2 * 4  # the phase that crosses the deadline finishes, then it stops


def test_search_only_baseline(encoder):
    gold = FormulaGenerator("balanced", seed=12, n_points=T).sample(4)
    targets = encoder.encode(gold)
    found = search(targets, encoder, k=4, library_size=300, rounds=1, steps=5)
    assert len(found) == 4 and all(f.time_horizon < T for f, _ in found)
    assert search(targets, encoder, k=4, library_size=300, rounds=1, steps=5) == found


def test_decode_refine_is_never_farther_than_rerank(encoder):
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", embedding_dim=64, max_position_embeddings=48)).eval()
    tok = StlTokenizer()
    targets = encoder.encode(FormulaGenerator("balanced", seed=13, n_points=T).sample(4))
    common = dict(encoder=encoder, constrained=True, n_vars=3, max_horizon=T - 1, k=3, batch_size=2)
    reranked = decode(model, tok, targets, strategy="rerank", **common)
    refined = decode(model, tok, targets, strategy="refine", rounds=1, steps=5, library=0, **common)
    assert all(parse(t).to_string() == t for t in refined)
    assert (distance(encoder, refined, targets) <= distance(encoder, reranked, targets) + 1e-6).all()
    with pytest.raises(ValueError, match="pass the kernel encoder"):
        decode(model, tok, targets, strategy="refine")
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        decode(model, tok, targets, strategy="refine", encoder=encoder, budget_s=0)


def test_cli_decode_and_evaluate_refine(encoder, tmp_path, monkeypatch):
    import pandas as pd

    from stldec import cli, decoding, refine

    monkeypatch.setattr(refine, "LIBRARY_SIZE", 300)
    assert cli.STRATEGIES == list(decoding.STRATEGIES)
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", embedding_dim=64, max_position_embeddings=48))
    model.save_pretrained(tmp_path / "m")
    StlTokenizer().save_pretrained(tmp_path / "m")
    encoder.save_pretrained(tmp_path / "m" / "encoder")
    gold = [str(f) for f in FormulaGenerator("balanced", seed=14, n_points=T).sample(3)]
    pd.DataFrame({"formula": gold}).to_csv(tmp_path / "in.csv", index=False)
    cli.main(["decode", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.csv"), "--output",
              str(tmp_path / "out.csv"), "--strategy", "refine", "--constrained", "--k", "2", "--rounds", "1",
              "--library", "4", "--budget_s", "5"])
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["formula"].tolist() == gold and all(parse(t).time_horizon < T for t in out["decoded"])
    args = ["evaluate", "--model", str(tmp_path / "m"), "--test", str(tmp_path / "in.csv"), "--strategy", "refine",
            "--constrained", "--k", "0", "--rounds", "1"]
    with pytest.raises(SystemExit, match="metric_seed"):  # the encoder's seed 3 is the metrics' seed here
        cli.main(args + ["--metric_seed", "3"])
    cli.main(args)
