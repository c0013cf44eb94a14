"""Evaluation metrics on hand-made cases: invalid outputs, equivalent texts, skeletons, artefacts, depth breakdown."""

import math
import sqlite3

import pytest
import torch

from stldec.evaluation import (
    compute_metrics,
    flatten_metrics,
    has_duplicated_atom,
    has_repeated_digits,
    interval_bounds,
    sample_trajectories,
    skeleton,
    thresholds,
    try_parse,
)
from stldec.stl import parse

GOLD = [
    "always[0,10] ( x_0 >= 0.5 )",
    "( x_1 <= -0.25 and eventually[2,8] ( x_2 >= 1.5 ) )",
    "not ( ( x_0 >= 0.1 until[1,5] x_1 <= 0.3 ) )",
    "eventually ( ( x_0 >= 0.2 or x_1 <= 0.7 ) )",
]


@pytest.fixture(scope="module")
def trajectories():
    return sample_trajectories(300, seed=0)


def test_try_parse_and_skeleton():
    assert try_parse("( x_0 >= 1") is None and try_parse("") is None and try_parse("always ( x_0 >= 1 )")
    a = parse("( x_0 >= 0.5 until[3,9] eventually[0,inf] ( x_1 <= -2.25 ) )")
    same = parse("( x_0 >= 1.75 until[0,2] eventually[7,inf] ( x_1 <= 0.1 ) )")
    assert skeleton(a) == skeleton(same) == "( x_0 >= # until[#,#] eventually[#,inf] ( x_1 <= # ) )"
    for other in ("( x_0 <= 0.5 until[3,9] eventually[0,inf] ( x_1 <= -2.25 ) )",  # direction
                  "( x_2 >= 0.5 until[3,9] eventually[0,inf] ( x_1 <= -2.25 ) )",  # variable
                  "( x_0 >= 0.5 until[3,9] eventually[0,5] ( x_1 <= -2.25 ) )",  # interval kind
                  "( x_0 >= 0.5 until eventually[0,inf] ( x_1 <= -2.25 ) )",
                  "( x_0 >= 0.5 until[3,9] always[0,inf] ( x_1 <= -2.25 ) )"):  # operator
        assert skeleton(parse(other)) != skeleton(a), other
    assert thresholds(a) == [0.5, -2.25] and interval_bounds(a) == [0, 3, 9]  # tree order, printed (reference) bounds


def test_artefact_detectors():
    assert [has_repeated_digits(c) for c in (0.3332, 1.1111, -0.0005, 0.0, 0.288, 1.2123, 0.01)] == [
        True, True, True, False, False, False, False]
    assert has_duplicated_atom(parse("( x_2 >= 0.233 or x_2 >= 0.233 )"))
    assert has_duplicated_atom(parse("( always ( x_0 <= 1.0 ) and not ( x_0 <= 1 ) )"))
    assert not has_duplicated_atom(parse("( x_2 >= 0.233 or x_2 <= 0.233 )"))


def test_perfect_decoding_with_different_text(trajectories):
    decoded = [  # the gold formulae with extra parentheses, other spacing and number spellings
        "always[0,10](x_0>=0.50)",
        "((x_1 <= -0.250) and (eventually[2,8] (( x_2 >= 1.5 ))))",
        "not (( x_0 >= 0.1 until[1,5] x_1 <= 0.3 ))",
        "  eventually ( x_0 >= 0.2 or x_1 <= 0.7 )  ",
    ]
    m = compute_metrics(GOLD, decoded, trajectories=trajectories)
    o = m["overall"]
    assert o["n"] == 4 and o["validity"] == o["exact_match"] == o["skeleton_match"] == 1.0
    assert o["threshold_error"] == o["interval_error"] == 0.0
    for k in ("cos_rho_mean", "cos_rho_q25", "cos_rho_median", "cos_rho_q75", "cos_rho_share_above_0.9",
              "sign_agreement", "node_ratio", "depth_ratio"):
        assert o[k] == pytest.approx(1.0), k
    assert o["embedding_cosine"] is None  # no encoder given


def test_textbook_dialect_equivalent_is_semantically_identical(trajectories):
    gold = "eventually[0,5] ( x_0 >= 0.5 )"
    textbook = parse(gold).to_string(dialect="textbook")  # 'eventually[0,4] ...': other text, same AST
    decoded = parse(textbook, dialect="textbook").to_string()  # what a decoder emitting the reference dialect prints
    r = compute_metrics([gold], [decoded], trajectories=trajectories)["rows"][0]
    assert r["exact_match"] and r["cos_rho"] == pytest.approx(1.0)
    shifted = compute_metrics([gold], [textbook], trajectories=trajectories)["rows"][0]  # misread as reference
    assert shifted["skeleton_match"] and not shifted["exact_match"] and shifted["interval_error"] == 0.5


def test_invalid_and_unevaluable_outputs_score_zero(trajectories):
    decoded = ["always[0,10] ( x_0 >= ", "( x_1 <= -0.25 and x_7 >= 1 )",
               "always[0,150] ( x_0 >= 0.1 )", "eventually ( ( x_0 >= 0.2 or x_1 <= 0.7 ) )"]
    m = compute_metrics(GOLD, decoded, trajectories=trajectories)
    rows, o = m["rows"], m["overall"]
    assert [r["valid"] for r in rows] == [False, True, True, True]
    assert [r["cos_rho"] for r in rows[:3]] == [0.0, 0.0, 0.0] and [r["sign_agreement"] for r in rows[:3]] == [0] * 3
    assert rows[3]["cos_rho"] == pytest.approx(1.0) and rows[3]["exact_match"]
    assert math.isnan(rows[0]["decoded_nodes"]) and math.isnan(rows[0]["threshold_error"])
    assert o["validity"] == 0.75 and o["cos_rho_mean"] == pytest.approx(0.25) and o["exact_match"] == 0.25
    assert o["node_ratio"] == pytest.approx((3 / 4 + 2 / 4 + 1) / 3)  # valid outputs only


def test_semantically_equivalent_formulae_have_cos_rho_one(trajectories):
    gold = ["( x_0 >= 0.5 and eventually[0,5] ( x_1 <= 0.2 ) )", "always[0,10] ( x_0 >= 0.5 )"]
    decoded = ["( eventually[0,5] ( x_1 <= 0.2 ) and x_0 >= 0.5 )", "not ( not ( always[0,10] ( x_0 >= 0.5 ) ) )"]
    m = compute_metrics(gold, decoded, trajectories=trajectories)
    assert m["overall"]["exact_match"] == m["overall"]["skeleton_match"] == 0.0
    assert m["overall"]["cos_rho_mean"] == pytest.approx(1.0) and m["overall"]["sign_agreement"] == 1.0


def test_semantic_metrics_are_sensible(trajectories):
    gold = ["always[0,10] ( x_0 >= 0.5 )"] * 3
    decoded = ["always[0,10] ( x_0 >= 0.6 )", "always[0,10] ( x_0 <= 0.5 )", "always[0,10] ( x_0 >= 0.5 )"]
    rows = compute_metrics(gold, decoded, trajectories=trajectories)["rows"]
    assert rows[0]["cos_rho"] > 0.9 and rows[0]["threshold_error"] == pytest.approx(0.1)
    assert rows[1]["cos_rho"] < 0 and rows[1]["sign_agreement"] < 0.5 and not rows[1]["skeleton_match"]
    assert math.isnan(rows[1]["threshold_error"])
    assert rows[2]["sign_agreement"] == 1.0
    rho = [trajectories[:, 0, :10].double().min(1).values - c for c in (0.5, 0.6)]  # always[0,10]: offsets 0..9
    assert rows[0]["cos_rho"] == pytest.approx(float(torch.nn.functional.cosine_similarity(*rho, dim=0)), abs=1e-5)


def test_breakdown_by_depth_and_flattening(trajectories):
    decoded = ["always[0,10] ( x_0 >= 0.5 )", "bad", "( x_0 >= 0.1 until[1,5] x_1 <= 0.3 )", "bad"]
    m = compute_metrics(GOLD, decoded, trajectories=trajectories)
    assert sorted(m["by_depth"]) == sorted({parse(g).depth for g in GOLD})
    for depth, s in m["by_depth"].items():
        rows = [r for r in m["rows"] if r["depth"] == depth]
        assert s["n"] == len(rows) and s["validity"] == sum(r["valid"] for r in rows) / len(rows)
    assert sum(s["n"] * s["cos_rho_mean"] for s in m["by_depth"].values()) == pytest.approx(
        4 * m["overall"]["cos_rho_mean"])
    given = compute_metrics(GOLD, decoded, trajectories=trajectories, depths=[5, 5, 6, 6])["by_depth"]
    assert sorted(given) == [5, 6] and given[5]["validity"] == 0.5
    flat = flatten_metrics(m)
    assert flat["validity"] == 0.5 and all(isinstance(v, float | int) for v in flat.values())
    assert any(k.startswith("depth2/") for k in flat)


def test_gold_must_parse_and_fit(trajectories):
    with pytest.raises(ValueError, match="horizon|evaluated"):
        compute_metrics(["always[0,200] ( x_0 >= 0.5 )"], ["x_0 >= 1"], trajectories=trajectories)
    with pytest.raises(ValueError):
        compute_metrics(["( x_0 >= 1"], ["x_0 >= 1"], trajectories=trajectories)
    with pytest.raises(ValueError, match="2 gold"):
        compute_metrics(GOLD[:2], GOLD[:1], trajectories=trajectories)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny untrained decoder saved with its tokenizer and kernel encoder (16 anchors, 200 x 30-point traces)."""
    from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
    from stldec.stl import FormulaGenerator, StlKernelEncoder

    root = tmp_path_factory.mktemp("eval")
    encoder = StlKernelEncoder(FormulaGenerator("random", seed=1, n_points=30).sample(16), n_trajectories=200,
                               n_points=30)
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", max_position_embeddings=48))
    for d in (root / "run", root / "run" / "checkpoint-10", root / "run" / "checkpoint-20"):
        model.save_pretrained(d)
        StlTokenizer().save_pretrained(d)
        encoder.save_pretrained(d / "encoder")
    gold = [f.to_string() for f in FormulaGenerator("balanced", seed=2, n_points=30).sample(6)]
    (root / "test.csv").write_text("formula\n" + "".join(f'"{g}"\n' for g in gold))
    return root, encoder


@pytest.mark.slow
def test_evaluate_cli_end_to_end(saved_model, capsys):
    from stldec.cli import main
    from stldec.registry import Registry

    root, _ = saved_model
    reg, rep = root / "reg" / "runs.sqlite", root / "report"
    base = ["evaluate", "--test", str(root / "test.csv"), "--registry", str(reg), "--constrained",
            "--max_new_tokens", "20", "--n_trajectories", "100", "--batch_size", "8", "--limit", "5",
            "--embedding_metrics"]
    main([*base, "--model", str(root / "run" / "checkpoint-10")])
    main([*base, "--model", str(root / "run" / "checkpoint-20"), "--report", str(rep)])
    out = capsys.readouterr().out
    assert '"validity": 1.0' in out and '"n": 5' in out and "reused" not in out  # constrained: valid by construction
    runs = Registry(reg).runs()
    assert [r["step"] for r in runs] == [10, 20] and all(Registry(reg).outputs_path(r).is_file() for r in runs)
    assert not list(reg.parent.glob("outputs/*.parts.jsonl"))
    for name in ("report.md", "cos_rho_by_depth.png", "size_scatter.png", "checkpoints.png"):
        assert (rep / name).is_file(), name
    report = (rep / "report.md").read_text()
    assert "| validity | 1.000 |" in report and "| embedding_cosine | –" not in report
    # the same run with settings written differently (greedy ignores temperature) is reused, not recomputed
    main([*base, "--model", str(root / "run" / "checkpoint-20"), "--temperature", "0.3", "--batch_size", "2"])
    assert "reused from the registry" in capsys.readouterr().out and len(Registry(reg).runs()) == 2
    main([*base, "--model", str(root / "run" / "checkpoint-20"), "--force"])  # recomputed: same outputs, no conflict
    captured = capsys.readouterr()
    assert "reused" not in captured.out and "CONFLICT" not in captured.err
    assert len(Registry(reg).runs()) == 2 and len(list(reg.parent.glob("outputs/*.parquet"))) == 2
    with sqlite3.connect(reg) as db:  # another machine's different result for the same key, merged earlier
        db.execute("UPDATE runs SET metrics = replace(metrics, '\"validity\": 1.0', '\"validity\": 0.5')")
    main([*base, "--model", str(root / "run" / "checkpoint-20"), "--force"])
    err = capsys.readouterr().err
    assert "CONFLICT" in err and "overall.validity" in err
    assert {r["metrics"]["overall"]["validity"] for r in Registry(reg).runs()} == {0.5}  # kept, not overwritten
    assert len(list(reg.parent.glob("outputs/*.parquet"))) == 3  # the rejected rerun's outputs are kept aside


IDENTICAL_RUN = """
import os, sys, time
from pathlib import Path

import stldec.decoding
from stldec.evaluation import run_evaluation

root, registry, meet = map(Path, sys.argv[1:])
decode = stldec.decoding.decode


def decode_then_meet(*args, **kwargs):  # both runs in the middle of their work at once, where that is allowed
    out = decode(*args, **kwargs)
    (meet / str(os.getpid())).touch()
    deadline = time.time() + 5
    while len(list(meet.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return out


stldec.decoding.decode = decode_then_meet
r = run_evaluation(root / "run", root / "test.csv", registry=registry, limit=3, n_trajectories=50, max_new_tokens=12,
                   progress=False)
print("reused" if r["reused"] else "computed", r["overall"]["validity"])
"""


@pytest.mark.slow
def test_identical_evaluations_at_once_both_succeed(saved_model, tmp_path):
    """Two identical evaluations started together on one registry (two jobs): the second waits for the first and
    reuses its run, instead of both writing, then removing, the same parts file."""
    import subprocess
    import sys

    from stldec.registry import Registry

    root, _ = saved_model
    (tmp_path / "meet").mkdir()
    args = [sys.executable, "-c", IDENTICAL_RUN, str(root), str(tmp_path / "runs.sqlite"), str(tmp_path / "meet")]
    jobs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [job.communicate(timeout=300) for job in jobs]  # (stdout, stderr) of each
    assert [job.returncode for job in jobs] == [0, 0], [err[-2000:] for _, err in done]
    assert sorted(out.split()[0] for out, _ in done) == ["computed", "reused"]
    assert len({out.split()[1] for out, _ in done}) == 1 and len(Registry(tmp_path / "runs.sqlite").runs()) == 1
    assert any("waiting for an identical run to finish" in err for _, err in done)
    assert [p.suffix for p in (tmp_path / "outputs").iterdir()] == [".parquet"]  # no parts or lock file left


def test_evaluate_refuses_another_encoder(saved_model, capsys):
    from stldec.cli import main
    from stldec.stl import StlKernelEncoder

    root, encoder = saved_model
    StlKernelEncoder(encoder.anchors, n_trajectories=100, n_points=30).save_pretrained(root / "other")
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(root / "run"), "--test", str(root / "test.csv"), "--encoder",
              str(root / "other")])
    assert "stldec evaluate: error: the model was trained with encoder" in capsys.readouterr().err


def test_evaluate_refuses_zero_settings_and_a_registry_that_is_not_one(saved_model, capsys):
    from stldec.cli import main

    root, _ = saved_model
    base = ["evaluate", "--model", str(root / "run"), "--test", str(root / "test.csv"), "--constrained"]
    for flag in ("--max_new_tokens", "--n_vars"):  # an error naming the field, never replaced by the default
        with pytest.raises(SystemExit, match=f"{flag[2:]} must be >= 1, got 0"):
            main([*base, flag, "0"])
    with pytest.raises(SystemExit):
        main([*base, "--registry", str(root / "test.csv")])
    assert "test.csv is not an SQLite database" in capsys.readouterr().err


def test_evaluate_module_loads_by_path():
    import evaluate

    from stldec.evaluation import EVALUATE_MODULE

    metric = evaluate.load(EVALUATE_MODULE)
    metric.add_batch(predictions=["always[0,10](x_0>=0.5)", "nonsense"], references=GOLD[:2])
    out = metric.compute(n_trajectories=100)
    assert out["validity"] == 0.5 and out["exact_match"] == 0.5 and out["cos_rho_mean"] == pytest.approx(0.5)


def test_trainer_compute_metrics_decodes_ids_and_ignores_padding():
    from transformers import EvalPrediction

    from stldec import StlTokenizer
    from stldec.evaluation import trainer_compute_metrics

    tok = StlTokenizer()
    ids = tok(GOLD[:2], padding=True)["input_ids"]
    labels = [[i if i != tok.pad_token_id else -100 for i in row] for row in ids]
    out = trainer_compute_metrics(tok, n_trajectories=100)(EvalPrediction(predictions=ids, label_ids=labels))
    assert out["validity"] == out["exact_match"] == 1.0 and out["cos_rho_mean"] == pytest.approx(1.0)


def test_embedding_metrics(trajectories):
    from stldec.stl import StlKernelEncoder

    encoder = StlKernelEncoder(GOLD, n_trajectories=200, n_points=20)
    decoded = [GOLD[0], "bad", "always[0,10] ( x_1 >= 0.5 )", "( x_0 >= 0.2 or x_1 <= 0.7 )"]
    rows = compute_metrics(GOLD, decoded, encoder=encoder, trajectories=trajectories)["rows"]
    assert rows[0]["embedding_cosine"] == pytest.approx(1.0) and rows[0]["embedding_l2"] == pytest.approx(0, abs=1e-6)
    assert math.isnan(rows[1]["embedding_cosine"]) and math.isnan(rows[1]["embedding_l2"])
    assert rows[2]["embedding_l2"] > 0.01 and rows[3]["embedding_l2"] > 0.01
    given = compute_metrics(GOLD, decoded, encoder=encoder, gold_embeddings=encoder.encode(GOLD),
                            trajectories=trajectories)["rows"]
    assert [r["embedding_l2"] for r in given[2:]] == pytest.approx([r["embedding_l2"] for r in rows[2:]])
    with pytest.raises(ValueError, match="rows"):
        compute_metrics(GOLD, decoded, encoder=encoder, gold_embeddings=torch.zeros(2, 4), trajectories=trajectories)


def test_cos_rho_and_sign_agree_with_the_kernel_and_satisfaction(trajectories):
    from stldec.stl import FormulaGenerator, satisfaction
    from stldec.stl.kernel import cos_rho

    fs = [f.to_string() for f in FormulaGenerator("random", seed=3).sample(16)]
    gold, decoded = fs[:8], fs[8:]
    rows = compute_metrics(gold, decoded, trajectories=trajectories)["rows"]
    assert [r["cos_rho"] for r in rows] == pytest.approx(cos_rho(gold, decoded, trajectories).tolist(), abs=1e-5)
    agree = (satisfaction(gold, trajectories) == satisfaction(decoded, trajectories)).double().mean(1)
    assert [r["sign_agreement"] for r in rows] == pytest.approx(agree.tolist())
