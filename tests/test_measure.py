"""BaseMeasure: shapes, reproducibility across chunking/offsets/devices, and the distribution's invariants."""

import subprocess
import sys

import pytest
import torch

from stldec.stl import BaseMeasure
from stldec.stl.measure import BLOCK


def test_shape_dtype_device():
    x = BaseMeasure().sample(5, 2, 7)
    assert x.shape == (5, 2, 7) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert BaseMeasure().sample(0, 3, 10).shape == (0, 3, 10)
    assert BaseMeasure().sample(4, dtype=torch.float64).dtype == torch.float64
    assert torch.isfinite(BaseMeasure().sample(3000)).all()


def test_deterministic_and_seed_dependent():
    m = BaseMeasure()
    assert torch.equal(m.sample(50, seed=3), BaseMeasure().sample(50, seed=3))
    assert not torch.equal(m.sample(50, seed=3), m.sample(50, seed=4))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(m.sample(20, generator=g1), m.sample(20, generator=g2))
    assert not torch.equal(m.sample(20, generator=g1), m.sample(20, generator=g2.manual_seed(8)))


def test_independent_of_request_size_chunking_and_dtype():
    m, n = BaseMeasure(), 2 * BLOCK + 300
    full = m.sample(n, seed=1)
    assert torch.equal(m.sample(10, seed=1), full[:10])  # prefix of a larger request
    cuts = [0, 1, 700, BLOCK, BLOCK + 1, 2 * BLOCK + 5, n]
    pieces = [m.sample(b - a, seed=1, offset=a) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat(pieces), full)  # any chunking of the stream gives the same values
    assert torch.equal(m.sample(n, seed=1, dtype=torch.float64).float(), full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_values_on_cuda():
    x = BaseMeasure().sample(100, device="cuda")
    assert x.device.type == "cuda" and torch.equal(x.cpu(), BaseMeasure().sample(100))


def test_total_variation_is_v_and_chi2_mean():
    x = BaseMeasure(mu1=1.5, sigma1=0.0).sample(200, 2, 50, dtype=torch.float64)
    tv = x.diff(dim=-1).abs().sum(dim=-1)  # (N, V)
    torch.testing.assert_close(tv, torch.full_like(tv, 2.25), rtol=1e-5, atol=1e-5)
    tv = BaseMeasure().sample(6000, 3, 20).diff(dim=-1).abs().sum(dim=-1)  # V = Z^2 ~ chi2_1: mean 1, median 0.4549
    assert abs(tv.mean().item() - 1.0) < 0.05
    assert abs((tv < 0.4549).float().mean().item() - 0.5) < 0.02


def test_initial_value_moments():
    x0 = BaseMeasure(mu0=2.0, sigma0=0.5).sample(6000, 3, 2)[..., 0]
    assert abs(x0.mean().item() - 2.0) < 0.02 and abs(x0.std().item() - 0.5) < 0.02


def test_slope_signs_and_flip_rate():
    up = BaseMeasure(q=0.0, q0=1.0, sigma0=0.0, mu1=1.0, sigma1=0.0).sample(100, 1, 30)
    assert (up.diff(dim=-1) >= 0).all() and torch.allclose(up[..., -1], torch.ones(100))  # spacings sum to 1
    # q = 1 flips at every step, starting from s_1 = -s_0
    alt = BaseMeasure(q=1.0, q0=1.0, mu1=1.0, sigma1=0.0).sample(10, 1, 8).diff(dim=-1).sign()
    assert torch.equal(alt, torch.tensor([-1.0, 1.0] * 3 + [-1.0]).expand(10, 1, 7))
    s = BaseMeasure(q=0.2, q0=0.7, sigma0=0.0, mu1=1.0, sigma1=0.0).sample(3000, 2, 60).diff(dim=-1).sign()
    flips = (s[..., 1:] != s[..., :-1]).float().mean().item()
    assert abs(flips - 0.2) < 0.005
    assert abs((s[..., 0] > 0).float().mean().item() - (0.7 * 0.8 + 0.3 * 0.2)) < 0.025  # P(s_1 = +1)


def test_spacings_are_uniform_order_statistics():
    # with V = 1 and no flips, x_k - x_0 are the sorted uniforms: mean k / (P - 1), marginal U(0, 1) overall
    x = BaseMeasure(q=0.0, q0=1.0, sigma0=0.0, mu1=1.0, sigma1=0.0).sample(4000, 1, 11)[:, 0]  # (N, 11)
    torch.testing.assert_close(x.mean(dim=0), torch.linspace(0, 1, 11), atol=0.01, rtol=0)
    inner = x[:, 1:-1].flatten()
    assert abs(inner.var().item() - 1 / 12) < 0.003


def test_bad_arguments():
    with pytest.raises(ValueError, match="probabilities"):
        BaseMeasure(q=1.5)
    with pytest.raises(ValueError, match="sigma"):
        BaseMeasure(sigma0=-1)
    with pytest.raises(ValueError, match="n_points"):
        BaseMeasure().sample(10, 3, 1)
    with pytest.raises(ValueError, match="floating"):
        BaseMeasure().sample(10, dtype=torch.int64)


@pytest.mark.slow
def test_memory_stays_small_at_full_size():
    """100k x 3 x 100 (120 MB of float32) must not need the reference's ~0.7 GB transient."""
    code = (
        "import resource, torch; from stldec.stl import BaseMeasure; m = BaseMeasure(); m.sample(2000); "
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; x = m.sample(100_000); "
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024)"
    )
    grown_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 120 + 40
