"""The STL kernel: formulae -> fixed-size embeddings through the robustness of a set of anchor formulae.

A formula φ is represented by its time-0 robustness ρ_φ on N trajectories drawn once from the base measure
(seeded). The kernel is the cosine k(φ, ψ) = cos(ρ_φ, ρ_ψ) and the embedding has one entry per anchor α_j:

    e(φ)_j = exp(-(1 - k(φ, α_j)) / sigma2)          in [exp(-2 / sigma2), 1] = [e^-10, 1] for sigma2 = 0.2

A formula whose robustness is zero on every trajectory has no direction: we define its cosine as 0 with every
other formula and 1 with another all-zero formula (equal vectors), so nothing is ever NaN.

    >>> enc = StlKernelEncoder()                      # the package's own 1024 anchors, 100k x 3 x 100 trajectories
    >>> enc.encode(["eventually[0,5] ( x_0 >= 0.5 )"]).shape
    torch.Size([1, 1024])

The anchors' unit-norm robustness rows (D, N) are computed once, in trajectory chunks so memory stays bounded,
and cached; `save_pretrained` writes JSON + the anchors as text (+ optionally that cache as safetensors).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import _package_version
from .formula import Formula, STLParseError, as_formulae, parse
from .generator import FormulaGenerator
from .measure import BaseMeasure
from .semantics import robustness

CONVENTIONS = ("reference", "textbook")
CONFIG_NAME, ANCHORS_NAME, CACHE_NAME = "encoder_config.json", "anchors.txt", "anchor_robustness.safetensors"
DEFAULT_ANCHORS = "anchors_default.txt"  # make_anchors(1024, seed=0), written by benchmarks/make_default_anchors.py
# the published anchors' generator (research §4.2): free branching, leaf probability 0.4, bounds up to R = 20; the
# depth cap of 12 matches their depth/size law (mean depth 5.1 vs 5.2 here) without the reference's rare giants
ANCHOR_GENERATOR = dict(preset="random", leaf_prob=0.4, time_bound_max_range=20, max_depth=12, unique=True)


def make_anchors(n: int = 1024, *, n_vars: int = 3, n_points: int = 100, seed: int = 0) -> list[Formula]:
    """n distinct random anchor formulae drawn like the published set (`ANCHOR_GENERATOR`), horizon < n_points."""
    return FormulaGenerator(**ANCHOR_GENERATOR, seed=seed, n_vars=n_vars, n_points=n_points).sample(n)


def read_formula_file(path: str | os.PathLike, dialect: str = "reference") -> list[Formula]:
    """One formula per line; blank lines and lines starting with '#' are skipped. A malformed line fails with a
    ValueError naming the file, line and column."""
    formulae = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            formulae.append(parse(text, dialect=dialect))
        except STLParseError as e:
            column = line.index(text) + e.position + 1
            raise ValueError(f"{path}, line {n}, column {column}: {e.reason}") from None
    return formulae


def check_fits(formulae: Sequence[Formula], n_vars: int, n_points: int, what: str = "formula") -> None:
    """Raise ValueError naming the first formula that reads a variable >= n_vars or needs more than n_points."""
    for i, f in enumerate(formulae):
        if f.time_horizon >= n_points:
            raise ValueError(f"{what} {i} `{f}` has time horizon {f.time_horizon}, but the trajectories have "
                             f"{n_points} points (need horizon <= n_points - 1 = {n_points - 1})")
        if f.variables and max(f.variables) >= n_vars:
            raise ValueError(f"{what} {i} `{f}` reads x_{max(f.variables)}, but n_vars = {n_vars} "
                             f"(variables x_0..x_{n_vars - 1})")


def robustness_matrix(formulae: Sequence[Formula], trajectories: torch.Tensor, convention: str = "reference",
                      chunk_size: int | None = None) -> torch.Tensor:
    """Time-0 robustness (B, N) of B formulae on trajectories (N, n_vars, T), float32 on their device.

    The semantics engine works `chunk_size` trajectories at a time (default: what fits its workspace budget); the
    values do not depend on it. Non-finite values (possible only in the textbook convention) raise ValueError.
    """
    out = robustness(formulae, trajectories, convention=convention, chunk_size=chunk_size)
    if not torch.isfinite(out).all():
        bad = formulae[int((~torch.isfinite(out)).any(1).nonzero()[0])]
        raise ValueError(f"non-finite robustness for `{bad}` under the {convention} convention")
    return out


def unit_rows(rho: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; all-zero rows stay zero. (B, N) -> (B, N)"""
    return rho / rho.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rho.dtype).tiny)


def cosine(ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
    """Cosine Gram matrix (A, B) of unit rows ua (A, N), ub (B, N); zero rows: 1 with each other, 0 otherwise."""
    c = (ua @ ub.T).clamp(-1.0, 1.0)
    za, zb = ~ua.any(1), ~ub.any(1)
    return torch.where(za[:, None] & zb[None, :], torch.ones_like(c), c)


def cos_rho(formulae_a: Formula | str | Sequence[Formula | str], formulae_b: Formula | str | Sequence[Formula | str],
            trajectories: torch.Tensor, *, convention: str = "reference", dialect: str = "reference") -> torch.Tensor:
    """Paired cosine of time-0 robustness, cos(ρ_{a_i}, ρ_{b_i}) on `trajectories` (N, n_vars, T) -> (B,) float32.

    The evaluation metric (decoded vs gold); zero-robustness formulae follow the module's rule (never NaN).
    """
    a, b = as_formulae(formulae_a, dialect), as_formulae(formulae_b, dialect)
    if len(a) != len(b):
        raise ValueError(f"cos_rho pairs formulae: got {len(a)} and {len(b)}")
    ua = unit_rows(robustness_matrix(a, trajectories, convention))
    ub = unit_rows(robustness_matrix(b, trajectories, convention))
    both_zero = ~ua.any(1) & ~ub.any(1)
    return torch.where(both_zero, 1.0, (ua * ub).sum(1).clamp(-1.0, 1.0)).cpu()


class StlKernelEncoder:
    """Embeds formulae as exp(-(1 - cos(ρ_φ, ρ_α)) / sigma2) against D anchors α; see the module docstring.

    anchors: None (the package's default set), a path to a text file (one formula per line), or a sequence of
    Formula/str. Strings are read in `dialect`; robustness follows `convention`. `device=None` uses CUDA when
    available; trajectories are always sampled on the CPU (same values on any device) and embeddings returned
    on the CPU. `chunk_size`: trajectories per semantics call (None: automatic); it does not change results.
    """

    def __init__(self, anchors: str | os.PathLike | Sequence[Formula | str] | None = None, *,
                 n_trajectories: int = 100_000, n_vars: int = 3, n_points: int = 100, sigma2: float = 0.2,
                 seed: int = 0, convention: str = "reference", dialect: str = "reference",
                 device: str | torch.device | None = None, chunk_size: int | None = None):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
        if min(n_trajectories, n_vars, n_points) < 1 or not sigma2 > 0:
            raise ValueError("n_trajectories, n_vars, n_points must be >= 1 and sigma2 > 0")
        if anchors is None:
            anchors = read_formula_file(files("stldec.stl") / DEFAULT_ANCHORS)
        elif isinstance(anchors, str | os.PathLike):
            if not Path(anchors).is_file():
                raise FileNotFoundError(f"anchor file {anchors!r} not found (pass a list to give formulae directly)")
            anchors = read_formula_file(anchors, dialect)
        else:
            anchors = as_formulae(list(anchors), dialect)
        if not anchors:
            raise ValueError("the anchor set is empty")
        check_fits(anchors, n_vars, n_points, "anchor")
        self.anchors: list[Formula] = anchors
        self.n_trajectories, self.n_vars, self.n_points, self.sigma2 = n_trajectories, n_vars, n_points, float(sigma2)
        self.seed, self.convention, self.dialect, self.chunk_size = seed, convention, dialect, chunk_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._trajectories: torch.Tensor | None = None  # (N, n_vars, T), sampled on first use
        self._anchor_units: torch.Tensor | None = None  # (D, N) unit-norm anchor robustness, computed on first use

    @property
    def embedding_dim(self) -> int:
        return len(self.anchors)

    @property
    def anchors_hash(self) -> str:
        """sha256 of the anchors in the reference dialect, one per line (independent of `dialect`)."""
        return hashlib.sha256("\n".join(f.to_string() for f in self.anchors).encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        """Everything that determines the embeddings; datasets record it to refuse a mismatched encoder."""
        return (f"stlkernel-{self.anchors_hash[:16]}-D{self.embedding_dim}-N{self.n_trajectories}-v{self.n_vars}"
                f"-T{self.n_points}-s{self.sigma2!r}-seed{self.seed}-{self.convention}")

    @property
    def trajectories(self) -> torch.Tensor:
        """The N base-measure trajectories (N, n_vars, n_points) on `device`, sampled once from `seed`."""
        if self._trajectories is None:
            x = BaseMeasure().sample(self.n_trajectories, self.n_vars, self.n_points, seed=self.seed)
            self._trajectories = x.to(self.device)
        return self._trajectories

    @property
    def anchor_units(self) -> torch.Tensor:
        """Unit-norm time-0 robustness of the anchors (D, N), float32 on `device`, computed once."""
        if self._anchor_units is None:
            self._anchor_units = unit_rows(self._robustness(self.anchors))
        return self._anchor_units

    def _prepare(self, formulae: Formula | str | Sequence[Formula | str]) -> list[Formula]:
        formulae = as_formulae(formulae, self.dialect)
        check_fits(formulae, self.n_vars, self.n_points)
        return formulae

    def _robustness(self, formulae: list[Formula]) -> torch.Tensor:
        return robustness_matrix(formulae, self.trajectories, self.convention, self.chunk_size)

    def _units(self, formulae: list[Formula], batch_size: int) -> torch.Tensor:
        """Unit robustness rows of `formulae` (B, N), computed `batch_size` formulae at a time."""
        return torch.cat([unit_rows(self._robustness(formulae[i : i + batch_size]))
                          for i in range(0, len(formulae), batch_size)])

    @torch.no_grad()
    def encode(self, formulae: Formula | str | Sequence[Formula | str], *, batch_size: int = 256) -> torch.Tensor:
        """Embeddings (B, D) float32 on the CPU; `batch_size` formulae share one semantics pass."""
        formulae = self._prepare(formulae)
        out = torch.empty(len(formulae), self.embedding_dim)
        for i in range(0, len(formulae), batch_size):
            out[i : i + batch_size] = self.embed_robustness(self._robustness(formulae[i : i + batch_size])).cpu()
        return out

    def embed_robustness(self, rho: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D) from time-0 robustness rows (B, N) on the encoder's trajectories; differentiable in
        `rho` (decode-time search and mining optimise through it). `encode` is this after the robustness."""
        if rho.dim() != 2 or rho.shape[1] != self.n_trajectories:
            raise ValueError(f"robustness must have shape (B, {self.n_trajectories}), got {tuple(rho.shape)}")
        return torch.exp((cosine(unit_rows(rho), self.anchor_units.to(rho)) - 1.0) / self.sigma2)

    @torch.no_grad()
    def kernel(self, formulae_a: Formula | str | Sequence[Formula | str],
               formulae_b: Formula | str | Sequence[Formula | str], *, batch_size: int = 256) -> torch.Tensor:
        """Cosine kernel matrix (len(a), len(b)) float32 on the CPU, on the encoder's trajectories."""
        ua = self._units(self._prepare(formulae_a), batch_size)
        ub = self._units(self._prepare(formulae_b), batch_size)
        return cosine(ua, ub).cpu()

    def config(self) -> dict:
        return dict(n_trajectories=self.n_trajectories, n_vars=self.n_vars, n_points=self.n_points,
                    sigma2=self.sigma2, seed=self.seed, convention=self.convention, dialect=self.dialect,
                    n_anchors=self.embedding_dim, anchors_sha256=self.anchors_hash, fingerprint=self.fingerprint,
                    stldec_version=_package_version())

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_robustness: bool = False) -> None:
        """Write encoder_config.json and anchors.txt (in `dialect`); with `save_robustness`, also the anchors'
        unit robustness (D, N) as safetensors so `from_pretrained` skips recomputing it (400 MB at 1024 x 100k)."""
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / ANCHORS_NAME).write_text("".join(f.to_string(dialect=self.dialect) + "\n" for f in self.anchors))
        (d / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2) + "\n")
        if save_robustness:
            save_file({"anchor_units": self.anchor_units.cpu().contiguous()}, str(d / CACHE_NAME),
                      metadata={"fingerprint": self.fingerprint})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None,
                        chunk_size: int | None = None) -> StlKernelEncoder:
        """Rebuild a saved encoder (same anchors, trajectories and embeddings); uses the cached robustness if saved."""
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {str(d)!r}: not a saved StlKernelEncoder")
        cfg = json.loads((d / CONFIG_NAME).read_text())
        keys = ("n_trajectories", "n_vars", "n_points", "sigma2", "seed", "convention", "dialect")
        enc = cls(d / ANCHORS_NAME, **{k: cfg[k] for k in keys}, device=device, chunk_size=chunk_size)
        if enc.anchors_hash != cfg["anchors_sha256"]:
            raise ValueError(f"{d / ANCHORS_NAME} does not match the anchors hash in {CONFIG_NAME}")
        if (d / CACHE_NAME).is_file():
            with safe_open(str(d / CACHE_NAME), "pt") as f:
                if f.metadata().get("fingerprint") != enc.fingerprint:
                    raise ValueError(f"{d / CACHE_NAME} was computed by another encoder ({f.metadata()})")
                enc._anchor_units = f.get_tensor("anchor_units").to(enc.device)
        return enc

    def __repr__(self) -> str:
        return f"StlKernelEncoder({self.fingerprint}, device={self.device})"
