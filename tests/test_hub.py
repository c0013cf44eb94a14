"""Hub hand-off: plain save_pretrained folders carry code + auto_map and load where stldec is absent; the prepared Hub
folder (encoder, pipeline, card from the run record) works with `stldec decode`, the pipeline and the CLI."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import stldec.hub
from stldec import StlDecConfig, StlDecForCausalLM, StlDecForMaskedLM, StlTokenizer, prepare_hub_folder
from stldec.cli import main
from stldec.decoding import decode, load_model_encoder
from stldec.stl import FormulaGenerator, StlKernelEncoder

PROMPTS = ["always[0,5] ( x_0 >= 0.5 )", "( x_1 <= -1.2 and <mask> )"]
FORMULAE = ["always[0,10] ( x_0 >= 0.5 )", "eventually[0,5] ( x_1 <= -0.2 )", "( x_2 >= 0.1 or x_0 <= 1.5 )"]

# Runs in a fresh interpreter that cannot import stldec: loads each folder through the Auto classes with remote code.
REMOTE = textwrap.dedent("""
    import importlib.abc, json, sys
    class NoStldec(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "stldec" or name.startswith("stldec."):
                raise ModuleNotFoundError(f"blocked: {name}")
    sys.meta_path.insert(0, NoStldec())
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline
    try:
        import stldec  # noqa: F401
        sys.exit("stldec is importable")
    except ModuleNotFoundError:
        pass
    decoder, mlm, hub, inputs, out = sys.argv[1:6]
    x = load_file(inputs)
    kw = dict(trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(decoder, **kw)
    dec = AutoModelForCausalLM.from_pretrained(decoder, **kw).eval()
    trunk = AutoModel.from_pretrained(decoder, **kw).eval()
    masked = AutoModelForMaskedLM.from_pretrained(mlm, **kw).eval()
    from_hub = AutoModelForCausalLM.from_pretrained(hub, **kw).eval()
    classes = [type(o).__module__ for o in (AutoConfig.from_pretrained(decoder, **kw), tok, dec, trunk, masked,
                                            AutoTokenizer.from_pretrained(hub, **kw), from_hub)]
    enc = tok(json.loads(x["prompts"].numpy().tobytes()), padding=True, return_tensors="pt")
    emb = x["embedding"]
    gen = dec.generate(formula_embedding=emb, max_new_tokens=20, num_beams=2)
    result = {"input_ids": enc["input_ids"], "logits": dec(**enc, formula_embedding=emb).logits,
              "hidden": trunk(**enc, formula_embedding=emb).last_hidden_state, "mlm": masked(**enc).logits,
              "generated": gen, "hub_logits": from_hub(**enc, formula_embedding=x["hub_embedding"]).logits}
    save_file({k: v.contiguous() for k, v in result.items()}, out)
    try:
        pipeline(model=hub, **kw)
        pipeline_error = None
    except ImportError as e:
        pipeline_error = str(e)
    print(json.dumps({"classes": classes, "decoded": tok.batch_decode(gen, skip_special_tokens=True),
                      "pipeline_error": pipeline_error}))
""")


def models():
    torch.manual_seed(0)
    dec = StlDecForCausalLM(StlDecConfig.from_preset("tiny")).eval()
    mlm = StlDecForMaskedLM(StlDecConfig.from_preset("tiny", is_decoder=False, add_cross_attention=False)).eval()
    return dec, mlm


@pytest.fixture(scope="module")
def encoder():
    return StlKernelEncoder(FormulaGenerator("random", seed=0, n_points=30).sample(16), n_trajectories=300,
                            n_points=30)


def model_folder(path, model, encoder=None):
    """A folder as training leaves it (model, tokenizer, encoder/), without the run record."""
    model.save_pretrained(path)
    StlTokenizer().save_pretrained(path)
    if encoder is not None:
        encoder.save_pretrained(path / "encoder")
    return path


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, encoder):
    """An untrained tiny decoder sized for `encoder`'s embeddings, saved with it and prepared for the Hub."""
    d = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", embedding_dim=encoder.embedding_dim))
    return prepare_hub_folder(model_folder(d / "model", model, encoder), d / "hub")


def card_code(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, re.DOTALL)


def test_plain_save_pretrained_carries_the_code_and_every_head_in_auto_map(tmp_path):
    dec, mlm = models()
    gpt = StlDecForCausalLM(StlDecConfig.from_preset("tiny", add_cross_attention=False))
    heads = {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM"}
    for name, model in (("dec", dec), ("mlm", mlm), ("gpt", gpt)):
        model.save_pretrained(tmp_path / name)
        assert {"configuration.py", "modeling.py"} <= set(os.listdir(tmp_path / name))
        assert set(json.loads((tmp_path / name / "config.json").read_text())["auto_map"]) == heads
    StlTokenizer().save_pretrained(tmp_path / "tok")
    assert "tokenization.py" in os.listdir(tmp_path / "tok")
    auto_map = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["auto_map"]
    assert auto_map == {"AutoTokenizer": ["tokenization.StlTokenizer", None]}
    for code in ("dec/configuration.py", "dec/modeling.py", "tok/tokenization.py"):
        assert not re.search(r"^\s*(from|import)\s+stldec", (tmp_path / code).read_text(), re.MULTILINE)


def test_prepare_writes_code_encoder_pipeline_and_card(tmp_path, hub_folder, encoder):
    files = set(os.listdir(hub_folder))
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json", "vocab.json", "configuration.py",
            "modeling.py", "tokenization.py", "pipeline.py", "encoder"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    config = json.loads((hub_folder / "config.json").read_text())
    assert config["custom_pipelines"]["stl-decoding"]["impl"] == "pipeline.StlDecodingPipeline"
    assert load_model_encoder(hub_folder).fingerprint == encoder.fingerprint
    card = (hub_folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and "custom_code" in meta["tags"] and "model-index" not in meta
    assert "No evaluation of these weights was recorded" in card and "holds no runs.jsonl" in card
    assert encoder.fingerprint in card and f'repo = "{hub_folder.name}"' in card

    for kind, model in (("mlm", models()[1]),
                        ("gpt", StlDecForCausalLM(StlDecConfig.from_preset("tiny", add_cross_attention=False)))):
        out = prepare_hub_folder(model_folder(tmp_path / kind, model), tmp_path / f"{kind}-hub", name=f"me/{kind}")
        assert "pipeline.py" not in os.listdir(out) and "encoder" not in os.listdir(out)
        card = (out / "README.md").read_text()
        assert f'repo = "me/{kind}"' in card and "stl-decoding" not in card
        for code in card_code(card):  # the usage snippet, loading this folder by path instead of a repository id
            exec(code.replace(f'repo = "me/{kind}"', f"repo = {str(out)!r}"), {})
    with pytest.raises(ValueError, match="is not empty"):
        prepare_hub_folder(tmp_path / "mlm", out)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        prepare_hub_folder(tmp_path / "nothing", tmp_path / "x")


def test_decode_cli_reads_the_hub_folder(tmp_path, hub_folder):
    pd.DataFrame({"formula": FORMULAE}).to_csv(tmp_path / "f.csv", index=False)
    main(["decode", "--model", str(hub_folder), "--input", str(tmp_path / "f.csv"), "--output",
          str(tmp_path / "out.csv"), "--constrained"])
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    model, tok = StlDecForCausalLM.from_pretrained(hub_folder), StlTokenizer.from_pretrained(hub_folder)
    encoder = load_model_encoder(hub_folder)
    assert list(out["formula"]) == FORMULAE
    assert list(out["decoded"]) == decode(model, tok, encoder.encode(FORMULAE), constrained=True,
                                          n_vars=encoder.n_vars, max_horizon=encoder.n_points - 1)


def test_pipeline_from_the_hub_folder(tmp_path, hub_folder):
    from transformers import pipeline

    pipe = pipeline(model=str(hub_folder), trust_remote_code=True, device="cpu")  # task from config.json
    assert type(pipe).__module__.startswith("transformers_modules.")  # the folder's pipeline.py
    model, tok, encoder = pipe.model, pipe.tokenizer, pipe.encoder
    emb = torch.cat([encoder.encode([f]) for f in FORMULAE])  # the pipeline embeds one formula at a time
    limits = dict(n_vars=encoder.n_vars, max_horizon=encoder.n_points - 1)
    beam = decode(model, tok, emb, strategy="beam", num_beams=3, constrained=True, batch_size=2, **limits)
    greedy = decode(model, tok, emb, **limits)
    row_by_row = decode(model, tok, emb, batch_size=1, **limits)
    assert pipe(FORMULAE, strategy="beam", num_beams=3, constrained=True, batch_size=2) == [
        {"formula": t} for t in beam]
    assert pipe([list(map(float, e)) for e in emb]) == [{"formula": t} for t in greedy]
    assert pipe(emb, batch_size=1) == [{"formula": t} for t in row_by_row]
    assert pipe(FORMULAE[1]) == pipe(emb[1]) == pipe(emb[1].tolist()) == {"formula": row_by_row[1]}
    assert pipe([]) == []
    with pytest.raises(ValueError, match="strategy='nope'"):
        pipe(FORMULAE, strategy="nope")
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        pipe(torch.zeros(2, 5))

    fresh = StlDecForCausalLM(StlDecConfig.from_preset("tiny", embedding_dim=16))  # no folder, so no encoder
    bare = pipeline("stl-decoding", model=fresh, tokenizer=tok, device="cpu")  # the task `import stldec` registers
    assert bare.encoder is None and isinstance(bare(emb[0])["formula"], str)
    with pytest.raises(ValueError, match="no encoder/ folder"):
        bare(FORMULAE[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 2-step training run with a test file, and an `stldec evaluate` registry holding a run of it."""
    from stldec.evaluation import run_evaluation
    from stldec.trainers import Experiment, train

    d = tmp_path_factory.mktemp("trained")
    test = d / "test.csv"
    pd.DataFrame({"formula": [f.to_string() for f in FormulaGenerator("easy", seed=5, n_points=30).sample(4)]}
                 ).to_csv(test, index=False)
    experiment = Experiment.from_dict({
        "model": {"head": "decoder", "preset": "tiny", "max_position_embeddings": 96},
        "data": {"preset": "easy", "n_train": 32, "n_validation": 4, "n_generate": 0, "test": str(test),
                 "encoder": {"anchors": 8, "n_trajectories": 100, "n_points": 30, "seed": 0}},
        "training": {"max_steps": 2, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "logging_steps": 1,
                     "eval_steps": 2, "save_steps": 2, "report_to": [], "disable_tqdm": True}})
    run = train(experiment, d / "run")
    run_evaluation(run, test, registry=d / "runs.sqlite", n_trajectories=100, constrained=True, progress=False)
    return run, d / "runs.sqlite"


@pytest.mark.slow
def test_card_is_filled_from_the_run_record_and_its_snippets_run(tmp_path, trained, capsys):
    run, registry = trained
    for folder in (run, run / "checkpoint-2"):  # trainer checkpoints carry the code too (plain save_pretrained)
        assert {"configuration.py", "modeling.py", "tokenization.py"} <= set(os.listdir(folder))
    main(["hub", "prepare", "--model", str(run), "--out", str(tmp_path / "hub"), "--registry", str(registry),
          "--description", "A test decoder."])
    hub = tmp_path / "hub"
    card = (hub / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    results = meta["model-index"][0]["results"]
    metrics = {(m["type"], m["name"].split(" (")[1]) for r in results for m in r["metrics"]}
    assert {("validity", "greedy, constrained)"), ("cos_rho_mean", "greedy, constrained)"),
            ("loss", "greedy, scored during training)")} <= metrics
    assert {r["dataset"]["name"] for r in results} == {"test.csv"}
    assert "A test decoder." in card and "32 formulae generated with the `easy` preset" in card
    assert "| learning_rate | 0.001 |" in card and "| steps | 2 |" in card
    assert "| test.csv | greedy, constrained | 4 |" in card

    capsys.readouterr()
    for code in card_code(card):  # the usage snippets, loading this folder by path instead of a repository id
        exec(code.replace(f'repo = "{hub.name}"', f"repo = {str(hub)!r}"), {})
    printed = capsys.readouterr().out
    assert printed.count("'formula'") == 2 and printed.count("[") >= 1


@pytest.mark.slow
def test_remote_code_load_without_stldec_gives_identical_outputs(tmp_path, hub_folder):
    dec, mlm = models()
    tok = StlTokenizer()
    for name, model in (("dec", dec), ("mlm", mlm)):  # plain save_pretrained: no stldec.hub involved
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    emb = torch.rand(2, dec.config.embedding_dim)
    from_hub = StlDecForCausalLM.from_pretrained(hub_folder).eval()
    hub_emb = torch.rand(2, from_hub.config.embedding_dim)
    prompts = torch.frombuffer(bytearray(json.dumps(PROMPTS).encode()), dtype=torch.uint8)
    save_file({"embedding": emb, "hub_embedding": hub_emb, "prompts": prompts}, tmp_path / "inputs.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="",
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", REMOTE, str(tmp_path / "dec"), str(tmp_path / "mlm"), str(hub_folder),
                          str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(m.startswith("transformers_modules.") for m in report["classes"]), report["classes"]
    assert "stldec" in report["pipeline_error"]  # the pipeline needs the package, and says so

    remote = load_file(tmp_path / "out.safetensors")
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    gen = dec.generate(formula_embedding=emb, max_new_tokens=20, num_beams=2)
    assert torch.equal(remote["input_ids"], enc["input_ids"])
    assert torch.equal(remote["logits"], dec(**enc, formula_embedding=emb).logits)
    assert torch.equal(remote["hidden"], dec.model(**enc, formula_embedding=emb).last_hidden_state)
    assert torch.equal(remote["mlm"], mlm(**enc).logits)
    assert torch.equal(remote["generated"], gen)
    assert torch.equal(remote["hub_logits"], from_hub(**enc, formula_embedding=hub_emb).logits)
    assert report["decoded"] == tok.batch_decode(gen, skip_special_tokens=True)


def test_hub_push_uploads_the_prepared_folder(monkeypatch, tmp_path, encoder):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = {str(p.relative_to(folder_path)) for p in folder_path.rglob("*")}
            calls["card"] = (folder_path / "README.md").read_text()
            return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(stldec.hub, "HfApi", FakeApi)
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", embedding_dim=encoder.embedding_dim))
    main(["hub", "push", "--model", str(model_folder(tmp_path / "m", model, encoder)), "--repo", "me/stl",
          "--private"])
    assert calls["repo"] == ("me/stl", True, True) and calls["token"] is None
    assert {"config.json", "model.safetensors", "modeling.py", "pipeline.py", "README.md", "tokenizer_config.json",
            "encoder/encoder_config.json", "encoder/anchors.txt"} <= calls["files"]
    assert 'repo = "me/stl"' in calls["card"]
    with pytest.raises(SystemExit, match="stldec hub: error: .* no config.json"):
        main(["hub", "push", "--model", str(tmp_path / "none"), "--repo", "me/stl"])
