"""The `stldec` command line: one sub-command per task, each a thin layer over the Python API.

    stldec generate ...    random formulae to CSV/Parquet/JSONL
    stldec embed ...       add kernel embeddings to a formula file (resumable)
    stldec data build ...  generate + embed a training set as Parquet shards (resumable)
    stldec train ...       train from an experiment file (resumes by itself); same flags as examples/train.py
    stldec mixtures ...    train one model per training mixture, compare them on the same validation/test files
    stldec decode ...      decode formulae from embeddings or formulae: greedy/beam/sample/rerank, constrained
    stldec quickstart ...  encoder + data + a small decoder trained, decoded and scored in minutes, offline
    stldec evaluate ...    decode a test set, score it, record it in a registry, write a Markdown report
    stldec registry ...    list a registry of evaluation runs, or merge registries (conflicts reported)
    stldec hub ...         write a trained model's Hugging Face Hub folder (code, encoder, model card) or upload it
    stldec mine ...        requirement mining: STL formulae that classify labelled trajectories, cross-validated

Each sub-command registers itself with `_command` below; `main()` dispatches and turns user errors (ValueError,
FileNotFoundError, ...) into one line `stldec <command>: error: <message>` with exit status 2 (`stldec --debug
<command> ...` shows the traceback instead). Argument types check paths, devices and counts before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {}
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args)` as sub-command `name` with the arguments `add_arguments(parser)` declares."""

    def register(run: Callable[[argparse.Namespace], None]):
        _COMMANDS[name] = (add_arguments, run)
        return run

    return register


# ---------------------------------------------------------------------------------------------------------------
# argument types: a bad value fails while the arguments are parsed, before any work


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _folder(path: str) -> str:
    """An output folder: existing, or one that can be made (not an existing file)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    return path


def _model_folder(path: str) -> str:
    """A saved model folder (checked here: `from_pretrained` would take a missing folder for a Hub repo id)."""
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a model folder" if Path(path).exists()
                                         else f"model folder {path} not found")
    if not Path(path, "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{path} holds no config.json: not a saved model or checkpoint folder")
    return path


def _registry_file(path: str) -> str:
    """An SQLite registry file, or a path where one can be made."""
    p = Path(path)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not an SQLite registry file")
    if p.is_file() and p.stat().st_size and p.open("rb").read(16) != b"SQLite format 3\0":
        raise argparse.ArgumentTypeError(f"{path} is not an SQLite database (a registry file)")
    return path


def _device(name: str) -> str:
    """A torch device that exists on this machine (`--device cuda` without a GPU fails here, not mid-run)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= n_gpus:
        raise argparse.ArgumentTypeError(f"{name}: this machine has {n_gpus} CUDA GPUs (cuda:0 to cuda:{n_gpus - 1})"
                                         if n_gpus else f"{name}: no CUDA GPU on this machine; use cpu")
    return name


# ---------------------------------------------------------------------------------------------------------------
# formula tables (CSV / Parquet / JSONL by extension) and the generate / embed commands

TABLE_FORMATS = (".csv", ".parquet", ".jsonl")


def _table_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: unknown table format {suffix!r}; use one of {', '.join(TABLE_FORMATS)}")
    return suffix


def read_table(path: str):
    """A formula table as a pandas DataFrame; a CSV/JSONL `embedding` column comes back as lists of floats. An empty
    or unreadable file fails with a one-line ValueError (see `data.read_checked`)."""
    import pandas as pd

    from .data import read_checked

    fmt = _table_format(path)
    if fmt == ".parquet":
        return read_checked(path, lambda: pd.read_parquet(path))
    df = read_checked(path, lambda: pd.read_csv(path, keep_default_na=False) if fmt == ".csv"
                      else pd.read_json(path, lines=True, dtype=False))
    if fmt == ".csv" and "embedding" in df:
        df["embedding"] = [json.loads(e) for e in df["embedding"]]
    return df


def write_table(df, path: str, *, encoder: str | None = None) -> None:
    """Write atomically (temporary name, then rename). CSV stores `embedding` as JSON text; floats are exact.
    Parquet records `encoder` (the fingerprint of the encoder behind `embedding`) in its schema metadata."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .data import ENCODER_KEY

    fmt, tmp = _table_format(path), f"{path}.tmp"
    if fmt != ".parquet" and "embedding" in df:
        df = df.assign(embedding=[np.asarray(e, np.float32).tolist() for e in df["embedding"]])
    if fmt == ".parquet":
        table = pa.Table.from_pandas(df, preserve_index=False)
        if encoder is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), ENCODER_KEY: encoder.encode()})
        pq.write_table(table, tmp)
    elif fmt == ".csv":
        df = df.assign(embedding=[json.dumps(e) for e in df["embedding"]]) if "embedding" in df else df
        df.to_csv(tmp, index=False)
    else:
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in df.to_dict(orient="records"))
    os.replace(tmp, path)


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="balanced", help="generator preset (random, balanced, easy, hard)")
    p.add_argument("--n", type=_positive_int, default=1000, help="number of formulae")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--n_vars", type=_positive_int, default=3, help="variables x_0..x_{n-1}")
    p.add_argument("--n_points", type=_positive_int, default=100,
                   help="trajectory length; horizons stay <= n_points - 1")
    p.add_argument("--out", required=True, help="output file: .csv, .parquet or .jsonl")


@_command("generate", _generate_arguments)
def generate(args: argparse.Namespace) -> None:
    """Random formulae to CSV/Parquet/JSONL, with columns formula, depth, size, horizon."""
    import pandas as pd

    from .stl import FormulaGenerator

    _table_format(args.out)
    gen = FormulaGenerator(preset=args.preset, seed=args.seed, n_vars=args.n_vars, n_points=args.n_points)
    fs = gen.sample(args.n)
    df = pd.DataFrame({"formula": [f.to_string() for f in fs], "depth": [f.depth for f in fs],
                       "size": [f.size for f in fs], "horizon": [f.time_horizon for f in fs]})
    write_table(df, args.out)
    print(f"wrote {len(df)} formulae (mean depth {df['depth'].mean():.2f}) to {args.out}")


_ENCODER_OPTIONS = {"n_trajectories": int, "n_vars": int, "n_points": int, "sigma2": float, "seed": int,
                    "convention": str}


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", required=True, help="formula table (.csv/.parquet/.jsonl, column formula)")
    p.add_argument("--out", required=True, help="output table: the input plus an `embedding` column")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--encoder", help="a saved StlKernelEncoder directory")
    which.add_argument("--anchors", help="anchor file, one formula per line (default: the package's own set)")
    for name, kind in _ENCODER_OPTIONS.items():
        p.add_argument(f"--{name}", type=kind, help="encoder parameter (default: the StlKernelEncoder default)")
    p.add_argument("--device", type=_device, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--chunk", type=_positive_int, default=1000, help="formulae per resumable part")
    p.add_argument("--max_chunks", type=int, help="stop after computing this many parts (rerun to resume)")


@_command("embed", _embed_arguments)
def embed(args: argparse.Namespace) -> None:
    """Add kernel embeddings to a formula table; resumable: finished parts in OUT.parts/ are never recomputed.

    Each chunk of `--chunk` formulae is written atomically to OUT.parts/part-NNNNN.parquet next to a manifest
    holding the input's hash and the encoder's fingerprint; a rerun checks both, skips finished parts and, once
    all are there, assembles OUT and removes the parts (its own files only; an OUT.parts it did not make is
    refused). A Parquet OUT records the encoder's fingerprint (training and `data.load_formulae` refuse it with
    another encoder); CSV and JSONL have nowhere to keep it.
    """
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from .data import check_formulae
    from .stl import StlKernelEncoder

    _table_format(args.out)
    df = read_table(args.input)
    if "formula" not in df:
        raise ValueError(f"{args.input} has no `formula` column (columns: {list(df.columns)})")
    check_formulae(df["formula"], args.input)
    formulae = [str(s) for s in df["formula"]]
    options = {k: getattr(args, k) for k in _ENCODER_OPTIONS if getattr(args, k) is not None}
    if args.encoder and options:
        raise ValueError(f"--encoder fixes the encoder; drop {', '.join('--' + k for k in options)}")
    if args.encoder:
        encoder = StlKernelEncoder.from_pretrained(args.encoder, device=args.device)
    else:
        encoder = StlKernelEncoder(args.anchors, device=args.device, **options)

    parts = Path(f"{args.out}.parts")
    manifest = {"input_sha256": hashlib.sha256("\n".join(formulae).encode()).hexdigest(), "n_rows": len(formulae),
                "chunk": args.chunk, "encoder": encoder.fingerprint}
    if (parts / "manifest.json").is_file():
        if json.loads((parts / "manifest.json").read_text()) != manifest:
            raise ValueError(f"{parts} holds parts of another input, chunk size or encoder; "
                             "delete it or use the same arguments")
    else:
        if parts.exists() and (not parts.is_dir() or any(parts.iterdir())):
            raise ValueError(f"{parts} exists and was not made by stldec embed (no manifest.json); "
                             "move it or choose another --out")
        parts.mkdir(parents=True, exist_ok=True)
        (parts / "manifest.json.tmp").write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(parts / "manifest.json.tmp", parts / "manifest.json")

    n_chunks = -(-len(formulae) // args.chunk)
    files = [parts / f"part-{k:05d}.parquet" for k in range(n_chunks)]
    todo = [k for k in range(n_chunks) if not files[k].is_file()]
    if len(todo) < n_chunks:
        print(f"resuming: {n_chunks - len(todo)} of {n_chunks} parts already in {parts}")
    for k in tqdm(todo[: args.max_chunks], desc="embed", unit="part", initial=n_chunks - len(todo), total=n_chunks):
        z = encoder.encode(formulae[k * args.chunk : (k + 1) * args.chunk]).numpy()  # (b, D)
        column = pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), z.shape[1])
        pq.write_table(pa.table({"embedding": column}), f"{files[k]}.tmp")
        os.replace(f"{files[k]}.tmp", files[k])
    if args.max_chunks is not None and len(todo) > args.max_chunks:
        print(f"stopped after {args.max_chunks} parts; rerun the same command to resume")
        return
    D = encoder.embedding_dim
    z = [pq.read_table(p)["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, D) for p in files]
    z = np.concatenate(z) if z else np.zeros((0, D), np.float32)  # (n_rows, D)
    write_table(df.assign(embedding=list(z)), args.out, encoder=encoder.fingerprint)
    ours = {p.name for p in files} | {"manifest.json"}
    for p in parts.iterdir():  # only what this command wrote (and its temporary files): nothing else is deleted
        if p.name.removesuffix(".tmp") in ours:
            p.unlink()
    if not any(parts.iterdir()):
        parts.rmdir()
    print(f"wrote {len(df)} embeddings of dimension {encoder.embedding_dim} to {args.out} ({encoder.fingerprint})")


# ---------------------------------------------------------------------------------------------------------------
# training: data build, train, mixtures


def _data_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True)
    b = sub.add_parser("build", help="generate and embed formulae into Parquet shards (resumable)",
                       formatter_class=p.formatter_class)
    b.add_argument("--preset", default="balanced", help="generator preset (random, balanced, easy, hard)")
    b.add_argument("--n", type=_positive_int, required=True, help="number of formulae")
    b.add_argument("--encoder", required=True, help="a saved StlKernelEncoder folder")
    b.add_argument("--out", type=_folder, required=True, help="output folder (rerun the same command to resume)")
    b.add_argument("--seed", type=int, default=0, help="generator seed")
    b.add_argument("--shard_size", type=_positive_int, default=2048, help="formulae per shard")
    b.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                   help="formula files (e.g. the test sets) whose formulae the built set must not contain")
    b.add_argument("--device", type=_device, help="cpu, cuda, ... for the encoder (default: cuda when available)")
    e = sub.add_parser("encoder", help="make a kernel encoder and save it (with its anchor robustness) to a folder",
                       formatter_class=p.formatter_class)
    e.add_argument("--anchors", help="anchor file, one formula per line (default: the package's own set)")
    e.add_argument("--n_trajectories", type=_positive_int, default=100_000, help="base-measure trajectories")
    e.add_argument("--n_points", type=_positive_int, default=100, help="trajectory length")
    e.add_argument("--n_vars", type=_positive_int, default=3, help="variables x_0..x_{n-1}")
    e.add_argument("--seed", type=int, default=0, help="seed of the trajectories")
    e.add_argument("--out", type=_folder, required=True,
                   help="folder for encoder_config.json, anchors.txt, anchor robustness")


@_command("data", _data_arguments)
def data(args: argparse.Namespace) -> None:
    """Dataset tools: `stldec data encoder` saves a kernel encoder, `stldec data build` makes a training set."""
    from .data import build_dataset, load_formulae
    from .stl import StlKernelEncoder, parse

    if args.data_command == "encoder":
        encoder = StlKernelEncoder(args.anchors, n_trajectories=args.n_trajectories, n_points=args.n_points,
                                   n_vars=args.n_vars, seed=args.seed)
        encoder.save_pretrained(args.out, save_robustness=True)
        print(f"saved {encoder.fingerprint} to {args.out}")
        return
    encoder = StlKernelEncoder.from_pretrained(args.encoder, device=args.device)
    exclude = {parse(f) for path in args.exclude for f in load_formulae(path)["formula"]}
    out = build_dataset(args.out, args.n, encoder, preset=args.preset, seed=args.seed, shard_size=args.shard_size,
                        exclude=exclude)
    note = f", none of the {len(exclude)} excluded" if exclude else ""
    print(f"{len(load_formulae(out))} formulae in {out} ({encoder.fingerprint}){note}")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from .trainers.experiment import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(_overrides=True)


@_command("train", _train_arguments)
def train(args: argparse.Namespace) -> None:
    """Train from an experiment file; any --TrainingArguments_field VALUE (or --model.X / --data.X) overrides it."""
    from .trainers import experiment_from_args
    from .trainers import train as run

    experiment, output_dir = experiment_from_args(args, args._extra)
    run(experiment, output_dir)


def _mixtures_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="mixtures file (base experiment, mixtures, validation, test)")
    p.add_argument("--output_dir", type=_folder, required=True,
                   help="one run folder per mixture + the comparison files")
    p.add_argument("--validation", help="validation file shared by all mixtures (overrides the file's)")
    p.add_argument("--test", nargs="+", help="test file(s) shared by all mixtures (overrides the file's)")
    p.add_argument("--max_steps", type=int, help="steps per mixture (overrides the file's)")


@_command("mixtures", _mixtures_arguments)
def mixtures(args: argparse.Namespace) -> None:
    """Train the same model on several training mixtures; compare on shared validation/test files (CSV, MD, PNG)."""
    from .trainers.mixtures import run_mixtures

    run_mixtures(args.config, args.output_dir, validation=args.validation, test=args.test, max_steps=args.max_steps)


# ---------------------------------------------------------------------------------------------------------------
# decode and quickstart


STRATEGIES = ["greedy", "beam", "sample", "rerank", "refine"]  # decoding.STRATEGIES (not imported: --help stays fast)


def _decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_model_folder, required=True,
                   help="trained model folder (config.json + model.safetensors)")
    p.add_argument("--input", required=True, help="embeddings (.safetensors/.npy) or a formula table "
                   "(.csv/.jsonl/.parquet with `formula` [and `embedding`]: formulae are embedded, a round trip)")
    p.add_argument("--output", required=True, help="table of decoded formulae (.csv/.jsonl/.parquet)")
    p.add_argument("--encoder", help="saved kernel encoder (default: the model's encoder/ folder)")
    p.add_argument("--strategy", default="greedy", choices=STRATEGIES,
                   help="decoding strategy")
    p.add_argument("--num_beams", type=int, default=4, help="beam width")
    p.add_argument("--k", type=int, default=8, help="re-ranking candidates")
    p.add_argument("--pool", default="beam", choices=["beam", "sample"], help="where re-ranking candidates come from")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top_p", type=float, default=1.0, help="sampling: nucleus probability mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--constrained", action="store_true", help="grammar-constrained decoding (100%% valid)")
    p.add_argument("--n_vars", type=int, help="constrained: variables x_0..x_{n-1} (default: the encoder's)")
    p.add_argument("--max_horizon", type=int, help="constrained: max time horizon (default: encoder n_points - 1)")
    p.add_argument("--max_new_tokens", type=int, help="tokens per formula (default: the model's maximum)")
    p.add_argument("--distance", default="cosine", choices=["cosine", "l2"], help="re-ranking: embedding distance")
    p.add_argument("--size_tolerance", type=float, default=0.0, help="re-ranking: prefer smaller formulae this close")
    p.add_argument("--budget_s", type=float, help="refine: seconds of search per formula (default: no limit)")
    p.add_argument("--rounds", type=int, default=3, help="refine: rounds of threshold fit + edit moves")
    p.add_argument("--steps", type=int, default=10, help="refine: gradient steps per threshold fit")
    p.add_argument("--lr", type=float, default=0.05, help="refine: step size of the threshold fit")
    p.add_argument("--top", type=int, default=2, help="refine: candidates refined per formula")
    p.add_argument("--library", type=int, default=8, help="refine: generated formulae nearest to the target added "
                   "to the candidates")
    p.add_argument("--nbest", type=int, default=0, help="also write the n best candidates per row (column nbest)")
    p.add_argument("--batch_size", type=int, default=64, help="embeddings per generate() call")
    p.add_argument("--dialect", default="reference", choices=["reference", "textbook"],
                   help="dialect of the written formulae")
    p.add_argument("--device", type=_device, help="cpu, cuda, ... (default: cuda when available)")


@_command("decode", _decode_arguments)
def decode(args: argparse.Namespace) -> None:
    """Decode formulae from embeddings or formulae (round trip); resumable: rerun the same command to continue."""
    import pandas as pd
    import torch

    from .decoding import check_encoder, decode, load_model, load_model_encoder, read_inputs
    from .stl import StlKernelEncoder
    from .tokenization import StlTokenizer

    _table_format(args.output)
    model = load_model(args.model)
    tokenizer = StlTokenizer.from_pretrained(args.model) if Path(args.model, "vocab.json").is_file() \
        else StlTokenizer()
    encoder = StlKernelEncoder.from_pretrained(args.encoder) if args.encoder else load_model_encoder(args.model)
    if encoder is not None:
        check_encoder(model, encoder)
    embeddings, gold = read_inputs(args.input, encoder)
    settings = {k: getattr(args, k) for k in ("strategy", "num_beams", "k", "pool", "temperature", "top_p",
                                              "seed", "constrained", "max_new_tokens", "distance",
                                              "size_tolerance", "batch_size", "dialect", "budget_s", "rounds",
                                              "steps", "lr", "top", "library")}
    settings["n_vars"] = args.n_vars if args.n_vars is not None else (encoder.n_vars if encoder else 3)
    settings["max_horizon"] = args.max_horizon if args.max_horizon is not None else (
        encoder.n_points - 1 if encoder else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    parts = f"{args.output}.parts.jsonl"
    texts = decode(model, tokenizer, embeddings, encoder=encoder, parts_path=parts, **settings)
    nbest = decode(model, tokenizer, embeddings, encoder=encoder, n=args.nbest,
                   parts_path=f"{args.output}.nbest.parts.jsonl", **settings) if args.nbest else None
    df = pd.DataFrame({"formula": gold} if gold is not None else {})
    df["decoded"] = texts
    if nbest is not None:
        df["nbest"] = [json.dumps(r) for r in nbest]
    write_table(df, args.output)
    for p in (parts, f"{args.output}.nbest.parts.jsonl") if args.nbest else (parts,):  # only files this run used
        Path(p).unlink(missing_ok=True)
    print(f"{len(texts)} formulae decoded ({args.strategy}{', constrained' if args.constrained else ''}) "
          f"-> {args.output}")


def _quickstart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", type=_folder, default="outputs/quickstart",
                   help="where the encoder, data, model and results go")
    p.add_argument("--tiny", action="store_true", help="a smaller, faster setting (CI: about a minute)")
    p.add_argument("--max_steps", type=int, help="training steps (default: 1000, --tiny: 30)")


@_command("quickstart", _quickstart_arguments)
def quickstart(args: argparse.Namespace) -> None:
    """Build an encoder and data, train a small decoder, decode held-out embeddings, print the metrics (offline)."""
    from .quickstart import run_quickstart

    run_quickstart(args.output_dir, tiny=args.tiny, max_steps=args.max_steps)


# ---------------------------------------------------------------------------------------------------------------
# evaluate and the prediction registry

_DECODING_FLAGS = {"num_beams": int, "k": int, "pool": str, "temperature": float, "top_p": float, "seed": int,
                   "n_vars": int, "max_horizon": int, "max_new_tokens": int, "distance": str,
                   "size_tolerance": float, "batch_size": int, "budget_s": float, "rounds": int, "steps": int,
                   "lr": float, "top": int, "library": int}


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_model_folder, required=True, help="trained model or checkpoint folder")
    p.add_argument("--test", required=True, help="test table (.csv/.jsonl/.parquet: formula[,depth][,embedding])")
    p.add_argument("--strategy", default="greedy", choices=STRATEGIES,
                   help="decoding strategy")
    p.add_argument("--constrained", action="store_true", help="grammar-constrained decoding")
    for name, kind in _DECODING_FLAGS.items():
        p.add_argument(f"--{name}", type=kind, help="decoding setting (default: DecodingConfig's; see stldec decode)")
    p.add_argument("--encoder", help="saved kernel encoder (default: the model's encoder/ folder; must match it)")
    p.add_argument("--registry", type=_registry_file,
                   help="SQLite registry file: runs are recorded there and identical ones reused")
    p.add_argument("--report", type=_folder, help="folder for report.md and its PNG plots")
    p.add_argument("--limit", type=_positive_int, help="only the first N test rows")
    p.add_argument("--n_trajectories", type=_positive_int, default=1000,
                   help="trajectories for cos_rho and sign agreement")
    p.add_argument("--metric_seed", type=int, default=0, help="seed of those trajectories")
    p.add_argument("--embedding_metrics", action="store_true",
                   help="also cosine/L2 between gold and decoded kernel embeddings (re-embeds the decoded formulae)")
    p.add_argument("--force", action="store_true", help="recompute even if the registry holds this run")
    p.add_argument("--device", type=_device, help="cpu, cuda, ... (default: cuda when available)")


@_command("evaluate", _evaluate_arguments)
def evaluate(args: argparse.Namespace) -> None:
    """Decode a test set with a model, score it (validity, cos_rho, ...), record it in a registry, write a report."""
    from .evaluation import run_evaluation
    from .registry import format_conflicts

    settings = {k: getattr(args, k) for k in _DECODING_FLAGS}
    result = run_evaluation(args.model, args.test, encoder=args.encoder, registry=args.registry,
                            report=args.report, limit=args.limit, n_trajectories=args.n_trajectories,
                            metric_seed=args.metric_seed, force=args.force, device=args.device,
                            embedding_metrics=args.embedding_metrics, strategy=args.strategy,
                            constrained=args.constrained, **settings)
    o = result["overall"]
    keys = ("n", "validity", "exact_match", "skeleton_match", "cos_rho_mean", "cos_rho_median",
            "cos_rho_share_above_0.9", "sign_agreement", "node_ratio", "depth_ratio")
    print(("reused from the registry: " if result["reused"] else "") + json.dumps({k: o[k] for k in keys}))
    if args.report:
        print(f"report: {Path(args.report) / 'report.md'}")
    if result["conflict"]:
        print(format_conflicts([result["conflict"]]), file=sys.stderr)


def _registry_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("registry", type=_registry_file, help="SQLite registry file")
    p.add_argument("--merge", type=_registry_file, nargs="+", metavar="OTHER",
                   help="add the runs of other registries (never overwrites)")


@_command("registry", _registry_arguments)
def registry(args: argparse.Namespace) -> None:
    """List the evaluation runs of a registry, or merge registries from other machines into it (conflicts reported)."""
    from .registry import Registry, format_conflicts

    conflicts = []
    reg = Registry(args.registry, read_only=not args.merge)  # listing never creates or writes the file
    for other in args.merge or ():
        added, found = reg.merge(other)
        conflicts += found
        print(f"{other}: {added} runs added, {len(found)} conflicts")
    if not args.merge:
        for r in reg.runs():
            o = r["metrics"]["overall"]
            print(f"{r['key'][:12]}  {r['model']}  step={r['step']}  {r['strategy']}  n={r['n']}  "
                  f"validity={o['validity']:.3f}  cos_rho_mean={o['cos_rho_mean']:.3f}  {r['created']}")
    if conflicts:
        print(format_conflicts(conflicts), file=sys.stderr)
        raise SystemExit(2)


# ---------------------------------------------------------------------------------------------------------------
# the Hugging Face Hub hand-off


def _hub_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hub_command", required=True)
    prepare = sub.add_parser("prepare", help="write the Hub folder of a trained model (code, encoder, model card)")
    push = sub.add_parser("push", help="prepare the Hub folder in a temporary directory and upload it")
    for q in (prepare, push):
        q.add_argument("--model", required=True, help="trained model folder (what `stldec train` wrote)")
        q.add_argument("--registry", help="`stldec evaluate` registry: its runs of these weights go into the card")
        q.add_argument("--description", default="", help="free text for the model card")
        q.add_argument("--license", default="mit")
    prepare.add_argument("--out", required=True, help="new or empty folder for the Hub files")
    prepare.add_argument("--name", help="repository id the card's snippets load (default: the --out folder name)")
    push.add_argument("--repo", required=True, help="Hub repository id, e.g. me/stldec-small (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")


@_command("hub", _hub_arguments)
def hub(args: argparse.Namespace) -> None:
    """Hub hand-off: `stldec hub prepare` writes a self-contained Hub folder, `stldec hub push` uploads one."""
    from .hub import prepare_hub_folder, push_to_hub

    card = dict(description=args.description, license=args.license, registry=args.registry)
    if args.hub_command == "prepare":
        out = prepare_hub_folder(args.model, args.out, name=args.name, **card)
        print(f"Hub folder written to {out}; check {out / 'README.md'}, then `stldec hub push`")
    else:
        print(f"uploaded: {push_to_hub(args.model, args.repo, private=args.private, **card)}")



# ---------------------------------------------------------------------------------------------------------------
# requirement mining


def _mine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder: data.csv, labels.csv [, times.csv]")
    p.add_argument("--folds", type=int, default=5, help="k of the stratified k-fold split")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split (and search seed) per seed")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="trained decoder folder with its encoder/: also search its embedding space")
    which.add_argument("--baseline", action="store_true", help="search without a decoder")
    p.add_argument("--candidates", type=int, default=3000, help="generated candidate formulae per fold")
    p.add_argument("--out", required=True, help="folder for results.json and mining.png")


@_command("mine", _mine_arguments)
def mine(args: argparse.Namespace) -> None:
    """Requirement mining: learn STL formulae that classify labelled trajectories (k-fold cross-validation)."""
    from .mining import run_mining

    r = run_mining(args.data, args.out, folds=args.folds, seeds=args.seeds, model_dir=args.model,
                   candidates=args.candidates)
    print(f"{r['dataset']}: mean test accuracy {r['mean_test_accuracy']:.4f} over {len(r['per_fold'])} folds "
          f"({r['search']}, {r['wall_s']:.0f} s); best formula {r['best_formula']}")
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'mining.png'}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default in --help, except None and False (the help text says what leaving it out does)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


class UserError(SystemExit):
    """Exit status 2 after a user error; `str()` is the one-line message already printed to stderr."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def main(argv: list[str] | None = None) -> None:
    from . import _package_version

    parser = argparse.ArgumentParser(prog="stldec", description=__doc__.split("\n")[0], formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in _COMMANDS.items():
        summary = (run.__doc__ or "").strip().split("\n")[0]
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)
        add_arguments(p)
        p.set_defaults(_run=run)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_overrides", False):  # only `train` takes free --FIELD VALUE overrides
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args._extra = extra
    try:
        args._run(args)
    except USER_ERRORS as e:  # a bad file, path or value: one line; anything else is a bug and keeps its traceback
        if args.debug:
            raise
        message = f"stldec {args.command}: error: {e}"
        print(message, file=sys.stderr)
        raise UserError(message) from None


if __name__ == "__main__":
    main(sys.argv[1:])
