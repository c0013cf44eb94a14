"""Metrics for decoded STL formulae: syntax, structure, semantics (robustness), embeddings and decoder artefacts.

`compute_metrics(gold, decoded)` scores a whole test set at once and returns
`{"overall": {...}, "by_depth": {depth: {...}}, "rows": [one dict per pair]}`. Definitions (DESIGN.md,
"Evaluation protocol"; research/papers.md §1.8-1.9):

- validity: the decoded text parses (reference dialect). Every other decoded-side metric of an invalid output is
  0 (cos_rho, sign agreement) or missing (NaN: ratios, embedding distances, artefact rates).
- exact match: canonical strings are equal after parse + print (spacing and redundant parentheses ignored).
- skeleton match: the canonical strings are equal once every threshold is replaced by `#` and every interval bound
  by `#`. The skeleton keeps the operator tree, the variables, the comparison directions and the *kind* of each
  interval (bounded `[#,#]`, right-unbounded `[#,inf]`, or none), but no number. `threshold_error` (mean |Δc| over
  the atoms, paired in tree order) and `interval_error` (mean |Δ| over the finite interval bounds, reference
  dialect) are defined on skeleton matches only.
- cos_rho: cosine between the time-0 robustness vectors of gold and decoded on `n_trajectories` base-measure
  trajectories (reference convention, seed 0); 0 when the decoded formula is invalid or cannot be evaluated on
  those trajectories (horizon >= n_points, or a variable >= n_vars). Summaries: mean, q25, median, q75, share > 0.9.
- sign agreement: share of trajectories on which gold and decoded have the same satisfaction (robustness > 0).
- embedding cosine / L2: between the kernel embeddings of gold and decoded (needs `encoder=`); valid outputs only.
- node / depth ratio: decoded size (depth) / gold size (depth), averaged over valid outputs.
- repeated-digit rate: share of decoded thresholds whose printed digits (sign and point removed) contain a run of 3
  equal digits (0.3332, 1.1111, 0.0005); reported for gold too, as the base rate.
- duplicated-atom rate: share of valid decoded formulae in which one atom (variable, direction, threshold) occurs
  twice or more, e.g. `( x_2 >= 0.233 or x_2 >= 0.233 )`; gold base rate alongside.

Robustness of all gold and decoded formulae is computed in one batched `robustness()` pass over the unique
formulae (chunked to bound memory), never formula by formula.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from .stl.formula import Atom, Formula, format_threshold, parse
from .stl.kernel import robustness_matrix as _robustness_rows
from .stl.kernel import unit_rows
from .stl.measure import BaseMeasure

EVALUATE_MODULE = str(Path(__file__).parent / "metrics" / "stl_decoding")  # `evaluate.load(EVALUATE_MODULE)`
_NUMBER = re.compile(r"(?<=[<>]= )\S+|(?<=[\[,])\d+(?=[,\]])")
_RUN3 = re.compile(r"(\d)\1\1")


def try_parse(text: str) -> Formula | None:
    """The parsed formula, or None when `text` is not a valid formula (reference dialect)."""
    try:
        return parse(text)
    except (ValueError, RecursionError):
        return None


def skeleton(f: Formula) -> str:
    """Canonical text with every threshold and interval bound replaced by `#` (interval kinds and `inf` stay)."""
    return _NUMBER.sub("#", f.to_string())


def thresholds(f: Formula) -> list[float]:
    """Atom thresholds in tree order (post-order, left to right)."""
    return [n.threshold for n in f.walk() if isinstance(n, Atom)]


def interval_bounds(f: Formula) -> list[int]:
    """Finite interval bounds in tree order, as printed in the reference dialect (`[a,B]` gives a, B)."""
    out = []
    for n in f.walk():
        iv = getattr(n, "interval", None)
        if iv is not None:
            out += [iv.start] if iv.end is None else [iv.start, iv.end + 1]
    return out


def has_repeated_digits(c: float) -> bool:
    """True when the printed threshold has a run of 3 equal digits (sign and decimal point removed)."""
    return _RUN3.search(re.sub(r"[^0-9]", "", format_threshold(c))) is not None


def has_duplicated_atom(f: Formula) -> bool:
    """True when the same atom (variable, direction, threshold) occurs at least twice in `f`."""
    atoms = [n for n in f.walk() if isinstance(n, Atom)]
    return len(set(atoms)) < len(atoms)


def evaluable(f: Formula, n_vars: int, n_points: int) -> bool:
    """The formula can be evaluated at t=0 on trajectories of shape (n_vars, n_points) in the reference convention."""
    return f.time_horizon <= n_points - 1 and max(f.variables, default=0) < n_vars


def sample_trajectories(n_trajectories: int = 1000, *, n_vars: int = 3, n_points: int = 100, seed: int = 0):
    """Base-measure trajectories (N, n_vars, n_points) used for cos_rho and sign agreement."""
    return BaseMeasure().sample(n_trajectories, n_vars, n_points, seed=seed)


def robustness_matrix(formulae: Sequence[Formula], trajectories: torch.Tensor, *, convention: str = "reference",
                      chunk: int = 1024) -> torch.Tensor:
    """Time-0 robustness (F, N) of many formulae: batched semantics passes of `chunk` formulae each."""
    parts = [_robustness_rows(list(formulae[i : i + chunk]), trajectories, convention)
             for i in range(0, len(formulae), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, trajectories.shape[0])


def compute_metrics(gold: Sequence[str], decoded: Sequence[str], *, encoder=None, gold_embeddings=None,
                    n_trajectories: int = 1000, seed: int = 0, n_vars: int = 3, n_points: int = 100,
                    depths: Sequence[int] | None = None, convention: str = "reference", trajectories=None) -> dict:
    """Score decoded formulae against gold ones: `{"overall", "by_depth", "rows"}` (see the module docstring).

    gold, decoded: formula strings (reference dialect), paired by position. Gold must parse and fit the trajectories.
    encoder: an `StlKernelEncoder` for the embedding metrics (skipped when None); gold_embeddings: (B, D) tensor of
    the gold embeddings if already known (saves re-encoding). depths: gold depths (default: computed).
    trajectories: (N, n_vars, n_points) tensor to use instead of sampling `n_trajectories` with `seed`.
    """
    if len(gold) != len(decoded):
        raise ValueError(f"{len(gold)} gold formulae but {len(decoded)} decoded ones")
    if trajectories is None:
        trajectories = sample_trajectories(n_trajectories, n_vars=n_vars, n_points=n_points, seed=seed)
    _, n_vars, n_points = trajectories.shape
    g = [parse(s) for s in gold]
    d = [try_parse(s) for s in decoded]
    for i, f in enumerate(g):
        if not evaluable(f, n_vars, n_points):
            raise ValueError(f"gold formula {i} ({gold[i]!r}) cannot be evaluated on trajectories of "
                             f"{n_vars} variables x {n_points} points")
    ok = [f is not None and evaluable(f, n_vars, n_points) for f in d]

    # one batched robustness pass over the unique formulae (gold and decoded share rows when equal)
    index: dict[Formula, int] = {}
    for f in g + [f for f, o in zip(d, ok) if o]:
        index.setdefault(f, len(index))
    rho = robustness_matrix(list(index), trajectories, convention=convention)  # (F, N)
    gi = torch.tensor([index[f] for f in g])
    di = torch.tensor([index[f] if o else 0 for f, o in zip(d, ok)])
    mask = torch.tensor(ok, dtype=torch.float64)
    rg, rd = rho[gi].double(), rho[di].double()  # (B, N)
    ug, ud = unit_rows(rg), unit_rows(rd)
    both_zero = ~ug.any(1) & ~ud.any(1)  # the kernel's rule: two all-zero robustness vectors have cosine 1
    cos = torch.where(both_zero, 1.0, (ug * ud).sum(1).clamp(-1.0, 1.0))
    sign = ((rg > 0) == (rd > 0)).double().mean(1)  # satisfaction is robustness > 0 (stldec.stl.satisfaction)
    cos, sign = (cos * mask).tolist(), (sign * mask).tolist()

    emb_cos = emb_l2 = [math.nan] * len(g)
    if encoder is not None:
        emb_cos, emb_l2 = _embedding_distances(encoder, g, d, gold_embeddings)

    rows = []
    for i, (gs, ds, fg, fd) in enumerate(zip(gold, decoded, g, d)):
        valid = fd is not None
        skel = valid and skeleton(fd) == skeleton(fg)
        tg, td = thresholds(fg), thresholds(fd) if valid else []
        rows.append({
            "gold": gs, "decoded": ds, "depth": int(depths[i]) if depths is not None else fg.depth,
            "valid": valid, "exact_match": valid and fd.to_string() == fg.to_string(), "skeleton_match": skel,
            "threshold_error": _mean_abs(tg, td) if skel else math.nan,
            "interval_error": _mean_abs(interval_bounds(fg), interval_bounds(fd)) if skel else math.nan,
            "cos_rho": cos[i], "sign_agreement": sign[i],
            "embedding_cosine": emb_cos[i], "embedding_l2": emb_l2[i],
            "gold_nodes": fg.size, "decoded_nodes": fd.size if valid else math.nan,
            "gold_depth": fg.depth, "decoded_depth": fd.depth if valid else math.nan,
            "gold_thresholds": len(tg), "gold_repeated_digits": sum(map(has_repeated_digits, tg)),
            "decoded_thresholds": len(td), "decoded_repeated_digits": sum(map(has_repeated_digits, td)),
            "gold_duplicated_atom": has_duplicated_atom(fg),
            "decoded_duplicated_atom": has_duplicated_atom(fd) if valid else math.nan,
        })
    by_depth = {k: summarize([r for r in rows if r["depth"] == k]) for k in sorted({r["depth"] for r in rows})}
    return {"overall": summarize(rows), "by_depth": by_depth, "rows": rows}


def _mean_abs(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.mean(np.abs(np.subtract(a, b)))) if a else 0.0


def _embedding_distances(encoder, g: list[Formula], d: list[Formula | None], gold_embeddings):
    """Cosine and L2 between gold and decoded embeddings; NaN where the decoded formula cannot be embedded."""
    ok = [f is not None and evaluable(f, encoder.n_vars, encoder.n_points) for f in d]
    eg = torch.as_tensor(gold_embeddings if gold_embeddings is not None else encoder.encode(g)).double()
    if eg.shape[0] != len(g):
        raise ValueError(f"gold_embeddings has {eg.shape[0]} rows for {len(g)} gold formulae")
    cos, l2 = torch.full((len(g),), math.nan, dtype=torch.float64), torch.full((len(g),), math.nan, dtype=torch.float64)
    idx = torch.tensor([i for i, o in enumerate(ok) if o], dtype=torch.long)
    if len(idx):
        unique = list(dict.fromkeys(d[i] for i in idx.tolist()))  # each distinct decoded formula embedded once
        where = {f: j for j, f in enumerate(unique)}
        ed = encoder.encode(unique).double()[[where[d[i]] for i in idx.tolist()]]  # (V, D)
        cos[idx] = torch.nn.functional.cosine_similarity(eg[idx], ed, dim=1)
        l2[idx] = (eg[idx] - ed).norm(dim=1)
    return cos.tolist(), l2.tolist()


def summarize(rows: Sequence[dict]) -> dict:
    """Aggregate per-formula rows into the summary metrics (NaN-valued entries become None: nothing to average)."""
    if not rows:
        return {"n": 0}
    col = {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0] if k not in ("gold", "decoded")}
    valid = col["valid"] > 0
    cos = col["cos_rho"]
    gold_thr, dec_thr = col["gold_thresholds"].sum(), col["decoded_thresholds"][valid].sum()
    out = {
        "n": len(rows), "validity": valid.mean(), "exact_match": col["exact_match"].mean(),
        "skeleton_match": col["skeleton_match"].mean(),
        "threshold_error": np.nanmean(col["threshold_error"]) if col["skeleton_match"].any() else math.nan,
        "interval_error": np.nanmean(col["interval_error"]) if col["skeleton_match"].any() else math.nan,
        "cos_rho_mean": cos.mean(), "cos_rho_q25": np.quantile(cos, 0.25), "cos_rho_median": np.median(cos),
        "cos_rho_q75": np.quantile(cos, 0.75), "cos_rho_share_above_0.9": (cos > 0.9).mean(),
        "sign_agreement": col["sign_agreement"].mean(),
        "embedding_cosine": _nanmean(col["embedding_cosine"]), "embedding_l2": _nanmean(col["embedding_l2"]),
        "node_ratio": _nanmean(col["decoded_nodes"] / col["gold_nodes"]),
        "depth_ratio": _nanmean(col["decoded_depth"] / col["gold_depth"]),
        "repeated_digit_rate": col["decoded_repeated_digits"][valid].sum() / dec_thr if dec_thr else math.nan,
        "gold_repeated_digit_rate": col["gold_repeated_digits"].sum() / gold_thr if gold_thr else math.nan,
        "duplicated_atom_rate": _nanmean(col["decoded_duplicated_atom"]),
        "gold_duplicated_atom_rate": col["gold_duplicated_atom"].mean(),
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else (int(v) if k == "n" else float(v)))
            for k, v in out.items()}


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def flatten_metrics(result: dict, *, by_depth: bool = True) -> dict[str, float]:
    """`{"cos_rho_mean": ..., "depth3/cos_rho_mean": ...}`: the summaries as one flat dict (None values dropped)."""
    flat = {k: v for k, v in result["overall"].items() if v is not None}
    if by_depth:
        for depth, summary in result["by_depth"].items():
            flat.update({f"depth{depth}/{k}": v for k, v in summary.items() if v is not None})
    return flat


def trainer_compute_metrics(tokenizer, **kwargs) -> Callable:
    """A `Trainer(compute_metrics=...)` callable: decodes generated ids and gold labels, returns flat metrics.

    Use with a `prediction_step` that returns generated ids (HF_V5_RECIPE.md §6: not `predict_with_generate`).
    -100 padding is replaced by the pad id before decoding; `kwargs` go to `compute_metrics`.
    """

    def compute(eval_pred) -> dict[str, float]:
        preds, labels = (np.where(np.asarray(a) == -100, tokenizer.pad_token_id, np.asarray(a))
                         for a in (eval_pred.predictions, eval_pred.label_ids))
        decoded = tokenizer.batch_decode(preds, skip_special_tokens=True)
        gold = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return flatten_metrics(compute_metrics(gold, decoded, **kwargs), by_depth=False)

    return compute


# ---------------------------------------------------------------------------------------------------------------
# a whole evaluation run: decode a test file with a saved model, score it, record it in the registry, report


def checkpoint_step(model_dir: str | os.PathLike) -> int | None:
    """Training step of a model folder: N for `checkpoint-N`, else `global_step` of its trainer_state.json."""
    d = Path(model_dir)
    m = re.fullmatch(r"checkpoint-(\d+)", d.name)
    if m:
        return int(m.group(1))
    state = d / "trainer_state.json"
    return json.loads(state.read_text()).get("global_step") if state.is_file() else None


def run_evaluation(model_dir: str | os.PathLike, test_path: str | os.PathLike, *, encoder=None,
                   registry: str | os.PathLike | None = None, report: str | os.PathLike | None = None,
                   limit: int | None = None, n_trajectories: int = 1000, metric_seed: int = 0, force: bool = False,
                   embedding_metrics: bool = False, device: str | None = None, progress: bool | None = None,
                   **settings) -> dict:
    """Decode `test_path` (formula[,depth][,embedding]) with the model in `model_dir`, score it, record and report it.

    encoder: an StlKernelEncoder or a saved encoder folder; default: the one saved with the model (`<model>/encoder`);
    one whose fingerprint differs from the model's is refused. settings: `decoding.DecodingConfig` fields.
    n_trajectories, metric_seed: the base-measure trajectories of cos_rho and sign agreement. embedding_metrics:
    also re-embed every decoded formula with the encoder (at N = 100k: ~9 ms per formula with the fused CPU engine,
    ~0.7 s on the torch engine, so opt-in); gold embeddings come from the test file's `embedding` column, else from
    the encoder.
    registry: SQLite file; a run with the same key (model, weights, step, canonical settings, metric settings, test
    set) is reused instead of recomputed unless `force`; an identical run in progress (another job on the same
    registry) is waited for, then reused (`Registry.lock`). report: folder for report.md + plots (+ predictions.csv when
    there is no registry). Returns compute_metrics' dict plus `run` (the registry row), `reused` and `conflict`.
    """
    import pandas as pd

    from .data import load_formulae
    from .decoding import DecodingConfig, check_encoder, decode, load_model, load_model_encoder
    from .modeling import StlDecConfig
    from .registry import Registry, file_sha256, run_key, test_set_hash
    from .report import published_reference, write_report
    from .stl import StlKernelEncoder
    from .tokenization import StlTokenizer

    model_dir = Path(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{model_dir} holds no model.safetensors: not a saved model or checkpoint folder")
    if isinstance(encoder, str | os.PathLike):
        encoder = StlKernelEncoder.from_pretrained(encoder, device=device)
    encoder = encoder or load_model_encoder(model_dir)
    if encoder is None:
        raise ValueError(f"{model_dir} has no saved encoder/ folder: pass the kernel encoder it was trained with")
    check_encoder(str(model_dir), encoder)
    settings = {k: v for k, v in settings.items() if v is not None}  # None: the default (CLI flags not given)
    settings.setdefault("n_vars", encoder.n_vars)  # constrained decoding stays inside the encoder's trajectories
    settings.setdefault("max_horizon", encoder.n_points - 1)
    settings.setdefault("max_new_tokens", StlDecConfig.from_pretrained(model_dir).max_position_embeddings - 1)
    cfg = DecodingConfig(**settings)
    if cfg.strategy in ("rerank", "refine") and encoder.seed == metric_seed:
        raise ValueError(f"strategy={cfg.strategy!r} searches on the encoder's trajectories, which are the metrics' "
                         f"(both seed {metric_seed}): choose another metric_seed (--metric_seed) so the scores stay "
                         "honest")
    canonical = cfg.canonical()

    ds = load_formulae(test_path)
    ds = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    gold, depths = list(ds["formula"]), list(ds["depth"])
    run = dict(model=str(model_dir.resolve()), model_sha256=file_sha256(weights), step=checkpoint_step(model_dir),
               strategy=cfg.strategy, settings=canonical, test_hash=test_set_hash(gold),
               metric_settings=dict(n_trajectories=n_trajectories, seed=metric_seed, n_vars=encoder.n_vars,
                                    n_points=encoder.n_points, encoder=encoder.fingerprint,
                                    embedding_metrics=embedding_metrics))
    run["key"] = run_key(**run)
    reg = Registry(registry) if registry is not None else None
    with reg.lock(run["key"]) if reg is not None else contextlib.nullcontext():  # an identical run waits, then reuses
        old = reg.get(run["key"]) if reg is not None and not force else None
        if old is not None and reg.outputs_path(old).is_file():
            rows = pd.read_parquet(reg.outputs_path(old)).to_dict(orient="records")
            result = {**old["metrics"], "rows": rows, "run": old, "reused": True, "conflict": None}
        else:
            model = load_model(model_dir).to(device or encoder.device)
            tokenizer = (StlTokenizer.from_pretrained(model_dir) if (model_dir / "vocab.json").is_file()
                         else StlTokenizer())
            embeddings = (torch.tensor(ds["embedding"], dtype=torch.float32) if "embedding" in ds.column_names
                          else encoder.encode(gold))
            parts = reg.outputs_dir / f"{run['key'][:16]}.parts.jsonl" if reg is not None else None  # dir: by lock()
            start = time.perf_counter()
            decoded = decode(model, tokenizer, embeddings, encoder=encoder, parts_path=parts, progress=progress,
                             **settings)
            seconds = time.perf_counter() - start
            result = compute_metrics(gold, decoded, encoder=encoder if embedding_metrics else None,
                                     gold_embeddings=embeddings, n_trajectories=n_trajectories, seed=metric_seed,
                                     n_vars=encoder.n_vars, n_points=encoder.n_points, depths=depths)
            stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"  # unique even within one second
            run.update(test_path=str(test_path), n=len(gold), metrics={k: result[k] for k in ("overall", "by_depth")},
                       outputs=f"outputs/{run['key'][:16]}-{stamp}.parquet",  # a rejected rerun never overwrites
                       info=dict(decode_seconds=round(seconds, 3), formulae_per_second=round(len(gold) / seconds, 2),
                                 device=str(model.device), host=platform.node()))
            result.update(run=run, reused=False, conflict=None)
            if reg is not None:
                pd.DataFrame(result["rows"]).to_parquet(reg.outputs_path(run), index=False)
                result["conflict"] = reg.add(run)
                if not result["conflict"] and reg.get(run["key"])["outputs"] != run["outputs"]:
                    reg.outputs_path(run).unlink()  # an identical rerun (--force): the stored outputs stand
                parts.unlink()
    if report is not None:
        if reg is None:
            Path(report).mkdir(parents=True, exist_ok=True)
            pd.DataFrame(result["rows"]).to_csv(Path(report) / "predictions.csv", index=False)
        write_report(report, result, run=result["run"], history=reg.checkpoints_of(result["run"]) if reg else (),
                     reference=published_reference(str(test_path)))
    return result
