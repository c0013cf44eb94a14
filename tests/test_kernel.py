"""StlKernelEncoder and cos_rho: kernel invariants, embedding range, save/load, anchor sources, errors."""

import json
import math

import pytest
import torch

from stldec.stl import Not, parse
from stldec.stl.kernel import StlKernelEncoder, cos_rho, cosine, unit_rows

ANCHORS = ["x_0 >= 0.1", "eventually[0,4] ( x_1 <= 0.0 )", "( x_2 >= 0.3 until[1,3] x_0 <= 0.2 )",
           "always[2,inf] ( ( x_0 <= 0.5 or x_1 >= -0.2 ) )", "not ( ( x_1 >= 0.0 until x_2 <= 0.4 ) )"]
PHIS = ["always[0,3] ( x_0 >= -0.2 )", "x_1 <= 0.4", "( eventually[1,6] ( x_2 >= 0.1 ) and x_0 <= 1.0 )",
        "eventually ( not ( x_1 <= -0.3 ) )", "( x_0 >= -1.0 until[0,inf] always[0,2] ( x_1 >= 0.2 ) )"]
SMALL = dict(n_trajectories=400, n_points=30)


@pytest.fixture(scope="module")
def enc():
    return StlKernelEncoder(ANCHORS, **SMALL)


def test_kernel_symmetric_with_unit_diagonal(enc):
    k = enc.kernel(PHIS + ANCHORS, PHIS + ANCHORS)
    assert k.shape == (10, 10) and k.dtype == torch.float32
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k.diagonal(), torch.ones(10))
    assert k.abs().max() <= 1
    assert enc.kernel(PHIS[:2], ANCHORS).shape == (2, 5)


def test_embedding_is_exponentiated_kernel_in_range(enc):
    z = enc.encode(PHIS + ANCHORS)
    assert z.shape == (10, 5) and z.dtype == torch.float32 and z.device.type == "cpu"
    assert z.min() >= math.exp(-2 / enc.sigma2) * (1 - 1e-6) and z.max() <= 1
    torch.testing.assert_close(z, torch.exp((enc.kernel(PHIS + ANCHORS, ANCHORS) - 1) / enc.sigma2))
    torch.testing.assert_close(z[5:].diagonal(), torch.ones(5))  # an anchor matches itself exactly
    negated = enc.encode([Not(parse(a)) for a in ANCHORS]).diagonal()  # ρ_¬α = -ρ_α: cos -1, the minimum e^-10
    torch.testing.assert_close(negated, torch.full((5,), math.exp(-2 / enc.sigma2)))


def test_deterministic_across_instances_and_seed_matters(enc):
    z = enc.encode(PHIS)
    assert torch.equal(z, StlKernelEncoder(ANCHORS, **SMALL).encode(PHIS))
    assert not torch.equal(z, StlKernelEncoder(ANCHORS, **SMALL, seed=1).encode(PHIS))


def test_chunked_equals_unchunked(enc):
    chunked = StlKernelEncoder(ANCHORS, **SMALL, chunk_size=97)
    torch.testing.assert_close(chunked.encode(PHIS, batch_size=2), enc.encode(PHIS), rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.anchor_units, enc.anchor_units, rtol=0, atol=1e-7)


@pytest.mark.parametrize("save_robustness", [False, True])
def test_save_load_identical(enc, tmp_path, save_robustness):
    enc.save_pretrained(tmp_path, save_robustness=save_robustness)
    cfg = json.loads((tmp_path / "encoder_config.json").read_text())
    assert cfg["fingerprint"] == enc.fingerprint and cfg["n_trajectories"] == 400 and "stldec_version" in cfg
    assert (tmp_path / "anchor_robustness.safetensors").is_file() == save_robustness
    loaded = StlKernelEncoder.from_pretrained(tmp_path)
    assert loaded.fingerprint == enc.fingerprint and loaded.anchors == enc.anchors
    assert (loaded._anchor_units is not None) == save_robustness  # the cache skips recomputation
    assert torch.equal(loaded.encode(PHIS), enc.encode(PHIS))


def test_load_refuses_tampered_files(enc, tmp_path):
    enc.save_pretrained(tmp_path, save_robustness=True)
    cfg = json.loads((tmp_path / "encoder_config.json").read_text())
    (tmp_path / "encoder_config.json").write_text(json.dumps({**cfg, "seed": 5}))
    with pytest.raises(ValueError, match="another encoder"):
        StlKernelEncoder.from_pretrained(tmp_path)
    (tmp_path / "anchors.txt").write_text("x_0 >= 0.0\n")
    with pytest.raises(ValueError, match="does not match the anchors hash"):
        StlKernelEncoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        StlKernelEncoder.from_pretrained(tmp_path / "missing")


def test_anchors_from_file_list_formulae_and_dialect(enc, tmp_path):
    path = tmp_path / "anchors.txt"
    path.write_text("# a comment\n\n" + "\n".join(ANCHORS) + "\n")
    from_file = StlKernelEncoder(str(path), **SMALL)
    assert from_file.anchors == enc.anchors and from_file.fingerprint == enc.fingerprint
    assert StlKernelEncoder([parse(a) for a in ANCHORS], **SMALL).fingerprint == enc.fingerprint
    textbook = [parse(a).to_string(dialect="textbook") for a in ANCHORS]
    assert StlKernelEncoder(textbook, dialect="textbook", **SMALL).fingerprint == enc.fingerprint


def test_default_anchor_set():
    default = StlKernelEncoder(n_trajectories=16)
    assert default.embedding_dim == 1024 and len(set(default.anchors)) == 1024
    assert max(a.time_horizon for a in default.anchors) < 100 and max(max(a.variables) for a in default.anchors) < 3
    assert default.encode(PHIS[:1]).shape == (1, 1024)


def test_fingerprint_tracks_every_parameter(enc):
    changed = [dict(n_trajectories=401), dict(n_points=31), dict(n_vars=4), dict(sigma2=0.5), dict(seed=1),
               dict(convention="textbook")]
    prints = {StlKernelEncoder(ANCHORS, **{**SMALL, **c}).fingerprint for c in changed}
    prints.add(StlKernelEncoder(ANCHORS[:4], **SMALL).fingerprint)
    assert len(prints) == len(changed) + 1 and enc.fingerprint not in prints


def test_textbook_convention_is_finite():
    z = StlKernelEncoder(ANCHORS, **SMALL, convention="textbook").encode(PHIS)
    assert torch.isfinite(z).all() and z.min() > 0


def test_errors(enc):
    with pytest.raises(ValueError, match="empty"):
        StlKernelEncoder([], **SMALL)
    with pytest.raises(ValueError, match="horizon"):
        StlKernelEncoder(["eventually[0,40] ( x_0 >= 0.0 )"], **SMALL)
    with pytest.raises(ValueError, match="x_3"):
        StlKernelEncoder(["x_3 >= 0.0"], **SMALL)
    with pytest.raises(ValueError, match="convention"):
        StlKernelEncoder(ANCHORS, **SMALL, convention="boolean")
    with pytest.raises(FileNotFoundError):
        StlKernelEncoder("no_such_anchor_file.txt", **SMALL)
    with pytest.raises(ValueError, match="horizon"):
        enc.encode(["always[0,31] ( x_0 >= 0.0 )"])
    with pytest.raises(ValueError, match="x_5"):
        enc.kernel(["x_5 >= 0.0"], ANCHORS)


def test_zero_robustness_rows_are_never_nan():
    u = unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [-3.0, -4.0]]))
    k = cosine(u, u)
    assert torch.isfinite(k).all()
    torch.testing.assert_close(k.diagonal(), torch.ones(4))  # a zero row equals itself
    assert k[0, 1] == 0 and k[1, 2] == 1 and k[0, 3] == -1


def test_cos_rho(enc):
    x = enc.trajectories
    torch.testing.assert_close(cos_rho(PHIS, PHIS, x), torch.ones(5))
    torch.testing.assert_close(cos_rho(PHIS, [Not(parse(p)) for p in PHIS], x), -torch.ones(5))
    torch.testing.assert_close(cos_rho(PHIS, ANCHORS, x), enc.kernel(PHIS, ANCHORS).diagonal())
    with pytest.raises(ValueError, match="pairs"):
        cos_rho(PHIS, ANCHORS[:2], x)
