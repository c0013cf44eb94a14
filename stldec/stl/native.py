"""The fused CPU engine: `fused.cpp`, compiled for this machine on first use, evaluates a whole batch of formulae in
one pass over blocks of 16 trajectories, every live trace in cache.

`library()` builds the kernel with the system C++ compiler (`$CXX`, else `c++`; `-O3 -march=native`) into a cache
folder (`$STLDEC_CACHE`, else `$XDG_CACHE_HOME/stldec` or `~/.cache/stldec`), keyed by the source, the compiler and
this CPU, and loads it with ctypes. Building takes about a second, once per machine; if no compiler is found or the
build fails, `library()` returns None (with one warning) and `robustness` keeps to the torch engine. The size and
sha256 of each build are recorded next to it (`fused-KEY.json`) and checked before every load: a truncated or
altered library (a full disk, a partial copy of the cache) is rebuilt, never loaded (that would kill the process
with SIGBUS).

`NativePlan` lowers the same hash-consed IR as the torch `RobustnessPlan` to a program of one int32 row per node and
gives each node a slot (a trace of T rows), reused once its last reader has run. Trajectories are split among
`torch.get_num_threads()` threads (ctypes releases the GIL); each thread's workspace is (slots + n_vars + 8) * T rows
of 16 values, whatever N is. Values equal the torch engine's bitwise.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused.cpp")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi"]
OPS = {"atom_le": 0, "atom_ge": 1, "not": 2, "and": 3, "or": 4, "F": 5, "G": 6, "U": 7, "U_inclusive": 8}


def _cache_dir() -> Path:
    if "STLDEC_CACHE" in os.environ:
        return Path(os.environ["STLDEC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stldec"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags (a shared cache may serve other machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(dict.fromkeys(x for x in lines if x.startswith(("model name", "flags"))))
    except OSError:
        return platform.processor() + platform.machine()


def _record(path: Path) -> dict:
    """Size and sha256 of a file: what `fused-KEY.json` holds for the library built as `fused-KEY.so`."""
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _intact(path: Path) -> bool:
    """The library exists and matches the size and sha256 recorded when it was built."""
    try:
        return path.is_file() and json.loads(path.with_suffix(".json").read_text()) == _record(path)
    except (OSError, ValueError):
        return False


def _build(cxx: str, path: Path) -> None:
    """Compile fused.cpp to `path`, then write its record (each file written under a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        build = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if build.returncode:
            raise OSError(build.stderr[-2000:])
        record = json.dumps(_record(Path(tmp)))
        os.replace(tmp, path)  # atomic: concurrent processes never see a half-written file
        Path(tmp).write_text(record)  # the temporary name, free again, for the record
        os.replace(tmp, path.with_suffix(".json"))
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use, then cached on disk and verified before each load), or None where it
    cannot be built."""
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, _cpu_id()]).encode()).hexdigest()[:16]
        path = _cache_dir() / f"fused-{key}.so"
        if not _intact(path):
            _build(cxx, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"stldec: the fused CPU robustness kernel could not be built ({e}); using the torch engine "
                      "(set CXX to a C++17 compiler, or STLDEC_CACHE to a writable folder)", RuntimeWarning,
                      stacklevel=2)
        return None
    for name in ("stl_robustness_f32", "stl_robustness_f64"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_int, ctypes.c_void_p, ctypes.c_int64]
    return lib


class NaNInputError(ValueError):
    """Raised by `NativePlan` on trajectories holding NaN; `robustness` then uses the torch engine (NaN propagates)."""


@functools.cache
def _pool(n: int, pid: int) -> ThreadPoolExecutor:
    """n worker threads of this process (keyed by pid: a forked child, e.g. a DataLoader worker, gets its own)."""
    return ThreadPoolExecutor(n, thread_name_prefix="stldec-robustness")


class NativePlan:
    """A batch of formulae compiled to a program for the fused CPU kernel; `plan(x)` as `RobustnessPlan`.

    ir: the lowered `_IR`; roots: IR node of each formula; need[i]: leading samples of node i some reader uses."""

    def __init__(self, ir, roots: list[int], need: list[int], n_points: int, at: str):
        T, self.T, self.at, self.n_vars, n = n_points, n_points, at, ir.n_vars, len(ir.nodes)
        last = {c: i for i, (_, ch, _) in enumerate(ir.nodes) for c in ch}  # the last reader of each node
        slot, free, self.n_slots = [0] * n, [], 0
        prog, thr = [], []
        for i, (op, ch, params) in enumerate(ir.nodes):
            if free:
                slot[i] = free.pop()
            else:
                slot[i], self.n_slots = self.n_slots, self.n_slots + 1
            var, threshold, a, b = 0, 0.0, 0, -1
            if op == "atom":
                var, threshold, lte = params
                op = "atom_le" if lte else "atom_ge"
            elif op in ("F", "G", "U"):
                a, b = params[0], -1 if params[1] is None else params[1]
                op = "U_inclusive" if op == "U" and ir.convention == "reference" else op
            inputs = [slot[c] for c in ch] + [-1] * (2 - len(ch))
            end = T - max((ir.dh[c] for c in ch), default=0)
            prog.append([OPS[op], slot[i], *inputs, var, a, b, need[i], end])
            thr.append(threshold)
            free += [slot[c] for c in set(ch) if last[c] == i]  # read for the last time: reusable
            if i not in last:  # a root nobody reads: written out as soon as it is computed
                free.append(slot[i])
        self.prog = torch.tensor(prog, dtype=torch.int32).view(-1, 9)
        self.thr = torch.tensor(thr, dtype=torch.float64)
        order = sorted(range(len(roots)), key=lambda k: roots[k])  # result rows grouped by node
        self.root_rows = torch.tensor(order, dtype=torch.int32)
        self.root_ptr = torch.searchsorted(torch.tensor([roots[k] for k in order]), torch.arange(n + 1)).to(torch.int32)
        self.root_len = torch.tensor([T - ir.dh[r] for r in roots])
        self.n_roots = len(roots)

    def bytes_per_trajectory(self, itemsize: int = 4) -> int:
        """Result bytes per trajectory: the kernel's own workspace is a few traces per thread, whatever N is."""
        return self.n_roots * (self.T if self.at == "all" else 1) * itemsize

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, n_vars, T) on the CPU, float32 or float64 -> (B, N) at t=0 (at="start"), or (B, N, T) (at="all";
        a transposed view of a (B, T, N) tensor, as the torch engine's)."""
        if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dim() != 3
                or x.shape[1] < self.n_vars or x.shape[2] != self.T):
            raise ValueError(f"this plan takes CPU float32/float64 trajectories (N, >= {self.n_vars}, {self.T}); got "
                             f"{tuple(x.shape)} {x.dtype} on {x.device}")
        lib, (N, n_vars, T) = library(), x.shape
        x, lanes = x.contiguous(), lib.stl_lanes()
        blocks = -(-N // lanes)
        ld = blocks * lanes if self.at == "all" else N  # rows padded to whole vectors: aligned streaming stores
        out = x.new_empty((self.n_roots, T, ld) if self.at == "all" else (self.n_roots, N))
        fn = lib.stl_robustness_f64 if x.dtype == torch.float64 else lib.stl_robustness_f32
        args = (self.prog.data_ptr(), self.thr.data_ptr(), len(self.prog), self.n_slots, self.root_ptr.data_ptr(),
                self.root_rows.data_ptr(), self.at == "all", out.data_ptr(), ld)

        def part(n0: int, n1: int) -> None:
            code = fn(x.data_ptr(), n_vars, T, n0, n1, *args)
            if code == 2:
                raise NaNInputError("the trajectories hold NaN, which the fused kernel does not propagate")
            if code:
                raise MemoryError("stldec: the fused robustness kernel could not allocate its workspace")

        threads = torch.get_num_threads()
        k = max(1, min(threads, blocks))
        cuts = [min(N, lanes * (blocks * j // k)) for j in range(k + 1)]
        if k == 1:
            part(0, N)
        else:
            list(_pool(threads, os.getpid()).map(part, cuts[:-1], cuts[1:]))
        return out[..., :N].transpose(1, 2) if self.at == "all" else out  # (B, N, T), trajectories contiguous
