"""`train(experiment, output_dir)`: one training run from an `Experiment`, resumable at any moment.

Order of work: every setting and file is checked first (unknown fields, missing files, embedding sizes, a resume
with a changed experiment) so a bad configuration fails in seconds; then the output folder is prepared (unfinished
checkpoints removed, damaged ones moved aside, the resolved experiment and a run record written), the data built,
the model made, and the Trainer run. A run finds its last complete checkpoint by itself: rerunning the same command
continues it (model, optimizer, scheduler, RNG and data position) and ends with the same weights as an
uninterrupted run; only the fields in `RESUMABLE` may change between the launches (see `check_resume`). The
finished model lands in `output_dir` itself: config.json (recording the kernel encoder's fingerprint) +
model.safetensors + tokenizer files + `encoder/` (the kernel encoder, so evaluation can refuse a different one) +
train/test metrics.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch

from .. import data as D
from ..stl import parse
from .experiment import Experiment
from .trainer import (
    ApplyIntervals,
    JsonlLogger,
    SaveAtEpochEnd,
    StlTrainer,
    checkpoint_lr,
    checkpoints,
    last_complete_checkpoint,
)

VALIDATION_SEED_OFFSET = 1_000_003  # generated validation rows never share a generator seed with training rows
# training fields a resumed run may change, all applied: its length, its intervals, its reporting
RESUMABLE = ("max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
             "report_to", "disable_tqdm", "output_dir")


@atexit.register
def _destroy_process_group() -> None:
    """A process group still alive at interpreter shutdown can abort the process (gloo: SIGABRT, "terminate called
    without an active exception"); at exit every collective of the run has been matched, so destroying it is safe."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def default_arguments(experiment: Experiment, output_dir: str) -> dict:
    """The run's settings unless the experiment's `training` section says otherwise."""
    has_val = experiment.data.validation is not None or experiment.data.n_validation > 0
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dict(
        output_dir=output_dir, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=5e-4,
        weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0, num_train_epochs=3,
        logging_steps=50, save_strategy="steps", save_steps=500, save_total_limit=3,
        eval_strategy="steps" if has_val else "no", eval_steps=500,
        metric_for_best_model="eval_loss" if has_val else None, greater_is_better=False,
        train_sampling_strategy="group_by_length", remove_unused_columns=False, report_to=["tensorboard"],
        ddp_find_unused_parameters=False, accelerator_config={"dispatch_batches": False}, bf16=bf16,
        torch_compile=False, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        seed=experiment.data.seed, disable_tqdm=False,
    )


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def run_record(args) -> dict:
    """Code version, command, package versions and hardware of this launch (`train` adds the resolved model config
    and TrainingArguments)."""
    versions = {}
    for pkg in ("stldec", "torch", "transformers", "accelerate", "datasets", "safetensors", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": _git_commit(), "argv": sys.argv,
            "python": sys.version.split()[0], "versions": versions,
            "hardware": {"platform": platform.platform(), "processor": platform.processor(),
                         "cpu_count": os.cpu_count(), "gpus": gpus},
            "world_size": args.world_size, "device": str(args.device), "bf16": args.bf16}


def make_encoder(spec):
    """A StlKernelEncoder from a saved folder, a settings dict (`anchors: int` draws that many random anchors),
    or None (the package default)."""
    from ..stl import FormulaGenerator, StlKernelEncoder

    if spec is None:
        return StlKernelEncoder()
    if isinstance(spec, str):
        return StlKernelEncoder.from_pretrained(spec)
    spec = dict(spec)
    anchors = spec.pop("anchors", None)
    if isinstance(anchors, int):
        n_vars, n_points = spec.get("n_vars", 3), spec.get("n_points", 100)
        anchors = FormulaGenerator(preset="random", seed=spec.get("seed", 0), n_vars=n_vars,
                                   n_points=n_points).sample(anchors)
    return StlKernelEncoder(anchors, **spec)


def check_files(experiment: Experiment) -> None:
    """Fail before any work when a file the experiment names does not exist."""
    spec, named = experiment.data, []
    named += [("data.train", spec.train), ("data.validation", spec.validation), ("data.test", spec.test)]
    named += [("data.encoder", spec.encoder if isinstance(spec.encoder, str) else None)]
    named += [("model.config", experiment.model.get("config")), ("model.init_from", experiment.model.get("init_from"))]
    named += [("rewarm_from", experiment.rewarm_from)]
    for what, path in named:
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{what}: {path!r} not found")
    if spec.stream and spec.train is not None:
        raise ValueError("data.stream generates the training rows: drop data.train or set stream: false")
    if spec.stream and experiment.training.get("max_steps", -1) <= 0:
        raise ValueError("data.stream is endless: set training.max_steps (or --max_steps)")


def check_resume(saved: Experiment, experiment: Experiment, args, output_dir: str, checkpoint: Path) -> None:
    """Refuse to resume `checkpoint` of the run whose experiment.yaml holds `saved` with a changed `experiment`.

    A resumed run continues the checkpoint's weights, optimizer, learning-rate schedule and data order, so a
    changed model, data, rewarm_from or optimisation setting (learning_rate, lr_scheduler_type, batch size, ...)
    would be ignored or break the run: refused, naming every changed field with both values. The `RESUMABLE`
    training fields may change and are applied; a new length also recomputes the learning-rate schedule for it
    (a decaying rate jumps at the checkpoint's step: warned).
    """
    old, new, unset = saved.to_dict(), experiment.to_dict(), "(unset)"
    was, now = ({"rewarm_from": d.get("rewarm_from"), **{f"{s}.{k}": v for s in ("model", "data")
                                                          for k, v in d[s].items()}} for d in (old, new))
    changed = [f"{k}: {was.get(k, unset)!r} -> {now.get(k, unset)!r}" for k in sorted(was.keys() | now.keys())
               if was.get(k, unset) != now.get(k, unset)]
    old_args = saved.training_arguments(**default_arguments(saved, output_dir))
    for k in sorted(old["training"].keys() | new["training"].keys()):
        x, y = getattr(old_args, k), getattr(args, k)  # as resolved: an explicit default is no change
        if x != y and k not in RESUMABLE:
            x, y = (getattr(v, "value", v) for v in (x, y))  # enums by their names
            changed.append(f"training.{k}: {old['training'].get(k, x)!r} -> {new['training'].get(k, y)!r}")
    if changed:
        raise ValueError(f"{output_dir} holds a run of another experiment: refusing to resume it with "
                         f"{'; '.join(changed)} (a resumed run continues the model, data order, optimizer and "
                         f"learning-rate schedule of {checkpoint.name}; only {', '.join(RESUMABLE)} may change). Use "
                         f"another --output_dir, e.g. with --rewarm_from {checkpoint} to continue its weights and "
                         "optimizer under a new schedule")
    length = [f"{k} {getattr(old_args, k)} -> {getattr(args, k)}" for k in ("max_steps", "num_train_epochs")
              if getattr(old_args, k) != getattr(args, k)]
    if length:
        warnings.warn(f"resuming {checkpoint} with {', '.join(length)}: applied; the {args.lr_scheduler_type.value} "
                      "learning-rate schedule is recomputed for the new length, so a decaying rate jumps at this step "
                      "(for a warm restart use --rewarm_from in another --output_dir)", stacklevel=2)


def _embedding_dim(ds) -> int | None:
    return len(ds[0]["embedding"]) if ds is not None and "embedding" in ds.column_names and len(ds) else None


def build_datasets(experiment: Experiment, tokenizer):
    """(encoder, train, validation, test): files or generated rows, embedded when the decoder needs it and the
    file has no embeddings; train may be a stream; none of its formulae is in `data.exclude`. The encoder is made
    only when something needs it."""
    spec, head = experiment.data, experiment.model["head"]
    files = {k: D.load_formulae(p) for k, p in (("train", spec.train), ("validation", spec.validation),
                                                ("test", spec.test)) if p is not None}
    generated = spec.stream or spec.train is None or (spec.validation is None and spec.n_validation > 0)
    need = head == "decoder" and (generated or any(_embedding_dim(ds) is None for ds in files.values()))
    encoder = make_encoder(spec.encoder) if need or spec.encoder is not None else None
    if encoder is not None:
        for p in (spec.train, spec.validation, spec.test):
            if p is not None:
                D.check_built_with(p, encoder)
    enc = encoder if head == "decoder" else None
    files = {k: D.add_embeddings(ds, enc) if enc is not None else ds for k, ds in files.items()}
    exclude = {parse(f) for path in spec.exclude for f in D.load_formulae(path)["formula"]}
    if spec.stream:
        train = D.FormulaStream(enc, preset=spec.preset, seed=spec.seed, chunk_size=spec.stream_chunk_size,
                                transform=lambda b: D.tokenize_batch(tokenizer, b), exclude=exclude, **spec.generator)
    elif "train" in files:
        train = files["train"].filter(lambda fs: [parse(f) not in exclude for f in fs], input_columns="formula",
                                      batched=True) if exclude else files["train"]
        if excluded := len(files["train"]) - len(train):
            warnings.warn(f"{spec.train}: dropped {excluded} rows whose formula is in data.exclude", stacklevel=2)
    else:
        train = D.generate_dataset(spec.n_train, enc, preset=spec.preset, seed=spec.seed, exclude=exclude,
                                   **spec.generator)
    val = files.get("validation")
    if val is None and spec.n_validation > 0:
        val = D.generate_dataset(spec.n_validation, enc, preset=spec.preset, seed=spec.seed + VALIDATION_SEED_OFFSET,
                                 **spec.generator)
    return encoder, train, val, files.get("test")


def train(experiment: Experiment, output_dir: str | os.PathLike) -> Path:
    """Run (or continue) the experiment in `output_dir`; returns it. See the module docstring."""
    from transformers import GenerationConfig, set_seed

    from ..modeling import StlDecForCausalLM, StlDecForMaskedLM
    from ..tokenization import StlTokenizer

    output_dir = str(output_dir)
    check_files(experiment)
    args = experiment.training_arguments(**default_arguments(experiment, output_dir))
    head, spec = experiment.model["head"], experiment.data
    out = Path(output_dir)
    resume = last_complete_checkpoint(out)
    if resume is not None and (out / "experiment.yaml").is_file():
        check_resume(Experiment.load(out / "experiment.yaml"), experiment, args, output_dir, resume)

    # data, then the model (whose embedding_dim must match the data's)
    tokenizer = StlTokenizer()
    encoder, train_ds, val_ds, test_ds = build_datasets(experiment, tokenizer)
    dims = {d for d in [encoder.embedding_dim if encoder else None, *map(_embedding_dim, (val_ds, test_ds)),
                        None if spec.stream else _embedding_dim(train_ds)] if d is not None}
    if head == "decoder" and len(dims) > 1:
        raise ValueError(f"embeddings of different sizes {sorted(dims)} in the encoder/train/validation/test data")
    config = experiment.model_config(embedding_dim=dims.pop() if dims and head == "decoder" else None)
    made_by = encoder.fingerprint if encoder is not None else D.built_with(spec.train) if spec.train else None
    config.encoder_fingerprint = made_by if head == "decoder" else None  # decoding refuses any other encoder
    trained_with = resume and json.loads((resume / "config.json").read_text()).get("encoder_fingerprint")
    if trained_with and trained_with != config.encoder_fingerprint:
        raise ValueError(f"{resume} was trained with encoder {trained_with}, but data.encoder is now "
                         f"{config.encoder_fingerprint}: refusing to resume it with other embeddings")
    max_len = config.max_position_embeddings
    splits = {"train": None if spec.stream else train_ds, "validation": val_ds, "test": test_ds}
    tokenized = {k: D.lazy_tokenize(ds, tokenizer, max_len) for k, ds in splits.items() if ds is not None}
    too_long = {k: {"dropped": len(splits[k]) - len(ds), "rows": len(splits[k])} for k, ds in tokenized.items()}
    train_ds, val_ds, test_ds = tokenized.get("train", train_ds), tokenized.get("validation"), tokenized.get("test")

    # only now that everything is checked, the output folder: unfinished checkpoints go, damaged ones (newer than
    # the one resumed) are moved aside, the resolved experiment and this launch's record are written
    if args.should_save:
        out.mkdir(parents=True, exist_ok=True)
        for p in checkpoints(out, complete=False):
            print(f"removing unfinished checkpoint {p} (no {p.name}/stldec_complete.json)", flush=True)
            shutil.rmtree(p, ignore_errors=True)
        done = checkpoints(out)
        for p in done[done.index(resume) + 1 if resume else 0 :]:
            print(f"moving damaged checkpoint {p} aside to {p.name}.damaged", flush=True)
            shutil.rmtree(p.with_name(f"{p.name}.damaged"), ignore_errors=True)
            p.rename(p.with_name(f"{p.name}.damaged"))
        experiment.save(out / "experiment.yaml")
        with open(out / "runs.jsonl", "a") as f:
            f.write(json.dumps({**run_record(args), "resume_from": str(resume) if resume else None,
                                "model_config": config.to_diff_dict(), "rows_dropped_too_long": too_long,
                                "training_arguments": json.loads(args.to_json_string())}) + "\n")
        if resume is not None and (out / "metrics.jsonl").is_file():  # drop lines the interrupted run logged later
            step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
            lines = (out / "metrics.jsonl").read_text().splitlines()
            (out / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= step))

    set_seed(args.seed)
    cls = StlDecForMaskedLM if head == "mlm" else StlDecForCausalLM
    init = experiment.rewarm_from or experiment.model.get("init_from")
    model = cls.from_pretrained(init, config=config) if init else cls(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False,
                                               max_new_tokens=max_len - 1)

    gen_rows = None
    if head == "decoder" and val_ds is not None and spec.n_generate > 0:
        gen_rows = val_ds.select(range(min(spec.n_generate, len(val_ds)))).with_format(None)[:]
        gen_rows = {"formula": gen_rows["formula"], "embedding": gen_rows["embedding"]}
    trainer = StlTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=D.StlCollator(tokenizer, head, mlm_probability=spec.mlm_probability, max_length=max_len),
        callbacks=[SaveAtEpochEnd(), ApplyIntervals(), JsonlLogger()], encoder=encoder, generation_rows=gen_rows,
        rewarm_lr=checkpoint_lr(experiment.rewarm_from) if experiment.rewarm_from else None,
        rewarm_optimizer=experiment.rewarm_from)
    if resume is not None:
        print(f"resuming from {resume}", flush=True)
        if spec.stream:  # continue the stream where this process left it instead of replaying it
            step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
            train_ds.skip(step * args.gradient_accumulation_steps, args.per_device_train_batch_size)
            trainer.args.ignore_data_skip = True
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    trainer.save_model(output_dir)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if test_ds is not None:
        trainer.save_metrics("test", trainer.evaluate(test_ds, metric_key_prefix="test"))
    return out
