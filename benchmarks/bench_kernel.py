"""Kernel embedding benchmark: the published 1024 anchors at 10k and 100k trajectories.

For each trajectory count N: time to sample the trajectories, time to compute the anchors' robustness once (the
cached (D, N) matrix), then embedding throughput (formulae/s) on the 3000-formula test set (all of it, or a seeded
random `--embed_n` of it), and the process's peak RSS so far. Targets on the 2-core CPU: anchors at 100k
<= 3 min; then >= 5 formulae/s at 100k and >= 50/s at 10k.

    .venv/bin/python benchmarks/bench_kernel.py [--sizes 10000 100000] [--embed_n 3000] [--device cpu]
"""

import argparse
import csv
import platform
import random
import resource
import time
from pathlib import Path

import torch

from stldec.stl.kernel import StlKernelEncoder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def fmt(a: tuple[float, float], b: tuple[float, float]) -> str:
    return f"{b[0] - a[0]:.1f} ({b[1] - a[1]:.1f})"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anchors", default=str(DATA / "anchors_1024.txt"))
    p.add_argument("--test", default=str(DATA / "balanced_test_3000.csv"))
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--embed_n", type=int, nargs="+", default=[3000], help="formulae embedded (one, or one per size)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    with open(args.test, newline="") as f:
        test = [row["formula"] for row in csv.DictReader(f)]
    embed_n = args.embed_n * len(args.sizes) if len(args.embed_n) == 1 else args.embed_n
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, device {args.device}")
    print("Times are wall (CPU) seconds; CPU time counts both threads and is the fairer number on a shared machine.")
    print("| N | sample | anchors' robustness | embedded | embed | formulae/s wall (CPU) | peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for n, m in zip(args.sizes, embed_n):
        enc = StlKernelEncoder(args.anchors, n_trajectories=n, device=args.device)
        t0 = clock()
        x = enc.trajectories  # (N, 3, 100), sampled once
        t1 = clock()
        a = enc.anchor_units  # (1024, N), computed once
        t2 = clock()
        print(f"  N={n}: anchors' robustness {fmt(t1, t2)} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)
        enc.encode(test if m >= len(test) else random.Random(0).sample(test, m))  # the file is sorted by depth
        t3 = clock()
        assert x.shape[0] == a.shape[1] == n
        rate = f"{m / (t3[0] - t2[0]):.1f} ({m / (t3[1] - t2[1]):.1f})"
        row = f"| {n} | {fmt(t0, t1)} | {fmt(t1, t2)} | {m} | {fmt(t2, t3)} | {rate} | {peak_rss_gb():.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
