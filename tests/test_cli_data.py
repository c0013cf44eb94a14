"""`stldec generate` and `stldec embed`: table formats, embeddings equal to the API, resumable embedding."""

import numpy as np
import pandas as pd
import pytest

from stldec.cli import main, read_table
from stldec.data import load_formulae
from stldec.stl import parse
from stldec.stl.kernel import StlKernelEncoder

ANCHORS = ["x_0 >= 0.1", "eventually[0,4] ( x_1 <= 0.0 )", "( x_2 >= 0.3 until[1,3] x_0 <= 0.2 )",
           "always[2,inf] ( ( x_0 <= 0.5 or x_1 >= -0.2 ) )"]
PHIS = ["always[0,3] ( x_0 >= -0.2 )", "x_1 <= 0.4", "( eventually[1,6] ( x_2 >= 0.1 ) and x_0 <= 1.0 )",
        "eventually ( not ( x_1 <= -0.3 ) )", "( x_0 >= -1.0 until[0,inf] always[0,2] ( x_1 >= 0.2 ) )",
        "not ( x_2 >= 0.7 )", "( x_1 <= 0.0 or x_2 >= 0.0 )"]
ENCODER = dict(n_trajectories=300, n_points=30)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "anchors.txt").write_text("\n".join(ANCHORS) + "\n")
    pd.DataFrame({"formula": PHIS, "depth": [parse(p).depth for p in PHIS]}).to_csv(tmp_path / "in.csv", index=False)
    return tmp_path


def embed_args(d, out, *extra):
    return ["embed", "--in", str(d / "in.csv"), "--out", str(d / out), "--anchors", str(d / "anchors.txt"),
            "--n_trajectories", "300", "--n_points", "30", "--chunk", "3", *extra]


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_generate_writes_formula_table(tmp_path, ext):
    out = tmp_path / f"f{ext}"
    main(["generate", "--preset", "balanced", "--n", "40", "--seed", "3", "--n_points", "50", "--out", str(out)])
    df = read_table(str(out))
    assert list(df.columns) == ["formula", "depth", "size", "horizon"] and len(df) == 40
    fs = [parse(s) for s in df["formula"]]
    assert [f.depth for f in fs] == df["depth"].tolist() and [f.size for f in fs] == df["size"].tolist()
    assert [f.time_horizon for f in fs] == df["horizon"].tolist() and df["horizon"].max() <= 49


def user_error(argv: list[str], capsys) -> str:
    """The one-line message of a CLI user error (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_generate_rejects_unknown_format(tmp_path, capsys):
    assert "unknown table format" in user_error(["generate", "--n", "5", "--out", str(tmp_path / "f.txt")], capsys)


def test_embed_matches_api_in_every_format(files):
    want = StlKernelEncoder(str(files / "anchors.txt"), **ENCODER).encode(PHIS).numpy()
    for ext in (".parquet", ".csv", ".jsonl"):
        main(embed_args(files, f"out{ext}"))
        df = read_table(str(files / f"out{ext}"))
        assert df["formula"].tolist() == PHIS and df["depth"].tolist() == [parse(p).depth for p in PHIS]
        # the float32 GEMM of the cosines blocks differently for other batch shapes: equal up to rounding
        np.testing.assert_allclose(np.stack([np.asarray(e, np.float32) for e in df["embedding"]]), want, rtol=1e-5)
        assert not (files / f"out{ext}.parts").exists()


def test_embed_resumes_without_recomputing(files, monkeypatch):
    main(embed_args(files, "whole.parquet"))
    encoded = []
    original = StlKernelEncoder.encode
    monkeypatch.setattr(StlKernelEncoder, "encode", lambda self, fs, **kw: encoded.extend(fs) or original(self, fs))
    main(embed_args(files, "resumed.parquet", "--max_chunks", "1"))  # interrupted after the first part
    assert not (files / "resumed.parquet").exists() and (files / "resumed.parquet.parts/part-00000.parquet").is_file()
    assert encoded == PHIS[:3]
    main(embed_args(files, "resumed.parquet"))
    assert encoded == PHIS  # the first part was not recomputed
    whole, resumed = read_table(str(files / "whole.parquet")), read_table(str(files / "resumed.parquet"))
    np.testing.assert_array_equal(np.stack(whole["embedding"]), np.stack(resumed["embedding"]))


def test_embed_refuses_mismatched_resume_and_conflicting_options(files, capsys):
    main(embed_args(files, "out.parquet", "--max_chunks", "1"))
    assert "another input" in user_error(embed_args(files, "out.parquet", "--seed", "1"), capsys)
    StlKernelEncoder(str(files / "anchors.txt"), **ENCODER).save_pretrained(files / "enc")
    assert "--encoder fixes the encoder" in user_error(
        ["embed", "--in", str(files / "in.csv"), "--out", str(files / "x.csv"), "--encoder", str(files / "enc"),
         "--seed", "1"], capsys)


def test_embed_never_deletes_what_it_did_not_make(files):
    mine = files / "out.parquet.parts"  # the user's folder that happens to have the parts folder's name
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not made by stldec embed"):
        main(embed_args(files, "out.parquet"))
    assert (mine / "notes.txt").read_text() == "mine" and not (files / "out.parquet").exists()
    main(embed_args(files, "b.parquet", "--max_chunks", "1"))
    (files / "b.parquet.parts" / "notes.txt").write_text("mine")  # put into our parts folder meanwhile
    main(embed_args(files, "b.parquet"))
    assert [p.name for p in (files / "b.parquet.parts").iterdir()] == ["notes.txt"]  # our parts went, that stays
    assert len(read_table(str(files / "b.parquet"))) == len(PHIS)


def test_embed_with_saved_encoder(files):
    StlKernelEncoder(str(files / "anchors.txt"), **ENCODER).save_pretrained(files / "enc")
    main(["embed", "--in", str(files / "in.csv"), "--out", str(files / "a.parquet"), "--encoder", str(files / "enc")])
    main(embed_args(files, "b.parquet"))
    a, b = read_table(str(files / "a.parquet")), read_table(str(files / "b.parquet"))
    np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), rtol=1e-5)  # GEMM rounding


def test_embedded_parquet_records_its_encoder(files):
    from stldec.data import built_with, load_formulae

    main(embed_args(files, "out.parquet"))
    main(embed_args(files, "out.csv"))
    encoder = StlKernelEncoder(str(files / "anchors.txt"), **ENCODER)
    assert built_with(files / "out.parquet") == encoder.fingerprint and built_with(files / "out.csv") is None
    assert load_formulae(files / "out.parquet", encoder)["formula"] == PHIS
    other = StlKernelEncoder(str(files / "anchors.txt"), seed=1, **ENCODER)
    with pytest.raises(ValueError, match=f"embedded by encoder {encoder.fingerprint}, not by the given"):
        load_formulae(files / "out.parquet", other)


def test_data_build_excludes_the_formulae_of_given_files(files, capsys):
    """`stldec data build --exclude TEST.csv`: none of the test file's formulae is in the built set, which keeps its
    size (the generator's next formula replaces one)."""
    enc = files / "enc"
    main(["data", "encoder", "--anchors", str(files / "anchors.txt"), "--n_trajectories", "100", "--n_points", "30",
          "--out", str(enc)])
    build = ["data", "build", "--preset", "balanced", "--n", "60", "--encoder", str(enc), "--seed", "4"]
    main([*build, "--out", str(files / "plain")])
    plain = load_formulae(files / "plain")["formula"]
    pd.DataFrame({"formula": plain[::3]}).to_csv(files / "test.csv", index=False)
    main([*build, "--out", str(files / "clean"), "--exclude", str(files / "test.csv")])
    clean = load_formulae(files / "clean")["formula"]
    assert len(clean) == 60 and not set(clean) & set(plain[::3])
    assert f"none of the {len(set(plain[::3]))} excluded" in capsys.readouterr().out
