"""The prediction registry: one row per evaluation run, so identical runs are reused and machines merge results.

A run is identified by its *key*: model path, model weights hash, checkpoint step, decoding strategy, the complete
canonical decoding settings (`decoding.DecodingConfig.canonical()`: defaults filled in, keys irrelevant to the
strategy dropped), the metric settings (trajectories, seed, encoder fingerprint) and the test-set hash. `run_key`
hashes their sorted JSON; the same settings written two ways (order, `1` vs `1.0`, an explicit default, a
temperature given to greedy) give one key.

Storage is one SQLite file (standard library, transactional: two evaluations finishing at once cannot corrupt it,
the primary key enforces one row per key, and tables from other machines merge with a plain query). The per-formula
outputs are Parquet files in `outputs/` next to it, referenced by a path relative to the registry, so a registry
directory can be copied between machines as a whole; an outputs path that is absolute or leaves the registry folder
(`../x`) is refused. Merging never overwrites: an entry whose key exists with different metrics is returned (and
printed by the CLI) as a conflict, and the existing entry is kept. A merge source is opened read-only: a missing
file, or one that is not a registry, is an error naming it, and the source is never written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

_COLUMNS = ("key", "model", "model_sha256", "step", "strategy", "settings", "metric_settings", "test_hash",
            "test_path", "n", "metrics", "outputs", "info", "created")
_JSON = ("settings", "metric_settings", "metrics", "info")
_SCHEMA = f"CREATE TABLE IF NOT EXISTS runs ({', '.join(_COLUMNS)}, PRIMARY KEY (key))"


def run_key(*, model: str, model_sha256: str, step: int | None, strategy: str, settings: Mapping,
            metric_settings: Mapping, test_hash: str) -> str:
    """sha256 of the sorted JSON of everything that determines a run's outputs and metrics.

    settings: the canonical decoding settings (`DecodingConfig.canonical()`: defaults filled in, irrelevant keys
    dropped). Integral floats are written as integers, so `temperature=1` and `temperature=1.0` give one key.
    """
    blob = dict(model=model, model_sha256=model_sha256, step=step, strategy=strategy, settings=dict(settings),
                metric_settings=dict(metric_settings), test_hash=test_hash)
    return hashlib.sha256(json.dumps(_normalise(blob), sort_keys=True).encode()).hexdigest()


def _normalise(x):
    if isinstance(x, Mapping):
        return {str(k): _normalise(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_normalise(v) for v in x]
    return int(x) if isinstance(x, float) and x.is_integer() else x


def test_set_hash(formulae: list[str]) -> str:
    """sha256 of the test formulae, one per line, in order."""
    return hashlib.sha256("\n".join(formulae).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (the model weights), read in 16 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def metrics_differ(a: Mapping, b: Mapping, rel_tol: float = 1e-6) -> list[str]:
    """Dotted names of the metrics whose values differ between two metrics dicts (floats up to `rel_tol`)."""
    diffs = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            diffs += [f"{k}.{d}" for d in metrics_differ(x, y, rel_tol)]
        elif isinstance(x, int | float) and isinstance(y, int | float):
            if not math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-12):
                diffs.append(k)
        elif x != y:
            diffs.append(k)
    return diffs


class Registry:
    """A SQLite table of evaluation runs (see the module docstring). Rows are dicts with JSON fields decoded.

    read_only: open an existing registry without ever writing to it (SQLite `mode=ro`), e.g. a merge source; else
    the file and its table are created if missing. A file that is not a registry is refused (ValueError)."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path, self.read_only = Path(path), read_only
        if read_only and not self.path.is_file():
            raise FileNotFoundError(f"registry {self.path} not found")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                if not read_only:
                    db.execute(_SCHEMA)
                columns = tuple(r["name"] for r in db.execute("PRAGMA table_info(runs)"))
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path} is not an SQLite registry ({e})") from None
        if columns != _COLUMNS:
            raise ValueError(f"{self.path} is not a stldec registry: it has no `runs` table with columns {_COLUMNS}"
                             + (f" (found {columns})" if columns else ""))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits on success and is always closed (read-only: SQLite refuses any write)."""
        db = (sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60) if self.read_only
              else sqlite3.connect(self.path, timeout=60))
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    @property
    def outputs_dir(self) -> Path:
        return self.path.parent / "outputs"

    def get(self, key: str) -> dict | None:
        """The run with this key, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return _decode(row) if row else None

    def runs(self, **where) -> list[dict]:
        """All runs (oldest first), optionally filtered on column equality, e.g. `runs(strategy="greedy")`."""
        bad = set(where) - set(_COLUMNS)
        if bad:
            raise ValueError(f"unknown registry column(s) {sorted(bad)}")
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(f"{k} = ?" for k in where) if where else "")
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY created", tuple(where.values())).fetchall()
        return [_decode(r) for r in rows]

    def outputs_path(self, run: Mapping) -> Path:
        """Path of a run's per-formula outputs file. Its stored name must be a relative path inside the registry
        folder (not absolute, no `..`), else ValueError: a merged registry cannot make us read or write elsewhere."""
        name = PurePosixPath(run["outputs"])
        if name.is_absolute() or ".." in name.parts or not name.parts:
            raise ValueError(f"{self.path}: run {run['key'][:12]} has outputs {run['outputs']!r}, not a relative path "
                             "inside the registry folder")
        return self.path.parent / name

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold run `key` exclusively while computing it (`fcntl.flock` on `outputs/KEY.lock`): an identical run
        started meanwhile (another job on the same registry) waits here, with a message, then finds the finished run
        instead of sharing its parts file. The holder removes the lock file; a waiter that then holds a removed file
        locks the new one."""
        path = self.outputs_dir / f"{key[:16]}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(path, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for an identical run to finish (it holds {path})", file=sys.stderr, flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            if path.exists() and os.path.samestat(os.fstat(f.fileno()), path.stat()):
                break
            f.close()
        try:
            yield
        finally:
            path.unlink()
            f.close()

    def checkpoints_of(self, run: Mapping) -> list[dict]:
        """Runs of the same training run folder (the model or its `checkpoint-N` siblings) with the same strategy,
        decoding and metric settings and test set as `run`: the history a report plots over training steps."""
        root = lambda path: re.sub(r"/checkpoint-\d+$", "", path)  # noqa: E731
        same = ("strategy", "settings", "metric_settings", "test_hash")
        return [r for r in self.runs() if root(r["model"]) == root(run["model"]) and all(r[k] == run[k] for k in same)]

    def add(self, run: Mapping) -> dict | None:
        """Insert a run (all `_COLUMNS` but `created`, JSON fields as dicts). An identical key with equal metrics is
        a no-op; with different metrics the stored run is kept and a conflict dict is returned."""
        row = dict(run, created=run.get("created") or datetime.now(UTC).isoformat(timespec="seconds"))
        row["metrics"] = json.loads(json.dumps(row["metrics"]))  # int dict keys -> str, as they come back from disk
        missing = set(_COLUMNS) - set(row)
        if missing:
            raise ValueError(f"run is missing {sorted(missing)}")
        self.outputs_path(row)  # refuses an outputs name outside the registry folder
        old = self.get(row["key"])
        if old is not None:
            diffs = metrics_differ(old["metrics"], row["metrics"])
            return {"key": row["key"], "model": row["model"], "step": row["step"], "strategy": row["strategy"],
                    "differences": diffs, "kept": old["created"], "rejected": row["created"],
                    "rejected_outputs": row["outputs"]} if diffs else None
        enc = {k: json.dumps(row[k], sort_keys=True) if k in _JSON else row[k]
               for k in _COLUMNS}
        with self._connect() as db:
            db.execute(f"INSERT OR IGNORE INTO runs VALUES ({', '.join('?' * len(_COLUMNS))})",
                       tuple(enc[k] for k in _COLUMNS))
        return None

    def merge(self, other: str | Path | Registry) -> tuple[int, list[dict]]:
        """Add every run of another registry, opened read-only (copying its outputs files); returns (runs added,
        conflicts). A run whose outputs name leaves its registry folder refuses the whole merge before any change."""
        other = other if isinstance(other, Registry) else Registry(other, read_only=True)
        runs = other.runs()
        for run in runs:
            other.outputs_path(run)
        added, conflicts = 0, []
        for run in runs:
            if self.get(run["key"]) is None:
                src, dst = other.outputs_path(run), self.outputs_path(run)
                if src.is_file() and not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
                added += 1
            conflict = self.add(run)
            if conflict:
                conflicts.append(dict(conflict, source=str(other.path)))
        return added, conflicts


def _decode(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in _JSON:
        d[k] = json.loads(d[k])
    return d


def format_conflicts(conflicts: list[dict]) -> str:
    """One line per conflict, for the console."""
    return "\n".join(f"CONFLICT {c['key'][:12]} model={c['model']} step={c['step']} strategy={c['strategy']}: "
                     f"{', '.join(c['differences'][:6])}{' ...' if len(c['differences']) > 6 else ''} differ; kept the "
                     f"entry of {c['kept']}, rejected {c.get('source', 'the new run')} ({c['rejected']}, outputs "
                     f"{c['rejected_outputs']})"
                     for c in conflicts)
