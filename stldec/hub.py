"""Hugging Face Hub hand-off: a trained model folder -> a self-contained Hub folder with a model card, and its upload.

`import stldec` registers the config, tokenizer and every head for the Auto classes (`register_for_auto_class`), so
a plain `save_pretrained` already writes the code files and the `auto_map`. `prepare_hub_folder(model_dir, out_dir)`
adds what the Hub needs on top of that, from a folder `stldec train` wrote:
- the model and tokenizer re-saved (a decoder through `StlDecodingPipeline.save_pretrained`, which also copies
  pipeline.py and names it in config.json, so `pipeline(model=REPO, trust_remote_code=True)` finds the task);
- `encoder/`, the kernel encoder the model was trained with (formula strings can be embedded from the folder);
- README.md, a model card (`huggingface_hub.ModelCard`) filled from what the run recorded: experiment.yaml,
  runs.jsonl, trainer_state.json, *_results.json and, given a registry, the `stldec evaluate` runs of these exact
  weights (as model-index eval results).
`push_to_hub(model_dir, repo_id)` prepares that folder in a temporary directory and uploads it; it is the only
function here that needs a network.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .decoding import ENCODER_DIR, load_model_encoder
from .modeling import StlDecForCausalLM, StlDecForMaskedLM
from .pipeline import StlDecodingPipeline
from .registry import Registry, file_sha256
from .tokenization import StlTokenizer

EVAL_METRICS = ("validity", "exact_match", "skeleton_match", "cos_rho_mean", "cos_rho_median",
                "cos_rho_share_above_0.9", "sign_agreement")
HYPERPARAMETERS = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                   "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim",
                   "bf16", "seed")
TITLE = {"decoder": "STL formula decoder (kernel embedding -> formula)", "gpt": "STL formula language model",
         "mlm": "STL formula masked language model (encoder)"}
EXAMPLES = ("always[0,10] ( x_0 >= 0.5 )", "eventually[0,5] ( x_0 <= -0.2 )")
USAGE = {
    "decoder": """\
embedding = torch.randn(1, model.config.embedding_dim)  # stands for the kernel embedding of a formula, (B, D)
ids = model.generate(formula_embedding=embedding, max_new_tokens=model.config.max_position_embeddings - 1)
print(tokenizer.batch_decode(ids, skip_special_tokens=True))""",
    "gpt": """\
ids = model.generate(do_sample=True, max_new_tokens=model.config.max_position_embeddings - 1,
                     num_return_sequences=4)  # starts from <s>
print(tokenizer.batch_decode(ids, skip_special_tokens=True))""",
    "mlm": """\
batch = tokenizer(["always[0,5] ( x_0 >= <mask> )"], return_tensors="pt")
logits = model(**batch).logits  # (B, T, vocab_size)
print(tokenizer.convert_ids_to_tokens(logits[0].argmax(-1)))""",
}
HEAD = {"decoder": "AutoModelForCausalLM", "gpt": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM"}


def _read(path: Path):
    """A JSON / YAML file of the run record, the last line of a JSONL file, or None where the run wrote none."""
    if not path.is_file():
        return None
    if path.suffix == ".jsonl":
        return json.loads(path.read_text().splitlines()[-1])
    return yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(path.read_text())


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(rows) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rows)


def evaluations(model_dir: str | os.PathLike, registry: str | os.PathLike | None = None) -> list[dict]:
    """The known evaluations of the model in `model_dir`: its training run's test set (test_results.json) and the
    `stldec evaluate` runs of these exact weights in `registry`. Each: dataset, label, n (or None), metrics."""
    d = Path(model_dir)
    found = []
    test = _read(d / "test_results.json")
    if test is not None:
        experiment = _read(d / "experiment.yaml") or {}
        dataset = Path(experiment.get("data", {}).get("test") or "test").name
        metrics = {k: test[f"test_{k}"] for k in ("loss", *EVAL_METRICS) if f"test_{k}" in test}
        found.append(dict(dataset=dataset, label="greedy, scored during training", n=None, metrics=metrics))
    if registry is not None:
        if not Path(registry).is_file():
            raise FileNotFoundError(f"registry {str(registry)!r} not found")
        for run in Registry(registry).runs(model_sha256=file_sha256(d / "model.safetensors")):
            overall = run["metrics"]["overall"]
            label = run["strategy"] + (", constrained" if run["settings"].get("constrained") else "")
            found.append(dict(dataset=Path(run["test_path"]).name, label=label, n=run["n"],
                              metrics={k: overall[k] for k in EVAL_METRICS if overall.get(k) is not None}))
    return found


def _data_lines(experiment: dict | None, encoder) -> list[str]:
    lines = ["- not recorded: the folder this card was made from holds no experiment.yaml"]
    if experiment is not None:
        spec = experiment["data"]
        overrides = f", overrides {json.dumps(spec['generator'])}" if spec.get("generator") else ""
        train = f"file `{spec['train']}`" if spec.get("train") else (
            f"{'an endless stream of' if spec.get('stream') else spec['n_train']} formulae generated with the "
            f"`{spec['preset']}` preset (seed {spec['seed']}{overrides})")
        val = f"file `{spec['validation']}`" if spec.get("validation") else \
            f"{spec['n_validation']} generated formulae (another seed)"
        lines = [f"- training: {train}", f"- validation: {val}", "- model section of the experiment: "
                 f"`{json.dumps({k: v for k, v in experiment['model'].items() if v is not None})}`"]
    if encoder is not None:
        lines += [f"- kernel encoder (`{ENCODER_DIR}/`): {encoder.embedding_dim} anchors, {encoder.n_trajectories} "
                  f"trajectories of {encoder.n_vars} variables x {encoder.n_points} points, `{encoder.fingerprint}`"]
    return lines


def _training_lines(record: dict | None, state: dict | None, train: dict | None) -> list[str]:
    if record is None:
        return ["Not recorded: the folder this card was made from holds no runs.jsonl."]
    args, hw, versions = record["training_arguments"], record["hardware"], record["versions"]
    shown = [k for k in HYPERPARAMETERS if k in args and not (k == "num_train_epochs" and args["max_steps"] > 0)]
    rows = [(k, args[k]) for k in shown] + [("processes", record["world_size"])]
    rows += [("steps", state["global_step"])] if state else []
    rows += [("final training loss", train["train_loss"])] if train else []
    evals = [x for x in (state or {}).get("log_history", []) if "eval_loss" in x]
    rows += [("last validation loss", evals[-1]["eval_loss"])] if evals else []
    rows += [("hardware", f"{hw['cpu_count']} CPUs, GPUs: {', '.join(hw['gpus']) or 'none'}"),
             ("code", f"stldec {versions['stldec']}, git {record['git']['commit']}"),
             ("transformers", versions["transformers"]), ("torch", versions["torch"])]
    return [_table(rows)]


def _evaluation_lines(evals: list[dict]) -> list[str]:
    if not evals:
        return ["No evaluation of these weights was recorded. `stldec evaluate --model FOLDER --test TEST.csv "
                "--registry runs.sqlite`, then `stldec hub prepare ... --registry runs.sqlite`, adds it here."]
    names = [k for k in ("loss", *EVAL_METRICS) if any(k in e["metrics"] for e in evals)]
    lines = ["| test set | decoding | n | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
    lines += [f"| {e['dataset']} | {e['label']} | {e['n'] or ''} | "
              + " | ".join(_fmt(e["metrics"][k]) if k in e["metrics"] else "" for k in names) + " |" for e in evals]
    return lines + ["", "cos_rho: cosine of the robustness vectors of gold and decoded formulae on sampled "
                    "trajectories (semantic closeness); validity: the share of outputs that parse."]


def _usage_lines(kind: str, name: str, embedding_dim: int) -> list[str]:
    lines = ["The code ships in this repository: loading needs `trust_remote_code=True` and transformers >= 5.24, "
             "no `stldec` install.", "", "```python", "import torch", f"from transformers import AutoTokenizer, "
             f"{HEAD[kind]}", "", f'repo = "{name}"', "tokenizer = AutoTokenizer.from_pretrained(repo, "
             "trust_remote_code=True)", f"model = {HEAD[kind]}.from_pretrained(repo, trust_remote_code=True).eval()",
             USAGE[kind], "```"]
    if kind == "decoder":
        lines += ["", "To embed a real formula, decode it back and move in embedding space, use the `stl-decoding` "
                  "pipeline that ships here too; it needs the `stldec` package installed (the kernel encoder and the "
                  "grammar of constrained decoding live there) and embeds formulae with this repository's "
                  f"`{ENCODER_DIR}/`:", "", "```python", "from transformers import pipeline", "", f'repo = "{name}"',
                  'pipe = pipeline("stl-decoding", model=repo, trust_remote_code=True)',
                  f'print(pipe("{EXAMPLES[0]}", constrained=True))  # formula -> kernel embedding -> formula',
                  f"embeddings = pipe.encoder.encode({list(EXAMPLES)!r})  # (2, {embedding_dim})",
                  "middle = (embeddings[0] + embeddings[1]) / 2  # a point between the two formulae",
                  'print(pipe(middle, strategy="beam", num_beams=4, constrained=True))', "```"]
    return lines


def _limitation_lines(kind: str) -> list[str]:
    lines = ["- It decodes embeddings made by its own kernel encoder (the fingerprint above: anchors, trajectories, "
             "sigma2, seed). An embedding from another encoder, or a vector far from every training embedding, "
             "means something else and decodes to an unreliable formula.",
             "- Decoding is approximate: the output is a formula with similar robustness on sampled trajectories "
             "(cos_rho), rarely the identical formula; thresholds are approximate. Unconstrained decoding can "
             "return text that does not parse; `constrained=True` guarantees a valid formula."] \
        if kind == "decoder" else []
    return lines + ["- Formulae use the published text format in the reference dialect (`[a,b]` covers sample "
                    "offsets a..b-1), variables x_0, x_1, ... and time horizons shorter than the training "
                    "trajectories; the tokenizer spells numbers digit by digit and has no space tokens.",
                    "- It was trained on randomly generated formulae (see Training data): formulae from another "
                    "distribution, deeper ones in particular, are modelled worse."]


def model_card(model, model_dir: str | os.PathLike, *, encoder=None, name: str, description: str = "",
               license: str = "mit", registry: str | os.PathLike | None = None) -> ModelCard:
    """The model card of `model`, trained in `model_dir` (see the module docstring for what it reads there)."""
    d, c = Path(model_dir), model.config
    kind = "mlm" if not c.is_decoder else "decoder" if c.add_cross_attention else "gpt"
    evals = evaluations(d, registry)
    results = [EvalResult(task_type="stl-decoding", task_name="STL formula decoding from kernel embeddings",
                          dataset_type=Path(e["dataset"]).stem, dataset_name=e["dataset"], metric_type=k,
                          metric_name=f"{k} ({e['label']})", metric_value=round(float(v), 4))
               for e in evals for k, v in e["metrics"].items()]
    data = ModelCardData(model_name=name, library_name="transformers", license=license,
                         pipeline_tag="fill-mask" if kind == "mlm" else "text-generation",
                         tags=["stldec", "signal-temporal-logic", "custom_code"], eval_results=results or None)
    sizes = [("head", kind), ("parameters", f"{model.num_parameters():,}"), ("layers", c.num_hidden_layers),
             ("hidden size", c.hidden_size), ("attention heads", c.num_attention_heads),
             ("vocabulary", c.vocab_size), ("max positions", c.max_position_embeddings)]
    if kind == "decoder":
        sizes += [("formula embedding size", c.embedding_dim), ("memory tokens", c.num_memory_tokens)]
    sections = {
        "Training data": _data_lines(_read(d / "experiment.yaml"), encoder),
        "Training": _training_lines(_read(d / "runs.jsonl"), _read(d / "trainer_state.json"),
                                    _read(d / "train_results.json")),
        "Evaluation": _evaluation_lines(evals),
        "Usage": _usage_lines(kind, name, c.embedding_dim),
        "Limitations": _limitation_lines(kind),
    }
    md = [f"# {name}", "", f"{TITLE[kind]}, built with the `stldec` package. {description}".strip(), "", _table(sizes)]
    for title, lines in sections.items():
        md += ["", f"## {title}", "", *lines]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(md) + "\n")


def prepare_hub_folder(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None,
                       description: str = "", license: str = "mit",
                       registry: str | os.PathLike | None = None) -> Path:
    """Write the Hub folder of the trained model in `model_dir` to `out_dir` (new or empty); returns its path.

    name: the repository id the card's snippets load (default: the folder name of `out_dir`); description: free
    text for the card; registry: an `stldec evaluate` registry whose runs of these weights go into the card.
    """
    src, out = Path(model_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{str(src)!r} holds no config.json: not a saved model folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{str(out)!r} is not empty: the Hub folder must hold this model's files only")
    config = json.loads((src / "config.json").read_text())
    model = (StlDecForCausalLM if config.get("is_decoder", True) else StlDecForMaskedLM).from_pretrained(src)
    tokenizer = StlTokenizer.from_pretrained(src)
    encoder = load_model_encoder(src)
    if model.config.add_cross_attention:
        StlDecodingPipeline(model=model, tokenizer=tokenizer, encoder=encoder, device=model.device).save_pretrained(out)
    else:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    if encoder is not None:
        encoder.save_pretrained(out / ENCODER_DIR)
    card = model_card(model, src, encoder=encoder, name=name or out.resolve().name, description=description,
                      license=license, registry=registry)
    card.save(out / "README.md")
    return out


def push_to_hub(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload stldec model", **card) -> str:
    """Prepare the Hub folder of `model_dir` in a temporary directory and upload it to `repo_id`; returns the commit
    URL. `card`: `description`, `license`, `registry` (see `prepare_hub_folder`)."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare_hub_folder(model_dir, Path(tmp) / "hub", name=repo_id, **card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message).commit_url
