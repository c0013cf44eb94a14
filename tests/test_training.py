"""End-to-end training on the CPU with a tiny model and a tiny kernel encoder: loss drops, checkpoints at the step
interval and each epoch end, SIGKILL + resume == uninterrupted, a damaged checkpoint skipped, a resume with a changed
experiment refused, 2-process accelerate, heads and fine-tuning, re-warmed schedules, mixtures, bad configurations and
bad data failing before any training."""

import copy
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stldec.stl import StlKernelEncoder
from stldec.trainers import Experiment, checkpoints, last_complete_checkpoint, make_encoder, parse_train_args, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
BASE = {
    "model": {"head": "decoder", "preset": "tiny", "max_position_embeddings": 128},
    "data": {"preset": "balanced", "generator": {"depth_shares": {2: 1, 3: 1}}, "n_train": 64, "n_validation": 0,
             "encoder": {"anchors": 8, "n_trajectories": 200, "n_points": 40, "seed": 0}},
    "training": {"per_device_train_batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 0, "logging_steps": 1,
                 "save_steps": 5, "save_total_limit": None, "report_to": [], "disable_tqdm": True},
}


def experiment(**sections) -> Experiment:
    d = copy.deepcopy(BASE)
    for name, values in sections.items():
        d[name].update(values)
    return Experiment.from_dict(d)


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine has 2 busy cores: one intra-op thread is several times faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def steps_saved(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def run_script(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "examples/train.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300, **kw)


def test_loss_drops_and_the_run_folder_is_complete(tmp_path):
    e = experiment(data={"n_train": 256, "n_validation": 16, "n_generate": 8},
                   training={"max_steps": 40, "eval_steps": 20, "save_steps": 20, "report_to": ["tensorboard"]})
    out = train(e, tmp_path / "run")
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    evals = [m for m in metrics(out) if "eval_validity" in m]
    assert [m["step"] for m in evals] == [20, 40] and all(0 <= m["eval_cos_rho_mean"] <= 1 for m in evals)
    assert {"config.json", "model.safetensors", "vocab.json", "experiment.yaml", "runs.jsonl"} <= set(os.listdir(out))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == min(m["eval_loss"] for m in metrics(out) if "eval_loss" in m)
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{state['best_global_step']}")
    assert Experiment.load(out / "experiment.yaml") == e
    record = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert record["versions"]["torch"] == torch.__version__.split("+")[0] or record["versions"]["torch"]
    assert {"git", "hardware", "argv"} <= set(record)
    saved_encoder = json.loads((out / "encoder" / "encoder_config.json").read_text())
    assert saved_encoder["n_anchors"] == 8
    assert list(out.glob("runs/*/events.out.tfevents.*"))

    from stldec import StlDecForCausalLM
    model = StlDecForCausalLM.from_pretrained(out)
    assert model.config.add_cross_attention and model.config.embedding_dim == 8
    assert model.config.encoder_fingerprint == saved_encoder["fingerprint"]  # decoding checks it against encoder/


def test_the_run_can_end_with_the_checkpoint_of_best_validation_cos_rho(tmp_path):
    e = experiment(data={"n_train": 256, "n_validation": 16, "n_generate": 16},
                   training={"max_steps": 30, "eval_steps": 10, "save_steps": 10, "save_total_limit": 2,
                             "load_best_model_at_end": True, "metric_for_best_model": "cos_rho_mean",
                             "greater_is_better": True})
    out = train(e, tmp_path / "run")
    evals = {m["step"]: m["eval_cos_rho_mean"] for m in metrics(out) if "eval_cos_rho_mean" in m}
    best_step = max(evals, key=lambda s: (evals[s], -s))  # HF keeps the first of equal scores
    state = json.loads((out / "trainer_state.json").read_text())
    assert sorted(evals) == [10, 20, 30] and state["best_metric"] == evals[best_step]
    assert (out / f"checkpoint-{best_step}").is_dir()  # kept by the rotation although older than the newest
    final, best = load_file(out / "model.safetensors"), load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in final)
    if best_step != 30:  # (at this size all three usually score 0: the first is kept, 20 steps before the last)
        last = load_file(out / "checkpoint-30" / "model.safetensors")
        assert not all(torch.equal(final[k], last[k]) for k in final)


def test_only_marked_checkpoints_count_as_complete(tmp_path):
    for step, marked in ((3, True), (7, False), (12, True), (20, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if marked:
            (tmp_path / f"checkpoint-{step}" / "stldec_complete.json").write_text("{}")
    (tmp_path / "checkpoint-best").mkdir()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-12"
    assert [p.name for p in checkpoints(tmp_path, complete=False)] == ["checkpoint-7", "checkpoint-20"]
    assert last_complete_checkpoint(tmp_path / "nowhere") is None


def test_checkpoints_at_the_step_interval_and_each_epoch_end(tmp_path):
    out = train(experiment(training={"num_train_epochs": 3, "save_steps": 5, "logging_steps": 50}), tmp_path / "r")
    steps_per_epoch = 64 // 16
    expected = {s for s in range(1, 13) if s % 5 == 0 or s % steps_per_epoch == 0}  # {4, 5, 8, 10, 12}
    assert steps_saved(out) == sorted(expected)
    assert all((out / f"checkpoint-{s}" / "stldec_complete.json").is_file() for s in expected)


def test_old_checkpoints_go_only_once_the_new_one_is_complete(tmp_path, monkeypatch):
    deleted, rmtree = [], shutil.rmtree

    def watched(path, *args, **kwargs):  # at each deletion: is the newest checkpoint already complete?
        if Path(path).name.startswith("checkpoint-"):
            newest = max(Path(path).parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            deleted.append((Path(path).name, (newest / "stldec_complete.json").is_file()))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watched)
    out = train(experiment(training={"max_steps": 6, "save_steps": 2, "save_total_limit": 1}), tmp_path / "r")
    assert deleted == [("checkpoint-2", True), ("checkpoint-4", True)] and steps_saved(out) == [6]
    assert last_complete_checkpoint(out) == out / "checkpoint-6"


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(tmp_path):
    e = experiment(model={"hidden_dropout_prob": 0.1},  # dropout: the RNG state must be restored too
                   training={"num_train_epochs": 6, "save_steps": 3, "logging_steps": 1})
    e.save(tmp_path / "e.yaml")
    args = ["--config", str(tmp_path / "e.yaml")]
    train(e, tmp_path / "whole")  # in this process (one thread, as the subprocesses): same kernels, same results

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "examples/train.py", *args, "--output_dir", str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint-6" / "stldec_complete.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = steps_saved(out)
    assert done and done[-1] < 24, "the run finished before it could be killed"
    # a checkpoint cut short while being written: newer, no completion marker, a truncated weights file
    fake = out / f"checkpoint-{done[-1] + 1}"
    shutil.copytree(out / f"checkpoint-{done[-1]}", fake)
    (fake / "stldec_complete.json").unlink()
    (fake / "model.safetensors").write_bytes(b"\0" * 10)

    resumed = run_script([*args, "--output_dir", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removing unfinished checkpoint" in resumed.stdout
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same ops on the same data: bitwise
    assert [m["loss"] for m in metrics(out) if "loss" in m] == [m["loss"] for m in metrics(tmp_path / "whole")
                                                               if "loss" in m]


@pytest.mark.parametrize("damage", ["optimizer.pt truncated", "4 KB of garbage inside model.safetensors"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage):
    e = experiment(training={"max_steps": 4, "save_steps": 2})
    out = train(e, tmp_path / "r")
    whole = load_file(out / "model.safetensors")
    name = damage.split()[-1] if "inside" in damage else damage.split()[0]
    raw = bytearray((out / "checkpoint-4" / name).read_bytes())
    if "garbage" in damage:
        g = torch.Generator().manual_seed(0)
        raw[len(raw) // 2 : len(raw) // 2 + 4096] = torch.randint(0, 256, (4096,), generator=g,
                                                                   dtype=torch.uint8).numpy().tobytes()
    else:
        raw = raw[: len(raw) // 2]
    (out / "checkpoint-4" / name).write_bytes(bytes(raw))

    with pytest.warns(UserWarning, match=f"checkpoint-4 is damaged \\({name} changed since it was written\\)"):
        train(e, out)  # the rerun: the newest complete checkpoint is damaged, the previous one is resumed
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["resume_from"].endswith("checkpoint-2")
    assert (out / "checkpoint-4.damaged" / name).is_file() and last_complete_checkpoint(out) == out / "checkpoint-4"
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # resumed from step 2 == uninterrupted


def test_resume_refuses_a_changed_experiment_before_writing_anything(tmp_path):
    from stldec.cli import main

    make_encoder(BASE["data"]["encoder"]).save_pretrained(tmp_path / "enc")
    e = experiment(data={"encoder": str(tmp_path / "enc")}, training={"max_steps": 4, "save_steps": 2})
    e.save(tmp_path / "e.yaml")
    out = train(e, tmp_path / "r")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = [({"learning_rate": 0.5}, "training.learning_rate: 0.003 -> 0.5"),
               ({"lr_scheduler_type": "constant"}, "training.lr_scheduler_type: 'cosine' -> 'constant'"),
               ({"model.hidden_size": 96}, "model.hidden_size: '(unset)' -> 96"),
               ({"data.n_train": 80, "seed": 3}, "data.n_train: 64 -> 80; training.seed: 0 -> 3")]
    for change, named in refused:
        with pytest.raises(ValueError, match=re.escape(named)) as err:
            train(e.override(change), out)
        assert "--rewarm_from" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit, match=re.escape("stldec train: ") + ".*" + re.escape("0.003 -> 0.5")):
        main(["train", "--config", str(tmp_path / "e.yaml"), "--output_dir", str(out), "--learning_rate", "0.5"])
    other = StlKernelEncoder(make_encoder(BASE["data"]["encoder"]).anchors, n_trajectories=200, n_points=40, seed=1)
    shutil.rmtree(tmp_path / "enc")
    other.save_pretrained(tmp_path / "enc")  # the same data.encoder path, another encoder behind it
    with pytest.raises(ValueError, match=f"trained with encoder .* but data.encoder is now {other.fingerprint}"):
        train(e, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # experiment.yaml untouched


def test_resume_applies_a_new_length_and_new_intervals(tmp_path):
    out = train(experiment(training={"max_steps": 4, "save_steps": 2}), tmp_path / "r")
    with pytest.warns(UserWarning, match="max_steps 4 -> 10: applied; the cosine learning-rate schedule is recomputed"):
        train(experiment(training={"max_steps": 10, "save_steps": 5}), out)
    assert steps_saved(out) == [2, 4, 5, 8, 10]  # every 5 steps now (HF alone keeps the checkpoint's 2), epoch ends
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 10
    assert Experiment.load(out / "experiment.yaml").training["max_steps"] == 10


def test_bad_training_rows_are_named_by_file_row(tmp_path):
    rows = [[0.1 * i] * 8 for i in range(8)]
    rows[1][3], rows[4][0] = math.nan, math.inf
    formulae = ["always[0,5] ( x_0 >= 0.5 )"] * 8
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"formula": f, "embedding": r}) + "\n"
                                              for f, r in zip(formulae, rows)))
    with pytest.raises(ValueError, match=re.escape("t.jsonl: 2 of 8 rows have a missing, NaN or inf embedding: rows "
                                                   "[1, 4] (0-based data rows, in file order)")):
        train(experiment(data={"train": str(tmp_path / "t.jsonl")}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_rows_dropped_as_too_long_are_recorded_and_warned_about(tmp_path):
    with pytest.warns(UserWarning, match=r"dropped \d+ of 64 rows longer than 40 tokens \(\d+\.\d%\): the longest"):
        out = train(experiment(model={"max_position_embeddings": 40}, training={"max_steps": 2}), tmp_path / "r")
    dropped = json.loads((out / "runs.jsonl").read_text())["rows_dropped_too_long"]
    assert set(dropped) == {"train"} and dropped["train"]["rows"] == 64 and 0 < dropped["train"]["dropped"] < 64


@pytest.mark.slow
def test_the_gpu_recipe_trains_at_tiny_size_on_a_cpu_and_never_on_an_excluded_formula(tmp_path):
    """examples/configs/base.yaml as written (stream, generator options, schedule), shrunk to the tiny model and
    encoder for 2 steps; its data.exclude is honoured: the training file's rows of a test file are dropped."""
    e = Experiment.load(ROOT / "examples/configs/base.yaml").override({
        "model.preset": "tiny", "model.num_memory_tokens": 4,
        "data.encoder": BASE["data"]["encoder"], "data.n_validation": 4, "data.n_generate": 2,
        "data.stream_chunk_size": 8, "max_steps": 2, "per_device_train_batch_size": 4, "eval_steps": 2,
        "save_steps": 2, "report_to": [], "disable_tqdm": True})
    train(e, tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").is_file() and steps_saved(tmp_path / "base") == [2]

    rows = ["x_0 >= 0.5", "eventually[0,3] ( x_1 <= 0.25 )", "always[1,4] ( x_2 >= -1.0 )", "not ( x_0 <= 0.1 )"]
    (tmp_path / "train.csv").write_text("formula\n" + "\n".join(f'"{r}"' for r in rows * 4) + "\n")
    (tmp_path / "test.csv").write_text('formula\n"always[1,4] ( x_2 >= -1.0 )"\n')
    with pytest.warns(UserWarning, match="dropped 4 rows whose formula is in data.exclude"):
        train(experiment(data={"train": str(tmp_path / "train.csv"), "exclude": [str(tmp_path / "test.csv")]},
                         training={"max_steps": 1}), tmp_path / "file")


def test_accelerate_two_cpu_processes_train_and_resume_a_stream(tmp_path):
    e = experiment(data={"stream": True, "stream_chunk_size": 16},
                   training={"save_steps": 3, "per_device_train_batch_size": 8})
    e.save(tmp_path / "e.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(port), "examples/train.py", "--config", str(tmp_path / "e.yaml"), "--output_dir", str(tmp_path / "r")]
    first = subprocess.run([*launch, "--max_steps", "3"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(tmp_path / "r" / "checkpoint-3"))
    second = subprocess.run([*launch, "--max_steps", "6"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = [json.loads(x) for x in (tmp_path / "r" / "runs.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in runs] == [2, 2] and runs[1]["resume_from"].endswith("checkpoint-3")
    assert json.loads((tmp_path / "r" / "trainer_state.json").read_text())["global_step"] == 6
    assert steps_saved(tmp_path / "r") == [3, 6]


def test_gpt_and_mlm_pretraining_then_a_decoder_from_the_gpt_trunk(tmp_path):
    from stldec import StlDecForCausalLM, StlDecForMaskedLM

    gpt = train(experiment(model={"head": "gpt"}, training={"max_steps": 6}), tmp_path / "gpt")
    mlm = train(experiment(model={"head": "mlm"}, training={"max_steps": 6}), tmp_path / "mlm")
    assert all(m["loss"] > 0 for m in metrics(mlm) if "loss" in m)
    assert not StlDecForMaskedLM.from_pretrained(mlm).config.is_decoder
    dec = train(experiment(model={"head": "decoder", "init_from": str(gpt)}, training={"max_steps": 2,
                                                                                      "learning_rate": 0.0}),
                tmp_path / "dec")
    g, d = StlDecForCausalLM.from_pretrained(gpt), StlDecForCausalLM.from_pretrained(dec)
    assert d.config.add_cross_attention and not g.config.add_cross_attention
    shared = {k: v for k, v in g.state_dict().items() if k in d.state_dict()}
    assert len(shared) > 4 and all(torch.equal(v, d.state_dict()[k]) for k, v in shared.items())


def test_rewarm_starts_the_new_schedule_at_the_checkpoint_learning_rate(tmp_path):
    first = train(experiment(training={"max_steps": 10, "save_steps": 5, "lr_scheduler_type": "linear"}),
                  tmp_path / "a")
    ckpt = first / "checkpoint-5"
    old_lr = torch.load(ckpt / "optimizer.pt", weights_only=True)["param_groups"][0]["lr"]
    peak = 3e-3
    out = train(experiment(training={"max_steps": 8, "warmup_steps": 4, "learning_rate": peak,
                                     "lr_scheduler_type": "linear"}).override({"rewarm_from": str(ckpt)}),
                tmp_path / "b")
    lrs = [m["learning_rate"] for m in metrics(out) if "learning_rate" in m]
    assert old_lr < 0.7 * peak  # logged: the rate each step used, so step 1 runs at the checkpoint's rate
    assert lrs[0] == pytest.approx(old_lr) and lrs[0] < lrs[1] < lrs[2] < lrs[3] < peak
    assert lrs[4] == pytest.approx(peak) and lrs[-1] < lrs[4]


def test_bad_configs_fail_before_any_training(tmp_path, capsys):
    d = copy.deepcopy(BASE)
    d["training"]["learnig_rate"] = 1e-3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    r = run_script(["--config", str(tmp_path / "bad.yaml"), "--output_dir", str(tmp_path / "o")])
    assert r.returncode == 2 and "did you mean 'learning_rate'" in r.stderr and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        parse_train_args(["--config", "examples/configs/tiny.yaml", "--no_such", "1"])
    assert "unknown field 'no_such'" in capsys.readouterr().err

    with pytest.raises(FileNotFoundError, match="missing.csv"):
        train(experiment(data={"train": str(tmp_path / "missing.csv")}), tmp_path / "o")
    with pytest.raises(ValueError, match="embedding_dim is 32 but the data's embeddings have 8"):
        train(experiment(model={"embedding_dim": 32}), tmp_path / "o")
    with pytest.raises(ValueError, match="max_steps"):
        train(experiment(data={"stream": True}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_mixtures_compare_on_the_same_files(tmp_path):
    from stldec.trainers.mixtures import run_mixtures

    base = experiment(training={"max_steps": 4})
    base.save(tmp_path / "base.yaml")
    spec = {"base": str(tmp_path / "base.yaml"), "n_test": 12,
            "mixtures": {"shallow": {"generator": {"depth_shares": {2: 1}}},
                         "deeper": {"generator": {"depth_shares": {3: 1}}}}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    rows = run_mixtures(tmp_path / "m.yaml", tmp_path / "out")
    assert [r["mixture"] for r in rows] == ["shallow", "deeper"] and len({r["test"] for r in rows}) == 1
    for name in ("comparison.csv", "comparison.md", "by_depth.csv", "metric_vs_depth.png", "test.parquet"):
        assert (tmp_path / "out" / name).is_file()
    assert "| shallow |" in (tmp_path / "out" / "comparison.md").read_text()
