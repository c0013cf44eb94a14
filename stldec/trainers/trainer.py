"""`StlTrainer` (an HF `Trainer`) and the callbacks a training run needs.

- Checkpoints: every `save_steps` (Trainer) and at each epoch end (`SaveAtEpochEnd`), never twice for one step.
  `StlTrainer` writes `stldec_complete.json` (with the sha256 of every file) into a checkpoint once every process
  has finished writing it, and only then deletes old checkpoints beyond `save_total_limit` (HF deletes them before
  any callback could mark the new one: a crash in between left nothing to resume). `last_complete_checkpoint` only
  ever returns a marked one whose files still match their digests, so a checkpoint cut short by a crash or damaged
  later is never resumed: the previous complete one is, with a warning.
- `ApplyIntervals`: a resumed run logs, evaluates and saves at the intervals it was launched with (HF would keep
  the checkpoint's).
- `JsonlLogger`: every logged dict as one JSON line in `<output_dir>/metrics.jsonl`.
- `StlTrainer`: length grouping with a sampler reseeded per epoch (so a resumed run draws the same batches), a
  `FormulaStream` fed to each process as is (already rank-aware: accelerate's shard wrapper would make every process
  generate and embed the whole stream), generation-based validation (validity, cos_rho on a few validation rows,
  decoding from BOS: never the gold-prefixed `predict_with_generate` of Seq2SeqTrainer), the kernel encoder saved
  next to every checkpoint and the final model, and an optional re-warmed LR schedule started from a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from ..data import FormulaStream

MARKER = "stldec_complete.json"
ENCODER_DIR = "encoder"


# ---------------------------------------------------------------------------------------------------------------
# checkpoints


def _step(p: Path) -> int:
    return int(p.name.rsplit("-", 1)[1])


def checkpoints(output_dir: str | Path, *, complete: bool | None = True) -> list[Path]:
    """`checkpoint-N` folders sorted by N: the complete ones (True), the unfinished ones (False) or all (None)."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
    return sorted((p for p in found if complete is None or (p / MARKER).is_file() == complete), key=_step)


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def damaged_files(checkpoint: Path) -> list[str]:
    """Files of a complete checkpoint that are missing or changed since its marker recorded their sha256 ([] for a
    marker without digests, as older runs wrote)."""
    try:
        recorded = json.loads((checkpoint / MARKER).read_text()).get("sha256", {})
    except (ValueError, OSError):
        return [MARKER]
    return [name for name, digest in recorded.items() if _sha256(checkpoint / name) != digest]


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose files match their recorded digests; each newer one that does not is
    skipped with a warning."""
    for p in reversed(checkpoints(output_dir)):
        damaged = damaged_files(p)
        if not damaged:
            return p
        warnings.warn(f"{p} is damaged ({', '.join(damaged)} changed since it was written): skipping it",
                      stacklevel=2)
    return None


def checkpoint_lr(checkpoint: str | Path) -> float:
    """The learning rate the optimizer had when `checkpoint` was written."""
    state = torch.load(Path(checkpoint) / "optimizer.pt", map_location="cpu", weights_only=True)
    return float(state["param_groups"][0]["lr"])


class SaveAtEpochEnd(TrainerCallback):
    """Requests a checkpoint at every epoch end unless that step was just saved (save_steps keeps working)."""

    def __init__(self):
        self.last_saved = -1

    def on_save(self, args, state, control, **kwargs):
        self.last_saved = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step != self.last_saved and args.save_strategy != "no":
            control.should_save = True
        return control


class ApplyIntervals(TrainerCallback):
    """On resume HF restores logging/eval/save steps from the checkpoint's trainer_state.json (and only warns that
    they differ): recompute them from this launch's arguments, so a changed interval takes effect."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class JsonlLogger(TrainerCallback):
    """Appends `{"step", "epoch", **logs}` to `<output_dir>/metrics.jsonl` (main process only)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(Path(args.output_dir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# sampling


class GroupedSampler(torch.utils.data.Sampler):
    """Length grouping: shuffle, sort within mega-batches of `50 * batch_size` rows, cut into batches of similar
    length and shuffle the batch order (the one short batch goes last). Seeded by (seed, epoch) via `set_epoch`, so
    every process and every resumed run draws the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = lengths, batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.mega * self.batch_size
        batches = []
        for i in range(0, len(perm), size):
            group = sorted(perm[i : i + size], key=lambda j: -self.lengths[j])
            batches += [group[k : k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        last = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        order = torch.randperm(len(batches), generator=g).tolist()
        for b in [batches[k] for k in order] + last:
            yield from b


# ---------------------------------------------------------------------------------------------------------------
# the trainer


@torch.no_grad()
def generate_texts(model, tokenizer, embeddings: torch.Tensor, *, batch_size: int = 64,
                   max_new_tokens: int = 256) -> list[str]:
    """Greedy decoding from BOS of each embedding (N, D) -> N strings."""
    out = []
    for i in range(0, len(embeddings), batch_size):
        e = embeddings[i : i + batch_size].to(model.device)
        bos = torch.full((len(e), 1), tokenizer.bos_token_id, device=model.device)
        ids = model.generate(input_ids=bos, formula_embedding=e, max_new_tokens=max_new_tokens, do_sample=False)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return out


def generation_metrics(model, tokenizer, rows: dict, *, n_vars: int = 3, n_points: int = 100,
                       n_trajectories: int = 500) -> dict[str, float]:
    """Validity and cos_rho of greedy decodings of `rows` (columns formula, embedding); see `stldec.evaluation`."""
    from ..evaluation import compute_metrics

    gold = list(rows["formula"])
    longest = max(len(tokenizer(g)["input_ids"]) for g in gold)
    texts = generate_texts(model, tokenizer, torch.tensor(rows["embedding"], dtype=torch.float32),
                           max_new_tokens=min(2 * longest, model.config.max_position_embeddings - 1))
    m = compute_metrics(gold, texts, n_trajectories=n_trajectories, n_vars=n_vars, n_points=n_points)["overall"]
    return {k: m[k] for k in ("validity", "cos_rho_mean", "cos_rho_median", "exact_match") if m[k] is not None}


class StlTrainer(Trainer):
    """Trainer with the stldec additions listed in the module docstring.

    encoder: the StlKernelEncoder of the data (saved as `encoder/` next to each checkpoint and the final model).
    generation_rows: validation rows (formula, embedding) decoded at each evaluation; None: loss only.
    rewarm_lr: the learning rate of the checkpoint a re-warmed run starts from (None: the usual schedule).
    """

    def __init__(self, *args, encoder=None, generation_rows: dict | None = None, rewarm_lr: float | None = None,
                 rewarm_optimizer: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoder, self.generation_rows = encoder, generation_rows
        self.rewarm_lr, self.rewarm_optimizer = rewarm_lr, rewarm_optimizer

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and "length" in getattr(ds, "column_names", ()):
            return GroupedSampler(list(ds["length"]), self.args.per_device_train_batch_size, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self) -> DataLoader:
        if isinstance(self.train_dataset, FormulaStream):
            return DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                              num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return super().get_train_dataloader()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.generation_rows is not None and eval_dataset is None:
            model = self.accelerator.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            n_vars, n_points = (self.encoder.n_vars, self.encoder.n_points) if self.encoder else (3, 100)
            gen = generation_metrics(model, self.processing_class, self.generation_rows, n_vars=n_vars,
                                     n_points=n_points)
            model.train(was_training)
            gen = {f"{metric_key_prefix}_{k}": v for k, v in gen.items()}
            self.log(gen)
            metrics.update(gen)
        return metrics

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint, then (all processes done) the completion marker, then the rotation of old ones."""
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # HF would rotate before the marker
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if not self.args.should_save:
            return
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"checkpoint-{self.state.global_step}"
        digests = {p.relative_to(checkpoint).as_posix(): _sha256(p) for p in sorted(checkpoint.rglob("*"))
                   if p.is_file() and p.name != MARKER}
        (checkpoint / MARKER).write_text(json.dumps({"global_step": self.state.global_step, "epoch": self.state.epoch,
                                                     "sha256": digests}))
        if limit:  # keep the newest `limit` complete checkpoints and the best one
            best = self.state.best_model_checkpoint
            for old in checkpoints(run_dir)[:-limit]:
                if best is None or old.resolve() != Path(best).resolve():
                    shutil.rmtree(old, ignore_errors=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if self.encoder is not None and self.args.should_save:
            self.encoder.save_pretrained(Path(output_dir or self.args.output_dir) / ENCODER_DIR)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.rewarm_optimizer is not None:  # Adam moments of the checkpoint, the new run's learning rate
            state = torch.load(Path(self.rewarm_optimizer) / "optimizer.pt", map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state)
            for group in self.optimizer.param_groups:
                group["lr"] = self.args.learning_rate
                group.pop("initial_lr", None)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.rewarm_lr is None:
            return scheduler
        decay = scheduler.lr_lambdas[0]  # the configured schedule (warm-up from 0, then decay)
        warm = self.args.get_warmup_steps(num_training_steps)
        start = self.rewarm_lr / self.args.learning_rate

        def rewarmed(step: int) -> float:  # linear from the checkpoint's LR to the peak, then the usual decay
            return start + (1 - start) * step / warm if step < warm else decay(step)

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer if optimizer is None else optimizer,
                                                              rewarmed)
        return self.lr_scheduler

