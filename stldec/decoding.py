"""Decoding formulae from embeddings: batched greedy / beam / sampling / n-best, grammar-constrained, re-ranked.

    texts = decode(model, tokenizer, embeddings)                                   # greedy, (B, D) -> B strings
    texts = decode(model, tokenizer, embeddings, strategy="beam", num_beams=4, constrained=True, n_vars=3)
    texts = decode(model, tokenizer, embeddings, strategy="rerank", k=8, encoder=encoder)
    texts = decode(model, tokenizer, embeddings, strategy="refine", k=8, encoder=encoder, budget_s=0.5)
    nbest = decode(model, tokenizer, embeddings, n=5)                               # B lists of 5 strings

- constrained=True masks tokens with `stldec.grammar.GrammarLogitsProcessor`: every output is a valid formula.
- strategy="rerank" generates k candidates (beam or sampling) plus the greedy output, re-embeds them with the
  kernel encoder and keeps the one closest to the target embedding; never farther than greedy's.
- strategy="refine" takes the same candidates (plus, with `library` > 0, that many generated formulae nearest to
  the target) and searches from them against the target embedding (`stldec.refine`: thresholds fitted by gradient,
  then window/operator/atom edits); never farther from the target than re-ranking's choice.
- `decode` works batch by batch with a progress bar; given `parts_path` it appends each finished batch to a JSONL
  file, and a rerun with the same settings and inputs skips what is done.
- Inputs: `read_inputs` (embedding files or formula tables), `load_model` (a saved decoder, refused when its weights
  are damaged or incomplete), `load_model_encoder` / `check_encoder` (the encoder a model was trained with, recorded
  in its config; another one is refused).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from .grammar import GrammarLogitsProcessor

STRATEGIES = ("greedy", "beam", "sample", "rerank", "refine")


@dataclass(frozen=True)
class DecodingConfig:
    """Every decoding setting; `canonical()` keeps the ones that change the output for the chosen strategy.

    strategy: greedy | beam (`num_beams`) | sample (`temperature`, `top_p`, `seed`) | rerank (`k` >= 0 candidates from
        `pool` = beam or sample, plus the greedy output, re-embedded by the kernel encoder; the closest to the
        target by `distance` = cosine | l2 wins; a smaller formula within `size_tolerance` of the best distance is
        preferred, never one farther than the greedy output) | refine (the rerank candidates, plus the `library`
        (default 8; 0: the network's candidates only) generated formulae nearest to the target, refined by
        `stldec.refine.refine` for `rounds` rounds of a threshold fit (`steps` Adam steps of size `lr`) and edit
        moves on the `top` closest candidates, within `budget_s` seconds per formula (None: no limit; set it and
        the result depends on the machine's speed)).
    constrained: grammar-constrained decoding (valid formulae with variables < `n_vars` and time horizon <=
        `max_horizon`, None: unbounded). max_new_tokens: None = the model's max_position_embeddings - 1.
    dialect: the dialect of the returned text (the model always writes the reference dialect).
    """

    strategy: str = "greedy"
    num_beams: int = 4
    k: int = 8
    pool: str = "beam"
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    constrained: bool = False
    n_vars: int = 3
    max_horizon: int | None = None
    max_new_tokens: int | None = None
    distance: str = "cosine"
    size_tolerance: float = 0.0
    batch_size: int = 64
    dialect: str = "reference"
    rounds: int = 3
    steps: int = 10
    lr: float = 0.05
    top: int = 2
    budget_s: float | None = None
    library: int = 8

    def __post_init__(self):
        choices = {"strategy": STRATEGIES, "pool": ("beam", "sample"), "distance": ("cosine", "l2"),
                   "dialect": ("reference", "textbook")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {valid}")
        for name in ("num_beams", "batch_size", "n_vars", "top", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("k", "rounds", "steps", "library"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.size_tolerance >= 0 and self.lr > 0):
            raise ValueError("need temperature > 0, 0 < top_p <= 1, size_tolerance >= 0 and lr > 0")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0 seconds per formula (or None for no limit), got {self.budget_s}")

    @property
    def samples(self) -> bool:
        return self.strategy == "sample" or (self.strategy in ("rerank", "refine") and self.pool == "sample")

    def canonical(self) -> dict:
        """The settings that decide the output, defaults filled in, the others dropped; sorted by name."""
        keep = {"strategy", "constrained", "max_new_tokens", "dialect"}
        keep |= {"n_vars", "max_horizon"} if self.constrained else set()
        keep |= {"num_beams"} if self.strategy == "beam" else set()
        keep |= {"k", "pool", "distance", "size_tolerance"} if self.strategy in ("rerank", "refine") else set()
        keep |= {"rounds", "steps", "lr", "top", "budget_s", "library"} if self.strategy == "refine" else set()
        keep |= {"temperature", "top_p", "seed", "batch_size"} if self.samples else set()  # a seed per batch
        return dict(sorted((k, v) for k, v in asdict(self).items() if k in keep))


def check_embeddings(embeddings, embedding_dim: int) -> torch.Tensor:
    """(N, D) float32 CPU tensor from a tensor / array / list (a single (D,) vector becomes (1, D)), or a clear
    error: the wrong size names both sizes, non-finite values name the rows."""
    e = torch.as_tensor(embeddings, dtype=torch.float32).cpu()
    e = e[None] if e.dim() == 1 else e
    if e.dim() != 2 or e.shape[1] != embedding_dim:
        raise ValueError(f"embeddings must have shape (N, {embedding_dim}) for this model (embedding_dim = "
                         f"{embedding_dim}), got {tuple(e.shape)}: size {e.shape[-1]} != {embedding_dim}")
    bad = (~torch.isfinite(e).all(1)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"embeddings have NaN or inf values in {len(bad)} rows: {bad[:10]}{' ...' * (len(bad) > 10)}")
    return e


def _generate(model, tokenizer, e: torch.Tensor, cfg: DecodingConfig, processors, *, n: int = 1,
              beams: int = 1, sample: bool = False) -> list[list[str]]:
    """n texts per embedding row (reference dialect) from one batched generate()."""
    bos = torch.full((len(e), 1), tokenizer.bos_token_id, device=model.device)
    extra = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0) if sample else {}
    ids = model.generate(input_ids=bos, formula_embedding=e.to(model.device), max_new_tokens=cfg.max_new_tokens,
                         do_sample=sample, num_beams=beams, num_return_sequences=n, logits_processor=processors,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **extra)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [texts[i * n : (i + 1) * n] for i in range(len(e))]


def _parse(text: str):
    from .stl import STLParseError, parse

    try:
        return parse(text)
    except STLParseError:
        return None


def rerank(candidates: list[list[str]], targets: torch.Tensor, encoder, *, distance: str = "cosine",
           size_tolerance: float = 0.0) -> list[int]:
    """Index of the chosen candidate per row: the valid one whose kernel embedding is closest to `targets[i]`.

    candidates[i][0] is the reference (greedy) output: the choice is never farther from the target than it. Among
    candidates within `size_tolerance` of the best distance (and no farther than the reference) the smallest
    formula wins. Candidates that do not parse or do not fit the encoder's trajectories are skipped; a row with
    no usable candidate gets 0. All usable candidates are embedded in one `encoder.encode` call.
    """
    formulae = [[_parse(t) for t in row] for row in candidates]
    usable = {f for row in formulae for f in row
              if f is not None and f.time_horizon < encoder.n_points and max(f.variables) < encoder.n_vars}
    unique = list(usable)
    emb = encoder.encode(unique) if unique else torch.zeros(0, encoder.embedding_dim)  # (U, D)
    where = {f: i for i, f in enumerate(unique)}
    choice = []
    for row, target in zip(formulae, targets):
        idx = [j for j, f in enumerate(row) if f in where]
        if not idx:
            choice.append(0)
            continue
        e = emb[[where[row[j]] for j in idx]]  # (c, D)
        t = target[None].to(e)
        d = 1 - torch.nn.functional.cosine_similarity(e, t, dim=1) if distance == "cosine" else (e - t).norm(dim=1)
        d = dict(zip(idx, d.tolist()))
        limit = min(min(d.values()) + size_tolerance, d.get(0, math.inf))
        choice.append(min((row[j].size, d[j], j) for j in idx if d[j] <= limit)[2])
    return choice


def _decode_batch(model, tokenizer, e: torch.Tensor, cfg: DecodingConfig, processors, encoder, n: int) -> list:
    """One batch: a text per row (n = 0) or a list of n texts per row."""
    if n:
        beams = 1 if cfg.samples else max(n, cfg.num_beams)
        return _generate(model, tokenizer, e, cfg, processors, n=n, beams=beams, sample=cfg.samples)
    if cfg.strategy in ("greedy", "beam", "sample"):
        beams = cfg.num_beams if cfg.strategy == "beam" else 1
        return [r[0] for r in _generate(model, tokenizer, e, cfg, processors, beams=beams, sample=cfg.samples)]
    greedy = _generate(model, tokenizer, e, cfg, processors)
    pool = _generate(model, tokenizer, e, cfg, processors, n=cfg.k, beams=1 if cfg.samples else cfg.k,
                     sample=cfg.samples) if cfg.k else [[] for _ in greedy]
    rows = [g + [t for t in dict.fromkeys(p) if t != g[0]] for g, p in zip(greedy, pool)]
    if cfg.strategy == "rerank":
        chosen = rerank(rows, e, encoder, distance=cfg.distance, size_tolerance=cfg.size_tolerance)
        return [row[j] for row, j in zip(rows, chosen)]
    from .refine import fits, nearest_library, refine

    candidates = [[f for t in row if fits(f := _parse(t), encoder)] for row in rows]
    if cfg.library:
        candidates = [c + extra for c, extra in zip(candidates, nearest_library(e, encoder, cfg.library))]
    some = [i for i, c in enumerate(candidates) if c]  # a row without any usable candidate keeps its greedy text
    found = refine([candidates[i] for i in some], e[some], encoder, rounds=cfg.rounds, steps=cfg.steps, lr=cfg.lr,
                   top=cfg.top, budget_s=cfg.budget_s, distance=cfg.distance, size_tolerance=cfg.size_tolerance)
    out = [row[0] for row in rows]
    for i, (f, _) in zip(some, found):
        out[i] = f.to_string()
    return out


def _in_dialect(text: str, dialect: str) -> str:
    f = _parse(text) if dialect != "reference" else None
    return text if f is None else f.to_string(dialect=dialect)


def _resume(parts_path: Path, header: dict) -> dict[int, list]:
    """Finished batches {start row: outputs} of an earlier run with the same header; a torn last line is dropped."""
    if not parts_path.is_file():
        parts_path.write_text(json.dumps(header) + "\n")
        return {}
    lines = parts_path.read_text().split("\n")
    try:
        same = json.loads(lines[0]) == header
    except json.JSONDecodeError:  # not a parts file: someone else's, never overwritten
        same = False
    if not same:
        raise ValueError(f"{parts_path} holds a run with other settings or inputs (or is not a decoding parts file); "
                         "delete it or choose another path")
    done = {}
    for line in lines[1:]:
        try:
            part = json.loads(line)
        except json.JSONDecodeError:
            break
        done[part["start"]] = part["outputs"]
    parts_path.write_text("".join(line + "\n" for line in lines[: 1 + len(done)]))  # drop a torn last line
    return done


@torch.no_grad()
def decode(model, tokenizer, embeddings, *, encoder=None, n: int = 0, parts_path: str | os.PathLike | None = None,
           progress: bool | None = None, **settings) -> list:
    """Decode formulae from embeddings (N, D): N strings, or with `n` > 0 an n-best list (N lists of n strings,
    from beam search with max(n, num_beams) beams, or from sampling when strategy="sample").

    settings: the fields of `DecodingConfig` (strategy, num_beams, k, temperature, top_p, constrained, n_vars, ...).
    encoder: the kernel encoder, needed by strategy="rerank" and "refine"; refused if the model was trained with
    another one.
    parts_path: a JSONL file each finished batch is appended to; rerunning with the same settings and embeddings
    skips the batches it holds (an interrupted run resumes). progress: tqdm bar (None: when on a terminal).
    Bad input fails before any work (see `check_embeddings`).
    """
    cfg = DecodingConfig(**settings)
    if cfg.max_new_tokens is None:
        cfg = replace(cfg, max_new_tokens=model.config.max_position_embeddings - 1)
    e = check_embeddings(embeddings, model.config.embedding_dim)
    if cfg.strategy in ("rerank", "refine") and not n and encoder is None:
        raise ValueError(f"strategy={cfg.strategy!r} re-embeds the candidates: pass the kernel encoder (encoder=...)")
    if encoder is not None:
        check_encoder(model, encoder)
    processors = LogitsProcessorList()
    if cfg.constrained:
        processors.append(GrammarLogitsProcessor(tokenizer, max_length=1 + cfg.max_new_tokens, n_vars=cfg.n_vars,
                                                 max_horizon=cfg.max_horizon))
    done = {}
    if parts_path is not None:
        header = {"settings": cfg.canonical(), "n": n, "rows": len(e),
                  "embeddings_sha256": hashlib.sha256(e.numpy().tobytes()).hexdigest()}
        parts_path = Path(parts_path)
        done = _resume(parts_path, header)
    model.eval()
    out = []
    starts = range(0, len(e), cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc="decoding", unit="batch", disable=None if progress is None else
                                   not progress)):
        if start not in done:
            with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
                torch.manual_seed(cfg.seed * 1_000_003 + b)  # a seed per batch: a resumed run samples the same
                part = _decode_batch(model, tokenizer, e[start : start + cfg.batch_size], cfg, processors, encoder, n)
            if cfg.dialect != "reference":
                part = [[_in_dialect(t, cfg.dialect) for t in p] if n else _in_dialect(p, cfg.dialect) for p in part]
            if parts_path is not None:
                with open(parts_path, "a") as f:
                    f.write(json.dumps({"start": start, "outputs": part}) + "\n")
            done[start] = part
        out += done[start]
    return out


# ---------------------------------------------------------------------------------------------------------------
# inputs: embedding files, formula files, the encoder a model was trained with

ENCODER_DIR = "encoder"  # a trained model folder keeps its kernel encoder here (stldec.trainers)


def model_encoder_config(model_or_dir) -> dict | None:
    """The saved config (fingerprint included) of the encoder a model was trained with, if its folder has one."""
    d = model_or_dir if isinstance(model_or_dir, str | os.PathLike) else model_or_dir.config._name_or_path
    p = Path(d or "") / ENCODER_DIR / "encoder_config.json"
    return json.loads(p.read_text()) if d and p.is_file() else None


def _recorded_fingerprints(model_or_dir) -> dict[str, str]:
    """Where a model records the encoder it was trained with -> that fingerprint: `encoder_fingerprint` in its
    config (written by training) and its `encoder/` folder; either may be absent (older models)."""
    config = getattr(model_or_dir, "config", None)
    if config is None:
        p = Path(model_or_dir) / "config.json"
        recorded = json.loads(p.read_text()).get("encoder_fingerprint") if p.is_file() else None
    else:
        recorded = getattr(config, "encoder_fingerprint", None)
    saved = model_encoder_config(model_or_dir)
    found = {"config.json encoder_fingerprint": recorded, f"{ENCODER_DIR}/ folder": saved and saved["fingerprint"]}
    return {where: fingerprint for where, fingerprint in found.items() if fingerprint}


def check_encoder(model_or_dir, encoder) -> None:
    """Refuse an encoder whose fingerprint (anchors, trajectories, sigma2, seed, convention) differs from the one
    the model was trained with (its config's `encoder_fingerprint`, its `encoder/` folder), or whose embedding size
    differs from the model's."""
    for where, fingerprint in _recorded_fingerprints(model_or_dir).items():
        if fingerprint != encoder.fingerprint:
            raise ValueError(f"the model was trained with encoder {fingerprint} (its {where}), not "
                             f"{encoder.fingerprint}: its embeddings mean something else (use the encoder the model "
                             "was trained with)")
    dim = getattr(getattr(model_or_dir, "config", None), "embedding_dim", None)
    if dim is not None and dim != encoder.embedding_dim:
        raise ValueError(f"the encoder makes {encoder.embedding_dim}-dim embeddings but the model takes {dim}")


def load_model_encoder(model_dir: str | os.PathLike):
    """The kernel encoder saved with a trained model (`<model_dir>/encoder`), or None; refused (`check_encoder`)
    when it is not the encoder the model's config records (a replaced `encoder/` folder)."""
    from .stl import StlKernelEncoder

    d = Path(model_dir) / ENCODER_DIR
    if not (d / "encoder_config.json").is_file():
        return None
    encoder = StlKernelEncoder.from_pretrained(d)
    check_encoder(model_dir, encoder)
    return encoder


MAX_ABS_WEIGHT = 1e4  # trained stldec weights stay far below; random bytes read as float32 mostly exceed it


def load_model(model_dir: str | os.PathLike):
    """The decoder saved in `model_dir` (eval mode), refused unless its weights load whole and sound.

    `from_pretrained` alone initialises missing tensors at random with a warning and uses whatever numbers a
    damaged file holds. Here an unreadable `model.safetensors`, missing / unexpected / mis-shaped tensors (HF's
    `output_loading_info`), or tensors with NaN, inf or values above `MAX_ABS_WEIGHT` (garbage bytes) raise a
    one-line ValueError naming the file and the tensors. Every command that decodes loads its model here.
    """
    from safetensors import SafetensorError

    from .modeling import StlDecForCausalLM

    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{model_dir} holds no model.safetensors: not a saved model or checkpoint folder")
    try:
        model, info = StlDecForCausalLM.from_pretrained(model_dir, output_loading_info=True,
                                                        ignore_mismatched_sizes=True)  # reported, refused below
    except SafetensorError as e:
        raise ValueError(f"{weights} is not a readable safetensors file ({e}): the file is damaged") from None
    wrong = [f"{kind} tensors {sorted(info[f'{kind}_keys'])}" for kind in ("missing", "unexpected")
             if info[f"{kind}_keys"]]
    wrong += [f"{k} has shape {list(a)} in the file, {list(b)} in the model" for k, a, b in info["mismatched_keys"]]
    if wrong:
        raise ValueError(f"{weights} does not match the model of {Path(model_dir) / 'config.json'}: "
                         + "; ".join(wrong))
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool((t.abs() <= MAX_ABS_WEIGHT).all())]  # NaN fails <= too
    if bad:
        raise ValueError(f"{weights} holds NaN, inf or implausibly large (> {MAX_ABS_WEIGHT:g}) values in tensors "
                         f"{bad}: the file is damaged")
    return model.eval()


def read_inputs(path: str | os.PathLike, encoder=None) -> tuple[torch.Tensor, list[str] | None]:
    """(embeddings (N, D), gold formulae or None) from a file: `.safetensors` (the tensor `embeddings`, or the
    only one), `.npy` (no pickle), or a formula table (.csv/.jsonl/.parquet/dataset folder with a `formula` and
    optionally an `embedding` column; formulae without embeddings are embedded with `encoder`)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {str(p)!r} not found")
    if p.suffix == ".safetensors":
        tensors = load_file(str(p))
        if len(tensors) != 1 and "embeddings" not in tensors:
            raise ValueError(f"{p} holds tensors {sorted(tensors)}: name the embeddings tensor `embeddings`")
        return tensors.get("embeddings", next(iter(tensors.values()))), None
    if p.suffix == ".npy":
        return torch.from_numpy(np.load(p, allow_pickle=False)), None
    from .data import load_formulae

    ds = load_formulae(p)
    if "embedding" not in ds.column_names:
        if encoder is None:
            raise ValueError(f"{p} has formulae but no `embedding` column: give an encoder to embed them")
        return encoder.encode(ds["formula"]), list(ds["formula"])
    return torch.tensor(ds["embedding"], dtype=torch.float32), list(ds["formula"])
