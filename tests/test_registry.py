"""Prediction registry: canonical keys, reuse, merge across machines, conflict reports."""

import pytest

from stldec.decoding import DecodingConfig
from stldec.registry import Registry, format_conflicts, metrics_differ, run_key

METRIC_SETTINGS = {"n_trajectories": 1000, "seed": 0, "encoder": "stlkernel-abc"}


def key(strategy, **settings):
    return run_key(model="runs/m", model_sha256="w" * 64, step=100, strategy=strategy,
                   settings=DecodingConfig(strategy=strategy, **settings).canonical(), metric_settings=METRIC_SETTINGS,
                   test_hash="t" * 64)


def run(k, metrics, step=100, outputs="outputs/a.parquet"):
    return dict(key=k, model="runs/m", model_sha256="w" * 64, step=step, strategy="greedy", settings={},
                metric_settings=METRIC_SETTINGS, test_hash="t" * 64, test_path="test.csv", n=3, metrics=metrics,
                outputs=outputs, info={})


def test_same_settings_written_two_ways_give_one_key():
    assert key("greedy") == key("greedy", constrained=False, dialect="reference")  # explicit defaults
    assert key("greedy") == key("greedy", temperature=0.7, top_p=0.9, num_beams=8)  # irrelevant to greedy
    assert key("sample", temperature=1, top_p=0.9) == key("sample", top_p=0.9, temperature=1.0)  # order, int/float
    assert key("greedy", n_vars=5) == key("greedy")  # n_vars only matters to constrained decoding
    assert key("sample", temperature=0.7) != key("sample", temperature=0.8)
    assert key("beam", num_beams=4) != key("beam", num_beams=8)
    assert key("sample") != key("greedy")
    assert key("greedy", constrained=True) != key("greedy")
    assert key("greedy", constrained=True, n_vars=5) != key("greedy", constrained=True)


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="tempreature"):
        key("sample", tempreature=0.5)
    with pytest.raises(ValueError, match="strategy"):
        key("nucleus")


def test_add_get_and_identical_rerun_is_a_noop(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    metrics = {"overall": {"validity": 1.0, "n": 3}, "by_depth": {2: {"validity": 1.0}}}
    assert reg.add(run("k1", metrics)) is None
    assert reg.add(run("k1", metrics)) is None  # same key, same metrics (int depth keys round-trip through JSON)
    assert len(reg.runs()) == 1
    got = reg.get("k1")
    assert got["metrics"]["by_depth"]["2"]["validity"] == 1.0 and got["step"] == 100
    assert reg.get("missing") is None
    assert [r["key"] for r in reg.runs(strategy="greedy")] == ["k1"] and reg.runs(strategy="beam") == []


def test_conflict_is_reported_not_overwritten(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.add(run("k1", {"overall": {"validity": 1.0, "cos_rho_mean": 0.8}}))
    conflict = reg.add(run("k1", {"overall": {"validity": 1.0, "cos_rho_mean": 0.7}}))
    assert conflict["differences"] == ["overall.cos_rho_mean"]
    assert reg.get("k1")["metrics"]["overall"]["cos_rho_mean"] == 0.8
    assert "overall.cos_rho_mean" in format_conflicts([conflict])


def test_merge_copies_runs_and_outputs_and_reports_conflicts(tmp_path):
    a, b = Registry(tmp_path / "a" / "r.sqlite"), Registry(tmp_path / "b" / "r.sqlite")
    for reg, name in ((a, "x"), (b, "y")):
        reg.outputs_dir.mkdir()
        (reg.outputs_dir / f"{name}.parquet").write_text(name)
    a.add(run("shared", {"overall": {"validity": 1.0}}, outputs="outputs/x.parquet"))
    a.add(run("clash", {"overall": {"validity": 0.5}}, outputs="outputs/x.parquet"))
    b.add(run("shared", {"overall": {"validity": 1.0}}, outputs="outputs/y.parquet"))
    b.add(run("clash", {"overall": {"validity": 0.9}}, outputs="outputs/y.parquet"))
    b.add(run("only_b", {"overall": {"validity": 0.7}}, step=200, outputs="outputs/y.parquet"))
    added, conflicts = a.merge(tmp_path / "b" / "r.sqlite")
    assert added == 1
    assert [c["key"] for c in conflicts] == ["clash"] and conflicts[0]["differences"] == ["overall.validity"]
    assert {r["key"] for r in a.runs()} == {"shared", "clash", "only_b"}
    assert a.get("clash")["metrics"]["overall"]["validity"] == 0.5
    assert a.outputs_path(a.get("only_b")).read_text() == "y"
    assert a.merge(b) == (0, conflicts)  # merging again: nothing new, the same conflict


def test_metrics_differ_tolerates_float_noise():
    assert metrics_differ({"a": 0.1 + 0.2, "b": {"c": 1}}, {"a": 0.3, "b": {"c": 1}}) == []
    assert metrics_differ({"a": 0.3, "b": None}, {"a": 0.3, "b": 0.5}) == ["b"]


def test_registry_cli_lists_merges_and_exits_2_on_conflicts(tmp_path, capsys):
    from stldec.cli import main

    metrics = {"overall": {"validity": 1.0, "cos_rho_mean": 0.8}}
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    Registry(a).add(run("k1", metrics))
    Registry(b).add(run("k2", metrics, step=200))
    main(["registry", str(a), "--merge", str(b)])
    main(["registry", str(a)])
    out = capsys.readouterr().out
    assert "1 runs added, 0 conflicts" in out and "step=100" in out and "step=200" in out
    Registry(b).add(run("k1", {"overall": {"validity": 1.0, "cos_rho_mean": 0.5}}))
    with pytest.raises(SystemExit) as e:
        main(["registry", str(a), "--merge", str(b)])
    assert e.value.code == 2 and "overall.cos_rho_mean" in capsys.readouterr().err


def insert_raw(path, row):
    """Write a row as another program (or another machine's registry) could, bypassing `Registry.add`."""
    import json
    import sqlite3

    from stldec.registry import _COLUMNS

    with sqlite3.connect(path) as db:
        db.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(_COLUMNS))})",
                   tuple(json.dumps(row[k]) if isinstance(row[k], dict) else row.get(k) for k in _COLUMNS))


@pytest.mark.parametrize("outputs", ["../../x.parquet", "outputs/../../../x.parquet", "/tmp/x.parquet", ""])
def test_merge_refuses_outputs_outside_the_registry_folder(tmp_path, outputs):
    from stldec.cli import main

    a, b = Registry(tmp_path / "a" / "deep" / "r.sqlite"), Registry(tmp_path / "b" / "deep" / "r.sqlite")
    (tmp_path / "b" / "x.parquet").write_text("b's file")  # what b's `../../x.parquet` names
    b.add(run("fine", {"overall": {"validity": 1.0}}))
    insert_raw(b.path, dict(run("evil", {"overall": {"validity": 1.0}}, outputs=outputs), created="2026"))
    with pytest.raises(ValueError, match="not a relative path inside the registry folder"):
        a.merge(b.path)
    with pytest.raises(SystemExit, match=r"evil.*not a relative path inside the registry folder"):
        main(["registry", str(a.path), "--merge", str(b.path)])
    assert a.runs() == [] and not (tmp_path / "a" / "x.parquet").exists()  # refused before any change
    with pytest.raises(ValueError, match="not a relative path"):
        a.add(run("k", {}, outputs=outputs))


def test_merge_sources_are_opened_read_only(tmp_path, capsys):
    import sqlite3

    from stldec.cli import main

    reg = Registry(tmp_path / "r.sqlite")
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    before = foreign.read_bytes()
    with pytest.raises(ValueError, match=r"foreign.sqlite is not a stldec registry: it has no `runs` table"):
        reg.merge(foreign)
    assert foreign.read_bytes() == before  # no table written into the source
    with pytest.raises(FileNotFoundError, match="missing.sqlite not found"):
        reg.merge(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()
    (tmp_path / "notes.txt").write_text("not a database, just a long enough text file " * 10)
    for path in (tmp_path / "notes.txt", foreign):
        with pytest.raises(SystemExit):
            main(["registry", str(reg.path), "--merge", str(path)])
        assert str(path) in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(ValueError, match="notes.txt is not an SQLite registry"):
        Registry(tmp_path / "notes.txt")  # also as the registry itself (evaluate --registry)
    with pytest.raises(SystemExit, match="not found"):
        main(["registry", str(tmp_path / "typo.sqlite")])  # listing does not create a registry
    assert not (tmp_path / "typo.sqlite").exists()
