"""Requirement mining: the dataset loader and its errors, folds, time rescaling, the objective and classifier, a
miner that recovers a planted formula, determinism, the decoder's embedding search, and the `stldec mine` command."""

import json

import pytest
import torch

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.cli import main
from stldec.mining import (
    EmbeddingSearch,
    _Pool,
    base_candidates,
    cross_validate,
    fit_threshold,
    load_dataset,
    mine,
    relabel,
    rescale,
    separation,
    stratified_folds,
)
from stldec.stl import BaseMeasure, FormulaGenerator, StlKernelEncoder, parse, robustness

PLANTED = "eventually[0,10] ( x_0 >= 1 )"


def write_dataset(directory, x: torch.Tensor, labels, header: str = "# x1, x2", times=None):
    """The published layout: a header, one trajectory per line with the variables interleaved, one line of labels."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = x.transpose(1, 2).reshape(len(x), -1).tolist()  # (N, T * V): sample-major, variables interleaved
    (directory / "data.csv").write_text(header + "\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows))
    (directory / "labels.csv").write_text(",".join(str(int(v)) for v in labels))
    if times is not None:
        (directory / "times.csv").write_text(",".join(map(str, times)))
    return directory


def planted(n: int = 300, n_points: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Base-measure trajectories (n, 2, n_points) labelled +1 where `PLANTED` holds, else -1."""
    x = BaseMeasure().sample(n, n_vars=2, n_points=n_points, seed=seed)
    return x, torch.where(robustness(PLANTED, x)[0] > 0, 1, -1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    x, y = planted()
    assert 0.1 < (y > 0).float().mean() < 0.3  # both classes present; always -1 would score about 0.83
    return write_dataset(tmp_path_factory.mktemp("mining") / "planted", x, y, times=[0.5 * t for t in range(50)])


def test_load_dataset_round_trip(synthetic):
    x, y = planted()
    data = load_dataset(synthetic)
    assert data.name == "planted" and data.variables == ["x1", "x2"] and data.times[:2] == [0.0, 0.5]
    assert torch.allclose(data.x, x, atol=1e-6) and torch.equal(data.labels, y)


@pytest.mark.parametrize(("data", "labels", "match"), [
    ("x\n1,2,3\n1,2\n4,5,6", "1,-1,1", r"data\.csv: line 3 has 2 values, line 2 has 3 \(ragged"),
    ("x\n1,2\n3,oops", "1,-1", r"data\.csv: line 3, column 2: 'oops' is not a number"),
    ("x\n1,2\n3,nan", "1,-1", r"data\.csv: line 3, column 2: 'nan' is not a finite number"),
    ("a,b\n1,2,3\n4,5,6", "1,-1", r"data\.csv: line 2 has 3 values, not a multiple of the 2 variables"),
    ("x\n1,2\n3,4\n5,6", "1,-1", r"labels\.csv: line 1 has 2 labels but .*data\.csv has 3 trajectories \(lines 2-4\)"),
    ("x\n1,2\n3,4", "1,0", r"labels\.csv: line 1, column 2: label 0 is not \+1 or -1"),
])
def test_loader_errors_name_file_and_line(tmp_path, data, labels, match):
    (tmp_path / "data.csv").write_text(data)
    (tmp_path / "labels.csv").write_text(labels)
    with pytest.raises(ValueError, match=match):
        load_dataset(tmp_path)


def test_loader_missing_files_and_bad_times(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.csv not found"):
        load_dataset(tmp_path)
    write_dataset(tmp_path, torch.zeros(2, 1, 3), [1, -1], header="x", times=[0, 1])
    with pytest.raises(ValueError, match=r"times\.csv: line 1 has 2 time stamps but .* have 3 samples"):
        load_dataset(tmp_path)


def test_stratified_folds_partition_and_seed():
    labels = torch.tensor([1] * 13 + [-1] * 7)
    folds = stratified_folds(labels, 5, seed=3)
    tests = torch.cat([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(20))  # every trajectory is tested exactly once
    for train, test in folds:
        train, test = set(train.tolist()), set(test.tolist())
        assert train | test == set(range(20)) and not train & test
        assert sum(labels[i] > 0 for i in test) in (2, 3) and sum(labels[i] < 0 for i in test) in (1, 2)
    assert [te.tolist() for _, te in folds] == [te.tolist() for _, te in stratified_folds(labels, 5, seed=3)]
    assert [te.tolist() for _, te in folds] != [te.tolist() for _, te in stratified_folds(labels, 5, seed=4)]
    with pytest.raises(ValueError, match="only 7 trajectories labelled -1: fewer than the 10 folds"):
        stratified_folds(labels, 10, seed=0)


def test_rescale_maps_windows_and_fits_the_dataset():
    f = parse("always[10,50] ( eventually[0,inf] ( x_0 >= 0.5 ) until[3,49] x_1 <= 0 )")
    assert rescale(f, 100) == f
    assert str(rescale(f, 15)) == "always[1,7] ( ( eventually[0,inf] ( x_0 >= 0.5 ) until[0,7] x_1 <= 0.0 ) )"
    for g in FormulaGenerator("balanced", seed=0, n_vars=2).sample(300):
        for n_points in (15, 20, 61, 101):
            assert rescale(g, n_points).time_horizon < n_points
    assert str(relabel(parse("( x_0 >= 1 and x_1 <= 2 )"), [4, 2])) == "( x_4 >= 1.0 and x_2 <= 2.0 )"


def test_separation_and_threshold():
    labels = torch.tensor([1, 1, 1, -1, -1, -1])
    rho = torch.tensor([[1.0, 2.0, 3.0, -1.0, -2.0, -3.0], [-1.0, -2.0, -3.0, 1.0, 2.0, 3.0], [1.0] * 6])
    sep = separation(rho, labels)
    assert sep[0] > 0 and torch.isclose(sep[1], -sep[0]) and sep[2] == 0  # the sign tells the direction
    assert fit_threshold(rho[0], labels) == 0.0  # the middle of the widest perfect cut
    tau = fit_threshold(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([-1, 1, -1, 1]))
    assert ((torch.tensor([0.0, 1.0, 2.0, 3.0]) > tau) == torch.tensor([False, True, False, True])).sum() == 3
    assert fit_threshold(torch.tensor([5.0, 5.0]), torch.tensor([1, 1])) < 5.0  # all positive: below every value


def test_baseline_recovers_planted_formula(synthetic):
    data = load_dataset(synthetic)
    result = cross_validate(data, folds=3, seeds=[0], candidates=600)
    assert result["mean_test_accuracy"] >= 0.95, result["per_fold"]
    assert {0} == {r["seed"] for r in result["per_fold"]} and len(result["per_fold"]) == 3
    assert all(parse(r["formula"]).time_horizon < 50 for r in result["per_fold"])


def test_mine_is_deterministic_and_separation_is_non_negative():
    x, y = planted(n=120, n_points=30, seed=1)
    a, b = (mine(x, y, seed=5, candidates=200, rounds=2) for _ in range(2))
    assert a == b and a.separation >= 0
    assert torch.isclose(separation(robustness(a.formula, x), y)[0], torch.tensor(a.separation), atol=1e-4)


def test_mine_refuses_labels_of_one_class():
    x, _ = planted(n=20, n_points=20)
    with pytest.raises(ValueError, match=r"labels of both signs.*labels \[1\]"):
        mine(x, torch.ones(20, dtype=torch.int64))


@pytest.fixture(scope="module")
def decoder():
    encoder = StlKernelEncoder(FormulaGenerator("random", seed=1, n_points=30).sample(16), n_trajectories=100,
                               n_points=30)
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", max_position_embeddings=48,
                                                       encoder_fingerprint=encoder.fingerprint)).eval()
    return model, StlTokenizer(), encoder


def test_embedding_search_decodes_formulae_that_fit_the_data(decoder):
    model, tok, encoder = decoder
    x = BaseMeasure().sample(60, n_vars=5, n_points=12, seed=2)  # more variables than the encoder's 3
    y = torch.where(robustness("always ( x_4 <= 0.5 )", x)[0] > 0, 1, -1)
    search = EmbeddingSearch(model, tok, encoder, population=8, generations=2)
    runs = []
    for _ in range(2):
        pool = _Pool(x, y)
        base = base_candidates(100, 5, seed=0, n_points=encoder.n_points)
        pool.score([rescale(f, 12, encoder.n_points) for f in base])
        runs.append(search.propose(pool, base, seed=0))
        assert all(f in pool.seen and f.time_horizon < 12 and max(f.variables) < 5 for f in runs[-1])
    assert runs[0] == runs[1] and runs[0]  # seeded, and the decoder proposed something new
    m = mine(x, y, seed=0, candidates=100, rounds=1, search=search)
    assert m.decoded > 0 and m.best_decoded is not None and m.separation >= max(m.best_generated, m.best_decoded)


def test_cli_mine_baseline(synthetic, tmp_path, capsys):
    main(["mine", "--data", str(synthetic), "--folds", "2", "--seeds", "0", "--baseline", "--candidates", "300",
          "--out", str(tmp_path / "out")])
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"dataset", "folds", "seeds", "mean_test_accuracy", "per_fold", "best_formula", "wall_s"} <= set(r)
    assert r["dataset"] == "planted" and r["folds"] == 2 and r["seeds"] == [0] and r["search"] == "baseline"
    assert {"accuracy", "precision", "recall", "misclassification_rate"} <= set(r["per_fold"][0])
    assert (tmp_path / "out" / "mining.png").stat().st_size > 10_000
    assert "mean test accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="stldec mine: error: --folds must be >= 2, got 1"):
        main(["mine", "--data", str(synthetic), "--folds", "1", "--baseline", "--out", str(tmp_path / "o1")])
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "data.csv").write_text((synthetic / "data.csv").read_text())
    with pytest.raises(SystemExit, match=r"stldec mine: error: .*bare/labels\.csv not found"):
        main(["mine", "--data", str(tmp_path / "bare"), "--baseline", "--out", str(tmp_path / "o2")])


@pytest.mark.slow
def test_cli_mine_with_model(synthetic, decoder, tmp_path):
    model, tok, encoder = decoder
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    encoder.save_pretrained(tmp_path / "model" / "encoder")
    main(["mine", "--data", str(synthetic), "--folds", "2", "--seeds", "1", "--model", str(tmp_path / "model"),
          "--candidates", "300", "--out", str(tmp_path / "out")])
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert r["search"] == "decoder" and r["model"] == str(tmp_path / "model")
    assert all(row["decoded"] > 0 for row in r["per_fold"]) and r["mean_test_accuracy"] >= 0.9
