"""Loading a trained decoder for decoding and evaluation: damaged or incomplete weights and a replaced encoder are
refused with one clear line, never decoded from (issue 14: items 3 and 4)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.cli import main
from stldec.decoding import load_model, load_model_encoder
from stldec.stl import FormulaGenerator, StlKernelEncoder


def _encoder(seed: int) -> StlKernelEncoder:
    return StlKernelEncoder(FormulaGenerator("random", seed=1, n_points=30).sample(16), n_trajectories=100,
                            n_points=30, seed=seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny decoder folder as training writes it (config recording the encoder's fingerprint, encoder/), a test
    table, and a second encoder of the same size."""
    root = tmp_path_factory.mktemp("loading")
    encoder = _encoder(seed=0)
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", max_position_embeddings=48,
                                                       encoder_fingerprint=encoder.fingerprint))
    model.save_pretrained(root / "model")
    StlTokenizer().save_pretrained(root / "model")
    encoder.save_pretrained(root / "model" / "encoder")
    gold = [f.to_string() for f in FormulaGenerator("balanced", seed=2, n_points=30).sample(3)]
    (root / "test.csv").write_text("formula\n" + "".join(f'"{g}"\n' for g in gold))
    return root, encoder, _encoder(seed=1)


def copy_model(saved, tmp_path):
    root = saved[0]
    shutil.copytree(root / "model", tmp_path / "model")
    return tmp_path / "model"


def garbage(n: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).numpy().tobytes()


def test_a_sound_model_loads_with_its_weights(saved):
    root, encoder, _ = saved
    model = load_model(root / "model")
    reference = load_file(root / "model" / "model.safetensors")
    assert not model.training and all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    assert load_model_encoder(root / "model").fingerprint == encoder.fingerprint


def test_decode_refuses_4kb_of_garbage_inside_the_weights(saved, tmp_path):
    d = copy_model(saved, tmp_path)
    raw = bytearray((d / "model.safetensors").read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = garbage(4096)
    (d / "model.safetensors").write_bytes(bytes(raw))
    out = tmp_path / "decoded.csv"
    with pytest.raises(SystemExit, match=r"model\.safetensors holds NaN, inf or implausibly large .* tensors \["):
        main(["decode", "--model", str(d), "--input", str(saved[0] / "test.csv"), "--output", str(out),
              "--max_new_tokens", "10"])
    assert not out.exists()


@pytest.mark.parametrize("damage, message", [
    ("header", r"model\.safetensors is not a readable safetensors file \(.*header"),
    ("truncated", r"model\.safetensors is not a readable safetensors file"),
    ("missing", r"missing tensors \['model\.layers\.1\.mlp\.fc1\.bias', 'model\.layers\.1\.mlp\.fc1\.weight'"),
    ("unexpected", r"unexpected tensors \['extra\.weight'\]"),
    ("mismatched", r"model\.norm\.weight has shape \[3\] in the file, \[64\] in the model"),
    ("nan", r"NaN, inf or implausibly large \(> 10000\) values in tensors \['model\.norm\.bias'\]"),
])
def test_damaged_or_incomplete_weights_are_refused_by_name(saved, tmp_path, damage, message):
    d = copy_model(saved, tmp_path)
    path = d / "model.safetensors"
    raw, tensors = path.read_bytes(), load_file(path)
    if damage == "header":
        path.write_bytes(garbage(4096) + raw[4096:])
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        if damage == "missing":
            tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.mlp.")}
        elif damage == "unexpected":
            tensors["extra.weight"] = torch.zeros(3)
        elif damage == "mismatched":
            tensors["model.norm.weight"] = torch.ones(3)
        else:
            tensors["model.norm.bias"] = tensors["model.norm.bias"].clone().fill_(float("nan"))
        save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=message) as err:
        load_model(d)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_evaluate_refuses_damaged_weights(saved, tmp_path):
    d = copy_model(saved, tmp_path)
    tensors = load_file(d / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "model.norm.weight"}, d / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(SystemExit, match=r"missing tensors \['model\.norm\.weight'\]"):
        main(["evaluate", "--model", str(d), "--test", str(saved[0] / "test.csv"), "--max_new_tokens", "10",
              "--n_trajectories", "50"])


def test_a_replaced_encoder_folder_is_refused_naming_both_fingerprints(saved, tmp_path):
    _, encoder, other = saved
    d = copy_model(saved, tmp_path)
    shutil.rmtree(d / "encoder")
    other.save_pretrained(d / "encoder")
    with pytest.raises(ValueError, match="trained with encoder") as err:
        load_model_encoder(d)
    assert encoder.fingerprint in str(err.value) and other.fingerprint in str(err.value)
    with pytest.raises(SystemExit, match=f"{encoder.fingerprint}.*{other.fingerprint}"):
        main(["decode", "--model", str(d), "--input", str(saved[0] / "test.csv"), "--output",
              str(tmp_path / "out.csv"), "--max_new_tokens", "10"])


def test_a_model_without_a_recorded_fingerprint_still_loads(saved, tmp_path):
    _, encoder, other = saved
    d = copy_model(saved, tmp_path)
    config = json.loads((d / "config.json").read_text())
    del config["encoder_fingerprint"]  # as models trained before the field existed
    (d / "config.json").write_text(json.dumps(config))
    load_model(d)
    assert load_model_encoder(d).fingerprint == encoder.fingerprint  # its encoder/ folder still decides
    main(["decode", "--model", str(d), "--input", str(saved[0] / "test.csv"), "--output", str(tmp_path / "o.csv"),
          "--max_new_tokens", "10"])
    assert (tmp_path / "o.csv").is_file()
