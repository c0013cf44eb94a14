"""Hub folders: complete layout and card, and identical outputs when loaded with remote code where stldec is absent."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import stldec.hub
from stldec import StlDecConfig, StlDecForCausalLM, StlDecForMaskedLM, StlTokenizer, prepare_hub_folder, push_to_hub

PROMPTS = ["always[0,5] ( x_0 >= 0.5 )", "( x_1 <= -1.2 and <mask> )"]

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
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    try:
        import stldec  # noqa: F401
        sys.exit("stldec is importable")
    except ModuleNotFoundError:
        pass
    decoder, mlm, inputs, out = sys.argv[1:5]
    x = load_file(inputs)
    kw = dict(trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(decoder, **kw)
    dec = AutoModelForCausalLM.from_pretrained(decoder, **kw).eval()
    trunk = AutoModel.from_pretrained(decoder, **kw).eval()
    masked = AutoModelForMaskedLM.from_pretrained(mlm, **kw).eval()
    classes = [type(o).__module__ for o in (AutoConfig.from_pretrained(decoder, **kw), tok, dec, trunk, masked)]
    enc = tok(json.loads(x["prompts"].numpy().tobytes()), padding=True, return_tensors="pt")
    emb = x["embedding"]
    gen = dec.generate(formula_embedding=emb, max_new_tokens=20, num_beams=2)
    result = {"input_ids": enc["input_ids"], "logits": dec(**enc, formula_embedding=emb).logits,
              "hidden": trunk(**enc, formula_embedding=emb).last_hidden_state, "mlm": masked(**enc).logits,
              "generated": gen}
    save_file({k: v.contiguous() for k, v in result.items()}, out)
    print(json.dumps({"classes": classes, "decoded": tok.batch_decode(gen, skip_special_tokens=True)}))
""")


def models():
    torch.manual_seed(0)
    dec = StlDecForCausalLM(StlDecConfig.from_preset("tiny")).eval()
    mlm = StlDecForMaskedLM(StlDecConfig.from_preset("tiny", is_decoder=False, add_cross_attention=False)).eval()
    return dec, mlm


def test_folder_layout_and_card(tmp_path):
    dec, mlm = models()
    tok = StlTokenizer()
    for name, model, snippet in (("dec", dec, "formula_embedding="), ("mlm", mlm, "AutoModelForMaskedLM"),
                                 ("gpt", StlDecForCausalLM(StlDecConfig.from_preset("tiny", add_cross_attention=False)),
                                  "do_sample=True")):
        out = prepare_hub_folder(model, tok, tmp_path / name, name="me/stl-" + name)
        files = {p.name for p in out.iterdir()}
        assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json", "configuration.py",
                "modeling.py", "tokenization.py"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
        auto_map = json.loads((out / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM"}
        assert "AutoTokenizer" in json.loads((out / "tokenizer_config.json").read_text())["auto_map"]
        for code in ("configuration.py", "modeling.py", "tokenization.py"):
            assert "stldec.stl" not in (out / code).read_text() and "from stldec" not in (out / code).read_text()
        card = (out / "README.md").read_text()
        meta = yaml.safe_load(card.split("---")[1])
        assert meta["library_name"] == "transformers" and "custom_code" in meta["tags"]
        assert f'"me/stl-{name}"' in card and "trust_remote_code=True" in card and snippet in card


@pytest.mark.slow
def test_remote_code_load_without_stldec_gives_identical_outputs(tmp_path):
    dec, mlm = models()
    tok = StlTokenizer()
    prepare_hub_folder(dec, tok, tmp_path / "dec")
    prepare_hub_folder(mlm, tok, tmp_path / "mlm")
    emb = torch.rand(2, dec.config.embedding_dim)
    prompts = torch.frombuffer(bytearray(json.dumps(PROMPTS).encode()), dtype=torch.uint8)
    save_file({"embedding": emb, "prompts": prompts}, tmp_path / "inputs.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="",
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", REMOTE, str(tmp_path / "dec"), str(tmp_path / "mlm"),
                          str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(m.startswith("transformers_modules.") for m in report["classes"]), report["classes"]

    remote = load_file(tmp_path / "out.safetensors")
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    gen = dec.generate(formula_embedding=emb, max_new_tokens=20, num_beams=2)
    assert torch.equal(remote["input_ids"], enc["input_ids"])
    assert torch.equal(remote["logits"], dec(**enc, formula_embedding=emb).logits)
    assert torch.equal(remote["hidden"], dec.model(**enc, formula_embedding=emb).last_hidden_state)
    assert torch.equal(remote["mlm"], mlm(**enc).logits)
    assert torch.equal(remote["generated"], gen)
    assert report["decoded"] == tok.batch_decode(gen, skip_special_tokens=True)


def test_push_to_hub_uploads_the_prepared_folder(monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(p.name for p in folder_path.iterdir())
            return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(stldec.hub, "HfApi", FakeApi)
    url = push_to_hub(models()[0], StlTokenizer(), "me/stl", private=True, token="t")
    assert url == "https://hub/me/stl/commit/1" and calls["repo"] == ("me/stl", True, True)
    assert {"config.json", "model.safetensors", "modeling.py", "README.md", "tokenizer_config.json"} <= set(
        calls["files"])
