"""The experiment file: one YAML/JSON document with `model`, `data` and `training` sections -> config + arguments.

    model:     head (decoder | gpt | mlm), preset (tiny | small | base | base-512) or config (a config.json or a model
               folder), init_from (a model/checkpoint folder whose weights start the run: fine-tuning, e.g. a decoder
               from a GPT trunk), and any StlDecConfig field as an override (hidden_size: 96, ...); or just the
               path of a config.json.
    data:      see `DataSpec` (files or generated data, the kernel encoder, the stream).
    training:  HF `TrainingArguments` fields by their own names (learning_rate, max_steps, save_steps, ...), or the
               path of a train_config.json/.yaml holding them.
    rewarm_from: optional checkpoint folder: start from its weights and optimizer state with a new LR schedule whose
               warm-up begins at the checkpoint's learning rate.

Every name is checked before anything runs: an unknown field fails with the list of valid ones and a suggestion.
Command-line overrides (`--max_steps 10`, `--model.hidden_size 96`, `--data.preset easy`) use the same names.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

HEADS = ("decoder", "gpt", "mlm")
SECTIONS = ("model", "data", "training", "rewarm_from")
MODEL_KEYS = ("head", "preset", "config", "init_from")


@dataclasses.dataclass
class DataSpec:
    """Where the training rows come from.

    train / validation / test: a formula file (CSV/JSONL/Parquet) or dataset folder; None generates `n_train` /
        `n_validation` rows with the generator `preset` (validation with another seed than training).
    generator: FormulaGenerator overrides of the preset (depth_shares, max_depth, ...).
    stream: train on an endless `FormulaStream` of `preset` instead of a fixed set (needs training.max_steps).
    encoder: a saved StlKernelEncoder folder, or a dict of StlKernelEncoder settings (`anchors` may be an int: that
        many anchors drawn from the generator's "random" preset); required by the decoder head unless every file
        already holds embeddings. None: the package's default encoder (when one is needed).
    n_generate: validation rows decoded at each evaluation for validity and cos_rho (0: loss only).
    exclude: formula files (e.g. the published test sets) whose formulae are never trained on: generated rows and
        the stream replace them by the generator's next draw, a training file's rows holding one are dropped (the
        number is recorded in the run record).
    """

    train: str | None = None
    validation: str | None = None
    test: str | None = None
    preset: str = "balanced"
    generator: dict = dataclasses.field(default_factory=dict)
    n_train: int = 10_000
    n_validation: int = 500
    stream: bool = False
    stream_chunk_size: int = 256
    seed: int = 0
    encoder: str | dict | None = None
    n_generate: int = 64
    mlm_probability: float = 0.15
    exclude: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.stream_chunk_size < 1:
            raise ValueError(f"data.stream_chunk_size must be >= 1, got {self.stream_chunk_size}")


def _read_mapping(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file {str(p)!r} not found")
    d = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a mapping of field names to values")
    return d


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, given, valid) -> None:
    for k in given:
        if k not in valid:
            raise ValueError(f"unknown field {k!r} in {where}{_suggest(k, valid)}; valid fields: {sorted(valid)}")


def training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def config_fields() -> set[str]:
    """The StlDecConfig fields an experiment may set (`encoder_fingerprint` is the run's own record of its encoder)."""
    from ..configuration import StlDecConfig

    fields = {f.name for f in dataclasses.fields(StlDecConfig)} - {"encoder_fingerprint"}
    return fields | {"is_decoder", "add_cross_attention", "use_cache"}


@dataclasses.dataclass
class Experiment:
    """A parsed, validated experiment file (see the module docstring)."""

    model: dict[str, Any] = dataclasses.field(default_factory=lambda: {"head": "decoder", "preset": "tiny"})
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    rewarm_from: str | None = None

    def __post_init__(self):
        if isinstance(self.model, str):  # a config.json (or model folder) for the model
            self.model = {"config": self.model}
        if isinstance(self.training, str):  # a train_config.json / .yaml of TrainingArguments fields
            self.training = _read_mapping(self.training)
        if isinstance(self.data, dict):
            _check_keys("data", self.data, {f.name for f in dataclasses.fields(DataSpec)})
            self.data = DataSpec(**self.data)
        self.model = {"head": "decoder", **self.model}
        _check_keys("model", self.model, set(MODEL_KEYS) | config_fields())
        if self.model["head"] not in HEADS:
            raise ValueError(f"model.head {self.model['head']!r} is not one of {HEADS}")
        if "preset" in self.model and "config" in self.model:
            raise ValueError("model: give either `preset` or `config`, not both")
        _check_keys("training", self.training, training_fields())

    @classmethod
    def from_dict(cls, d: dict) -> Experiment:
        _check_keys("the experiment file (top level)", d, SECTIONS)
        return cls(**{k: v for k, v in d.items() if v is not None})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Experiment:
        """Read a .yaml/.yml/.json experiment file; relative data/model paths are taken relative to the current dir."""
        return cls.from_dict(_read_mapping(path))

    def to_dict(self) -> dict:
        d = {"model": dict(self.model), "data": dataclasses.asdict(self.data), "training": dict(self.training)}
        if self.rewarm_from is not None:
            d["rewarm_from"] = self.rewarm_from
        return d

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if p.suffix == ".json" else yaml.safe_dump(self.to_dict(),
                                                                                               sort_keys=False)
        p.write_text(text)

    def override(self, items: dict[str, Any]) -> Experiment:
        """A copy with `{"max_steps": 10, "model.hidden_size": 96, "data.preset": "easy", "rewarm_from": ...}` applied:
        bare names are TrainingArguments fields; `model.` / `data.` / `training.` prefixes pick a section."""
        d = self.to_dict()
        for key, value in items.items():
            section, _, name = key.rpartition(".")
            if key == "rewarm_from":
                d["rewarm_from"] = value
            elif section in ("", "training"):
                d["training"][name] = value
            elif section in ("model", "data"):
                d[section][name] = value
            else:
                raise ValueError(f"unknown override {key!r}: use a TrainingArguments field or model./data. prefixes")
        return Experiment.from_dict(d)

    # ---- what the run is built from

    def model_config(self, embedding_dim: int | None = None):
        """The StlDecConfig of the model: preset or config file, the head's switches, then the overrides.

        `embedding_dim` (the data's embedding size) fills the field unless the file sets it, in which case the two
        must agree (a mismatch fails here, before any training)."""
        from ..configuration import StlDecConfig

        overrides = {k: v for k, v in self.model.items() if k not in MODEL_KEYS}
        head = self.model["head"]
        overrides.update(is_decoder=head != "mlm", add_cross_attention=head == "decoder")
        src = self.model.get("config", self.model.get("init_from") if "preset" not in self.model else None)
        if src is not None and not os.path.exists(src):
            raise FileNotFoundError(f"model config/checkpoint {src!r} not found")
        if src is not None:  # a decoder started from a GPT/MLM trunk takes its embedding_dim from the data
            base = StlDecConfig.from_pretrained(src)
            explicit_dim = "embedding_dim" in self.model or ("config" in self.model or base.add_cross_attention)
        else:
            base = StlDecConfig.from_preset(self.model.get("preset", "tiny"))
            explicit_dim = "embedding_dim" in self.model
        if head == "decoder" and embedding_dim is not None:
            dim = overrides.get("embedding_dim", base.embedding_dim)
            if explicit_dim and dim != embedding_dim:
                raise ValueError(f"the model's embedding_dim is {dim} but the data's embeddings have {embedding_dim} "
                                 f"entries: use an encoder with {dim} anchors or set model.embedding_dim: "
                                 f"{embedding_dim}")
            overrides["embedding_dim"] = embedding_dim
        if src is not None:
            return StlDecConfig.from_pretrained(src, **overrides)
        return StlDecConfig.from_preset(self.model.get("preset", "tiny"), **overrides)

    def training_arguments(self, **defaults):
        """TrainingArguments from `defaults` (the run's sensible settings) overridden by the file's `training`."""
        from transformers import TrainingArguments

        return TrainingArguments(**{**defaults, **self.training})


def _value(text: str) -> Any:
    """A command-line value read as YAML: 10 -> int, 1e-3 -> float, true -> bool, [a, b] -> list, else str."""
    v = yaml.safe_load(text)
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(v)
        except ValueError:
            return v
    return v


def add_train_arguments(p) -> None:
    """The training flags (shared by examples/train.py and `stldec train`)."""
    p.description = ("Train an stldec model from an experiment file (YAML/JSON: model, data, training). Any other "
                     "--NAME VALUE overrides a field: NAME is a TrainingArguments field (--learning_rate 3e-4) or "
                     "model.FIELD / data.FIELD (--model.hidden_size 96, --data.preset easy).")
    p.add_argument("--config", required=True, help="experiment file (.yaml/.yml/.json)")
    p.add_argument("--output_dir", help="run folder (default: training.output_dir, else outputs/<config name>)")
    p.add_argument("--max_steps", type=int, help="stop after this many optimizer steps (overrides epochs)")
    p.add_argument("--save_steps", type=float, help="checkpoint every N steps (a checkpoint also ends each epoch)")
    p.add_argument("--seed", type=int, help="training seed (TrainingArguments.seed)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in --output_dir (also done automatically "
                        "whenever that folder holds one)")
    p.add_argument("--rewarm_from", help="start from this checkpoint's weights and optimizer state with a new LR "
                                         "schedule that warms up from the checkpoint's learning rate")


def experiment_from_args(args, rest: list[str]) -> tuple[Experiment, str]:
    """Parsed flags + the leftover `--NAME VALUE` overrides -> (experiment, output_dir)."""
    items: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        if not rest[i].startswith("--"):
            raise ValueError(f"unexpected argument {rest[i]!r}: overrides are --NAME VALUE")
        name, eq, value = rest[i][2:].partition("=")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ValueError(f"--{name} needs a value")
            value, i = rest[i + 1], i + 1
        items[name] = _value(value)
        i += 1
    for name in ("max_steps", "save_steps", "seed", "rewarm_from"):
        if getattr(args, name) is not None:
            items[name] = getattr(args, name)
    if "save_steps" in items and float(items["save_steps"]).is_integer():
        items["save_steps"] = int(items["save_steps"])
    experiment = Experiment.load(args.config).override(items)
    # a command-line run refuses values that train nothing or fail mid-run (the API takes learning_rate 0: tests of
    # weight initialisation train with it)
    lr, save_steps = experiment.training.get("learning_rate", 1), experiment.training.get("save_steps", 1)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"training.learning_rate must be a finite number > 0, got {lr!r}")
    if not (isinstance(save_steps, int | float) and save_steps > 0):
        raise ValueError(f"training.save_steps must be > 0 (steps, or a fraction of the run if < 1), "
                         f"got {save_steps!r}")
    output_dir = args.output_dir or experiment.training.get("output_dir") or f"outputs/{Path(args.config).stem}"
    return experiment, output_dir


def parse_train_args(argv: list[str] | None = None) -> tuple[Experiment, str]:
    """examples/train.py's command line -> (experiment with the overrides applied, output_dir)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        return experiment_from_args(args, rest)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
