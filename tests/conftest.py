"""Suite-wide settings: one torch thread (tiny models and small batches run fastest that way, and the subprocesses
the end-to-end tests start inherit it through OMP_NUM_THREADS), and no network for the Hub libraries."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after the environment above)

torch.set_num_threads(1)
