"""Datasets of STL formulae for training: files <-> HF `datasets`, an on-the-fly stream, and the batch collator.

Rows everywhere have the columns `formula` (str, reference dialect), `depth` (int) and, for the conditional
decoder, `embedding` (list of float32, one entry per encoder anchor).

- `load_formulae(path, encoder=None)`: CSV / JSONL / Parquet / a `save_to_disk` folder / a `build_dataset` folder
  -> `datasets.Dataset`; fills in `depth` and, given an encoder, the embeddings when the file has none; refuses
  embeddings with NaN / inf / missing values, naming their rows. Every
  formula is parsed on the way in: an empty file or cell, a CSV line with an unquoted comma or a malformed formula
  fails with a one-line ValueError naming the file and line (`read_checked`, `check_formulae`).
- `build_dataset(out, n, encoder, preset=...)`: generated formulae + embeddings as Parquet shards; each shard is
  written to a temporary name and renamed, so an interrupted build resumes at the first missing shard and gives the
  same rows as an uninterrupted one. `save_formulae` writes any dataset as CSV / JSONL / Parquet.
- `FormulaStream`: an endless, seeded stream of generated and embedded formulae for "infinite data" training. Chunk
  c of the global stream is a pure function of (seed, c); process `rank` of `world` (and DataLoader worker w of W)
  takes the chunks c = rank*W + w (mod world*W), so no two processes ever see the same sample, and `skip()` resumes
  at a position without replaying what was already consumed.
- `lazy_tokenize(ds, tokenizer)`: token ids computed on access (`with_transform`) plus a precomputed `length`
  column for length grouping; rows longer than the model's positions are dropped (a warning above
  `DROP_WARN_SHARE`). `StlCollator` pads each batch to its own longest row, labels -100 on padding.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from datasets.exceptions import DatasetGenerationError

from .stl import Formula, FormulaGenerator, StlKernelEncoder, STLParseError, parse

BUILD_META = "stldec_dataset.json"
ENCODER_KEY = b"stldec.encoder"  # Parquet schema metadata: the fingerprint of the encoder that made `embedding`
FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COLUMNS = ("formula", "depth", "embedding")
DROP_WARN_SHARE = 0.01  # lazy_tokenize warns when it drops more than this share of the rows as too long


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of `keys` (independent streams for (seed, shard), (seed, chunk), ...)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint32).astype(np.uint64) @ [1 << 31, 1])


# ---------------------------------------------------------------------------------------------------------------
# files


def read_checked(path: str | os.PathLike, read: Callable[[], Any]) -> Any:
    """`read()` (pandas or `datasets`) of the table file or folder `path`, failing with a one-line ValueError that
    names the file, and the line where one is at fault, when it is empty, has no rows or cannot be read."""
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise ValueError(f"{p} is empty")
    try:
        table = read()
    except (ValueError, DatasetGenerationError) as e:
        raise ValueError(_format_problem(p) or f"{p}: {e.__cause__ or e}") from e
    if len(table) == 0:
        raise ValueError(_format_problem(p) or f"{p} has no rows")
    return table


def _format_problem(p: Path) -> str | None:
    """The first line of a CSV/JSONL file that breaks its format (a CSV line with another number of fields than the
    header, usually an unquoted comma; a JSONL line that is not JSON), or a CSV with no rows; None if none is found."""
    if p.suffix == ".csv":
        with open(p, newline="") as f:
            lines = csv.reader(f)
            header, rows = next(lines, []), 0
            for row in lines:
                if row and len(row) != len(header):
                    return (f"{p}, line {lines.line_num}: {len(row)} fields but the header has {len(header)} "
                            f"({','.join(header)}); quote a formula that holds a comma")
                rows += bool(row)
        return None if rows else f"{p} has no rows (only the header line)"
    if p.suffix == ".jsonl":
        with open(p) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as e:
                        return f"{p}, line {n}: not a JSON object ({e})"
    return None


def check_formulae(formulae: Sequence, path: str | os.PathLike) -> list:
    """The parsed `formula` column of the table `path`; an empty cell or a malformed formula fails with a ValueError
    naming its line (CSV, JSONL; else its row) and where in the formula parsing stopped, or the line that breaks the
    file's format (pandas reads some CSV lines with an unquoted comma without complaint, but not as intended)."""
    p = Path(path)
    first_line = {".csv": 2, ".jsonl": 1}.get(p.suffix)  # CSV: line 1 is the header
    parsed = []
    for i, text in enumerate(formulae):
        where = f"{p}, line {i + first_line}" if first_line else f"{p}, row {i + 1}"
        if not isinstance(text, str) or not text.strip():
            raise ValueError(_format_problem(p) or f"{where}: empty formula cell")
        try:
            parsed.append(parse(text))
        except STLParseError as e:
            raise ValueError(_format_problem(p) or f"{where}: formula {text!r}, character {e.position + 1}: "
                             f"{e.reason}") from None
    return parsed


def _normalise(ds: datasets.Dataset, path: str) -> datasets.Dataset:
    """Rename known columns to lower case, check every formula, parse embeddings stored as JSON text, fill in
    `depth`."""
    renames = {c: c.lower() for c in ds.column_names if c.lower() in COLUMNS and c != c.lower()}  # `Formula`, ...
    ds = ds.rename_columns(renames) if renames else ds
    if "formula" not in ds.column_names:
        raise ValueError(f"{path}: no `formula` column (columns: {ds.column_names})")
    formulae = check_formulae(ds["formula"], path)
    if "embedding" in ds.column_names and isinstance(ds[0]["embedding"], str):
        ds = ds.map(lambda b: {"embedding": [json.loads(e) for e in b["embedding"]]}, batched=True)
    if "depth" not in ds.column_names:
        ds = ds.add_column("depth", [f.depth for f in formulae])
    return ds


def load_formulae(path: str | os.PathLike, encoder: StlKernelEncoder | None = None, *,
                  batch_size: int = 256) -> datasets.Dataset:
    """Read a formula file or dataset folder as a `datasets.Dataset` with columns formula, depth[, embedding].

    Without an `embedding` column the rows are embedded with `encoder` when one is given. A file or folder whose
    embeddings record their encoder (see `built_with`) refuses a different `encoder`; embeddings that are missing or
    hold NaN / inf values are refused, naming the rows (see `check_embedding_rows`).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file {str(p)!r} not found")
    if encoder is not None:
        check_built_with(p, encoder)
    if p.is_dir() and (p / BUILD_META).is_file():
        meta = json.loads((p / BUILD_META).read_text())
        shards = [str(p / _shard_name(i)) for i in range(meta["n_shards"])]
        missing = [s for s in shards if not os.path.exists(s)]
        if missing:
            raise ValueError(f"{p} is an unfinished build ({len(missing)} shards missing): rerun `stldec data build`")
        return check_embedding_rows(datasets.Dataset(pa.concat_tables([pq.read_table(s) for s in shards])), p)
    if p.is_dir():
        ds = read_checked(p, lambda: datasets.load_from_disk(str(p)))
    elif p.suffix in FORMATS:
        ds = read_checked(p, lambda: datasets.load_dataset(FORMATS[p.suffix], data_files=str(p), split="train"))
    else:
        raise ValueError(f"{p}: unknown data format (expected one of {sorted(FORMATS)} or a dataset folder)")
    ds = check_embedding_rows(_normalise(ds, str(p)), p)
    return add_embeddings(ds, encoder, batch_size=batch_size) if encoder is not None else ds


def check_embedding_rows(ds: datasets.Dataset, path: str | os.PathLike) -> datasets.Dataset:
    """`ds` unchanged, or a ValueError naming the rows of `path` (0-based, in file order) whose `embedding` is
    missing or holds a missing, NaN or inf value (a model would meet them only as a position in some batch)."""
    if "embedding" not in ds.column_names:
        return ds
    col = ds.data.column("embedding").combine_chunks()  # (list) array, one list per row
    finite = pc.fill_null(pc.is_finite(col.flatten()), False).to_numpy(zero_copy_only=False)
    bad = set(col.value_parent_indices().to_numpy()[~finite].tolist())
    bad |= set(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)).tolist())
    if bad:
        rows = sorted(bad)
        raise ValueError(f"{path}: {len(rows)} of {len(ds)} rows have a missing, NaN or inf embedding: rows "
                         f"{rows[:10]}{' ...' * (len(rows) > 10)} (0-based data rows, in file order)")
    return ds


def add_embeddings(ds: datasets.Dataset, encoder: StlKernelEncoder, *, batch_size: int = 256) -> datasets.Dataset:
    """`ds` with an `embedding` column computed by `encoder` (unchanged if it already has one)."""
    if "embedding" in ds.column_names:
        return ds
    # the encoder's fingerprint names the result: `datasets` would otherwise hash the encoder's tensors to name it
    name = hashlib.sha256(f"{ds._fingerprint}-{encoder.fingerprint}".encode()).hexdigest()[:32]
    return ds.map(lambda b: {"embedding": encoder.encode(b["formula"]).tolist()}, batched=True, batch_size=batch_size,
                  desc="embedding", new_fingerprint=name)


def built_with(path: str | os.PathLike) -> str | None:
    """The fingerprint of the encoder that embedded `path`: recorded by `build_dataset` in its folder, or by
    `stldec embed` in a Parquet file's schema metadata; None where nothing is recorded (CSV, JSONL, other files)."""
    p = Path(path)
    if (p / BUILD_META).is_file():
        return json.loads((p / BUILD_META).read_text())["encoder"]["fingerprint"]
    if p.suffix == ".parquet" and p.is_file():
        return ((pq.read_schema(p).metadata or {}).get(ENCODER_KEY) or b"").decode() or None
    return None


def check_built_with(path: str | os.PathLike, encoder: StlKernelEncoder) -> None:
    """Raise ValueError if `path` records that another encoder than `encoder` embedded it."""
    made_by = built_with(path)
    if made_by not in (None, encoder.fingerprint):
        raise ValueError(f"{path} was embedded by encoder {made_by}, not by the given {encoder.fingerprint}")


def save_formulae(ds: datasets.Dataset, path: str | os.PathLike) -> None:
    """Write `ds` as CSV (embeddings as JSON text), JSONL or Parquet (by the suffix), or a `save_to_disk` folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".csv":
        if "embedding" in ds.column_names:
            ds = ds.map(lambda b: {"embedding": [json.dumps(e) for e in b["embedding"]]}, batched=True)
        ds.to_csv(str(p), index=False)
    elif p.suffix in (".jsonl", ".json"):  # not ds.to_json: it rounds floats to 10 decimals
        with open(p, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in ds)
    elif p.suffix == ".parquet":
        ds.to_parquet(str(p))
    elif not p.suffix:
        ds.save_to_disk(str(p))
    else:
        raise ValueError(f"{p}: unknown data format (expected .csv, .jsonl, .parquet or a folder)")


def sample_formulae(generator: FormulaGenerator, n: int, exclude: Collection[Formula] = ()) -> list[Formula]:
    """n formulae of `generator`, none in `exclude` (one is replaced by the generator's next draw)."""
    formulae = [f for f in generator.sample(n) if f not in exclude]
    while len(formulae) < n:
        formulae += [f for f in generator.sample(n - len(formulae)) if f not in exclude]
    return formulae


def generate_rows(n: int, encoder: StlKernelEncoder | None, *, preset: str, seed: int, n_vars: int = 3,
                  n_points: int = 100, exclude: Collection[Formula] = (), **generator) -> dict[str, list]:
    """n generated formulae (columns formula, depth[, embedding]), none in `exclude`; the encoder, when given, sets
    n_vars/n_points; `generator` holds FormulaGenerator overrides (depth_shares, max_depth, ...)."""
    if encoder is not None:
        n_vars, n_points = encoder.n_vars, encoder.n_points
    gen = FormulaGenerator(preset=preset, seed=seed, n_vars=n_vars, n_points=n_points, **generator)
    return _rows(sample_formulae(gen, n, exclude), encoder)


def _table(rows: dict[str, list]) -> pa.Table:
    """Rows as an Arrow table with float32 embeddings."""
    return pa.table({k: pa.array(v, pa.list_(pa.float32())) if k == "embedding" else v for k, v in rows.items()})


def _rows(formulae: list, encoder: StlKernelEncoder | None) -> dict[str, list]:
    rows = {"formula": [f.to_string() for f in formulae], "depth": [f.depth for f in formulae]}
    if encoder is not None and formulae:
        rows["embedding"] = encoder.encode(formulae).tolist()
    return rows


def generate_dataset(n: int, encoder: StlKernelEncoder | None = None, *, preset: str = "balanced",
                     seed: int = 0, **kwargs) -> datasets.Dataset:
    """An in-memory dataset of n generated (and embedded, given an encoder) formulae."""
    return datasets.Dataset(_table(generate_rows(n, encoder, preset=preset, seed=seed, **kwargs)))


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def build_dataset(out: str | os.PathLike, n: int, encoder: StlKernelEncoder, *, preset: str = "balanced",
                  seed: int = 0, shard_size: int = 2048, progress: bool = True, exclude: Iterable[Formula] = (),
                  **generator) -> Path:
    """Generate and embed n formulae into Parquet shards under `out`; resumes an interrupted build of the same
    settings (shard i always holds the same rows), refuses to mix settings in one folder. Returns `out`.
    `generator`: FormulaGenerator overrides of the preset. `exclude`: formulae that must not be in the set (e.g. a
    test set's): a generated formula equal to one of them is replaced by the generator's next one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(n / shard_size)
    exclude = set(exclude)
    digest = hashlib.sha256("\n".join(sorted(f.to_string() for f in exclude)).encode()).hexdigest()[:16]
    meta = dict(n=n, preset=preset, generator=generator, seed=seed, shard_size=shard_size, n_shards=n_shards,
                exclude=f"{len(exclude)} formulae, sha256 {digest}" if exclude else None,
                columns=["formula", "depth", "embedding"], encoder=encoder.config())
    meta = json.loads(json.dumps(meta))  # as stored (depth_shares keys become strings)
    if (out / BUILD_META).is_file():
        old = json.loads((out / BUILD_META).read_text())
        old.setdefault("exclude", None)  # folders built before `exclude` existed
        keys = ("n", "preset", "generator", "seed", "shard_size", "exclude")
        if any(old[k] != meta[k] for k in keys) or old["encoder"]["fingerprint"] != encoder.fingerprint:
            raise ValueError(f"{out} holds a build with other settings ({ {k: old[k] for k in keys} }, encoder "
                             f"{old['encoder']['fingerprint']}): use another --out")
    else:
        (out / BUILD_META).write_text(json.dumps(meta, indent=2) + "\n")
    for i in range(n_shards):
        path = out / _shard_name(i)
        if path.exists():
            continue
        size = min(shard_size, n - i * shard_size)
        rows = generate_rows(size, encoder, preset=preset, seed=derive_seed(seed, i), exclude=exclude, **generator)
        tmp = path.with_suffix(".tmp")
        pq.write_table(_table(rows), tmp)
        os.replace(tmp, path)
        if progress:
            print(f"shard {i + 1}/{n_shards}: {size} formulae -> {path}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the on-the-fly stream


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class FormulaStream(torch.utils.data.IterableDataset):
    """Endless generated formulae (+ embeddings given an encoder), `chunk_size` at a time; see the module docstring.
    `generator`: FormulaGenerator overrides of the preset; `exclude`: formulae never yielded (e.g. a test set's).

    Yields dicts with `formula`, `depth`[, `embedding`] and `index` (the row's position in the global stream),
    passed through `transform` (a batch function, as `Dataset.with_transform` takes) one chunk at a time.
    `rank`/`world_size` default to torch.distributed's (or RANK/WORLD_SIZE).
    """

    def __init__(self, encoder: StlKernelEncoder | None = None, *, preset: str = "balanced", seed: int = 0,
                 chunk_size: int = 256, transform: Callable[[dict], dict] | None = None,
                 rank: int | None = None, world_size: int | None = None, n_vars: int = 3, n_points: int = 100,
                 exclude: Collection[Formula] = (), **generator):
        self.encoder, self.preset, self.seed, self.chunk_size = encoder, preset, seed, chunk_size
        self.exclude = frozenset(exclude)
        self.transform, self.rank, self.world_size, self.generator = transform, rank, world_size, generator
        self.n_vars, self.n_points = (encoder.n_vars, encoder.n_points) if encoder is not None else (n_vars, n_points)
        self.batches_done, self.batch_size = 0, 1

    def skip(self, batches: int, batch_size: int) -> None:
        """Start after the first `batches` batches of `batch_size` rows this process has consumed (for resume)."""
        self.batches_done, self.batch_size = batches, batch_size

    def chunk(self, c: int, start: int = 0) -> dict[str, list]:
        """Rows start.. of global chunk c (generation is cheap, so only the embedding is skipped for rows < start)."""
        gen = FormulaGenerator(preset=self.preset, seed=derive_seed(self.seed, c), n_vars=self.n_vars,
                               n_points=self.n_points, **self.generator)
        formulae = sample_formulae(gen, self.chunk_size, self.exclude)[start:]
        rows = _rows(formulae, self.encoder)
        rows["index"] = list(range(c * self.chunk_size + start, (c + 1) * self.chunk_size))
        return self.transform(rows) if self.transform is not None else rows

    def __iter__(self) -> Iterator[dict]:
        rank, world = _rank_world()
        rank, world = (self.rank if self.rank is not None else rank), (self.world_size or world)
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # DataLoader workers hand out batches round-robin starting at worker 0: after N batches, worker w continues
        # the sub-stream of the worker that made batch N + w, which had made batches role, role + W, ... so far
        role = (worker + self.batches_done) % n_workers
        shard, n_shards = rank * n_workers + role, world * n_workers
        done = len(range(role, self.batches_done, n_workers)) * self.batch_size
        k, start = divmod(done, self.chunk_size)
        while True:
            rows = self.chunk(k * n_shards + shard, start)
            yield from (dict(zip(rows, values)) for values in zip(*rows.values()))
            k, start = k + 1, 0


# ---------------------------------------------------------------------------------------------------------------
# tokenisation and batching


def tokenize_batch(tokenizer, batch: dict[str, list]) -> dict[str, list]:
    """The lazy transform: formula text -> `input_ids` (<s> ... </s>); `embedding` -> `formula_embedding`."""
    out = {"input_ids": tokenizer(list(batch["formula"]))["input_ids"]}
    if "embedding" in batch:
        out["formula_embedding"] = batch["embedding"]
    return out


def lazy_tokenize(ds: datasets.Dataset, tokenizer, max_length: int | None = None) -> datasets.Dataset:
    """Add a `length` column (token count, for length grouping), drop rows longer than `max_length` (with a note;
    a warning when that is more than `DROP_WARN_SHARE` of them: the longest formulae are then missing from what the
    model sees) and tokenize on access with `with_transform`."""
    if "length" not in ds.column_names:
        ds = ds.map(lambda b: {"length": [len(ids) for ids in tokenizer(b["formula"])["input_ids"]]}, batched=True,
                    batch_size=1000)
    if max_length is not None:
        n = len(ds)
        ds = ds.filter(lambda lengths: [x <= max_length for x in lengths], input_columns="length", batched=True)
        dropped = n - len(ds)
        note = f"dropped {dropped} of {n} rows longer than {max_length} tokens"
        if dropped > DROP_WARN_SHARE * n:
            warnings.warn(f"{note} ({dropped / n:.1%}): the longest formulae are missing; raise "
                          "model.max_position_embeddings to keep them", stacklevel=2)
        elif dropped:
            print(note, flush=True)
    cols = [c for c in ("formula", "embedding") if c in ds.column_names]
    return ds.with_transform(lambda b: tokenize_batch(tokenizer, b), columns=cols, output_all_columns=True)


class StlCollator:
    """Rows -> a batch for one head, each batch padded to its own longest row (optionally to a multiple of 8).

    head "decoder": input_ids, attention_mask, labels (= input_ids, -100 on padding; the model shifts them) and
    formula_embedding (B, D) float32; "gpt": the same without the embedding; "mlm": BERT-style masking of 15 % of
    the non-special tokens (80 % <mask>, 10 % random, 10 % kept), labels -100 elsewhere.
    `max_length` drops longer rows from the batch (a cut formula would teach invalid text; only streamed rows can be
    that long, files are filtered by `lazy_tokenize`), counted in `dropped` and warned about once.
    """

    HEADS = ("decoder", "gpt", "mlm")

    def __init__(self, tokenizer, head: str = "decoder", *, mlm_probability: float = 0.15,
                 pad_to_multiple_of: int | None = None, max_length: int | None = None):
        if head not in self.HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {self.HEADS}")
        self.tokenizer, self.head, self.mlm_probability = tokenizer, head, mlm_probability
        self.pad_to_multiple_of, self.max_length = pad_to_multiple_of, max_length
        self.pad_id, self.dropped = tokenizer.pad_token_id, 0
        self.special_ids = torch.tensor(sorted(tokenizer.all_special_ids))

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self.max_length is not None and any(len(r["input_ids"]) > self.max_length for r in rows):
            kept = [r for r in rows if len(r["input_ids"]) <= self.max_length]
            if not kept:
                raise ValueError(f"every row of a batch is longer than {self.max_length} tokens: raise "
                                 "max_position_embeddings or generate shorter formulae")
            if not self.dropped:
                warnings.warn(f"dropping rows longer than {self.max_length} tokens (max_position_embeddings) from "
                              "their batches", stacklevel=2)
            self.dropped, rows = self.dropped + len(rows) - len(kept), kept
        ids = [list(r["input_ids"]) for r in rows]
        T = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(ids), T), self.pad_id, dtype=torch.long)  # (B, T), right padded
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
        mask = torch.zeros_like(input_ids)
        for i, x in enumerate(ids):
            mask[i, : len(x)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self.head == "mlm":
            batch["input_ids"], batch["labels"] = self._mask(input_ids, mask)
            return batch
        batch["labels"] = input_ids.masked_fill(mask == 0, -100)
        if self.head == "decoder":
            if "formula_embedding" not in rows[0]:
                raise ValueError("the decoder needs embeddings: the data has no `embedding` column and no encoder "
                                 "was given to compute them")
            batch["formula_embedding"] = torch.tensor([r["formula_embedding"] for r in rows], dtype=torch.float32)
        return batch

    def _mask(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking: (masked input_ids, labels) with labels -100 where nothing was masked."""
        maskable = (mask == 1) & ~torch.isin(input_ids, self.special_ids)
        chosen = maskable & (torch.rand(input_ids.shape) < self.mlm_probability)
        labels = input_ids.masked_fill(~chosen, -100)
        out = input_ids.clone()
        r = torch.rand(input_ids.shape)
        out[chosen & (r < 0.8)] = self.tokenizer.mask_token_id
        rand = chosen & (r >= 0.8) & (r < 0.9)
        out[rand] = torch.randint(len(self.tokenizer), (int(rand.sum()),))
        return out, labels
