"""End to end: `stldec quickstart --tiny` (what `make run` does, smaller), then `stldec decode` on its model."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from stldec.decoding import load_model_encoder
from stldec.quickstart import SETTINGS
from stldec.stl import StlKernelEncoder, parse


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    run = subprocess.run([sys.executable, "-m", "stldec.cli", "quickstart", "--tiny", "--output_dir", str(out)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout


@pytest.mark.slow
def test_quickstart_trains_decodes_and_scores(quickstart):
    out, stdout = quickstart
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"greedy", "constrained", "rerank k=4", "refine"}
    assert metrics["constrained"]["validity"] == metrics["rerank k=4"]["validity"] == metrics["refine"]["validity"] == 1
    assert metrics["refine"]["embedding_cosine"] >= metrics["rerank k=4"]["embedding_cosine"] - 1e-6
    assert all(-1 <= m["cos_rho_mean"] <= 1 for m in metrics.values())  # a cosine: an untrained tiny model may be < 0
    decoded = pd.read_csv(out / "decoded.csv", keep_default_na=False)
    assert len(decoded) == SETTINGS["n_test"][1]
    assert all(parse(t).to_string() == t for t in decoded["decoded_constrained"])
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "encoder").is_dir()
    assert "validity" in stdout and "gold -> decoded" in stdout


@pytest.mark.slow
def test_decode_command_round_trip(quickstart, tmp_path):
    model = quickstart[0] / "model"
    (tmp_path / "in.csv").write_text('formula\n"always[0,5] ( x_0 <= 1.0 )"\n( x_1 >= 0.5 or x_2 <= -0.3 )\n')
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "stldec.cli", "decode", "--model", str(model), "--input", str(tmp_path / "in.csv"),
           "--output", str(out)]
    run = subprocess.run(cmd + ["--strategy", "rerank", "--k", "3", "--constrained", "--nbest", "2", "--dialect",
                                "textbook"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["formula"] for r in rows] == ["always[0,5] ( x_0 <= 1.0 )", "( x_1 >= 0.5 or x_2 <= -0.3 )"]
    assert all(parse(r["decoded"], dialect="textbook") for r in rows)
    assert all(len(json.loads(r["nbest"])) == 2 for r in rows)
    assert not list(tmp_path.glob("*.parts.jsonl"))  # removed once the output is written
    enc = load_model_encoder(model)  # the same anchors with other trajectories: refused
    StlKernelEncoder(enc.anchors, n_trajectories=enc.n_trajectories + 1, n_points=enc.n_points).save_pretrained(
        tmp_path / "other")
    bad = subprocess.run(cmd + ["--encoder", str(tmp_path / "other")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "trained with encoder" in bad.stderr
