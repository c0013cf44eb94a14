"""Hugging Face Hub packaging: a self-contained model folder that loads with `trust_remote_code=True` anywhere.

`prepare_hub_folder(model, tokenizer, out_dir)` writes safetensors weights, `config.json` with an `auto_map` for every
Auto class (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer), the three code files
(`configuration.py`, `modeling.py`, `tokenization.py`: they import only each other, torch and transformers), the
tokenizer files and a model card. `push_to_hub` uploads such a folder; it is the only function here that needs a
network.
"""

import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

CODE_FILES = ("configuration.py", "modeling.py", "tokenization.py")
AUTO_MAP = {
    "AutoConfig": "configuration.StlDecConfig",
    "AutoModel": "modeling.StlDecModel",
    "AutoModelForCausalLM": "modeling.StlDecForCausalLM",
    "AutoModelForMaskedLM": "modeling.StlDecForMaskedLM",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["tokenization.StlTokenizer", None]}

USAGE = {
    "decoder": """\
embedding = torch.rand(1, model.config.embedding_dim)  # the kernel embedding of a formula, shape (B, embedding_dim)
ids = model.generate(formula_embedding=embedding, max_new_tokens=256, num_beams=4)
print(tokenizer.batch_decode(ids, skip_special_tokens=True))""",
    "gpt": """\
ids = model.generate(do_sample=True, max_new_tokens=256, num_return_sequences=4)  # starts from <s>
print(tokenizer.batch_decode(ids, skip_special_tokens=True))""",
    "mlm": """\
batch = tokenizer(["always[0,5] ( x_0 >= <mask> )"], return_tensors="pt")
logits = model(**batch).logits  # (B, T, vocab_size)
print(tokenizer.convert_ids_to_tokens(logits[0].argmax(-1)))""",
}
HEAD = {"decoder": "AutoModelForCausalLM", "gpt": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM"}
TITLE = {"decoder": "STL formula decoder (kernel embedding -> formula)", "gpt": "STL formula language model",
         "mlm": "STL formula masked language model (encoder)"}


def _model_card(model, kind: str, name: str, description: str, license: str) -> str:
    c = model.config
    pipeline = "fill-mask" if kind == "mlm" else "text-generation"
    rows = [("parameters", f"{sum(p.numel() for p in model.parameters()):,}"), ("layers", c.num_hidden_layers),
            ("hidden size", c.hidden_size), ("attention heads", c.num_attention_heads),
            ("vocabulary", c.vocab_size), ("max positions", c.max_position_embeddings)]
    if kind == "decoder":
        rows += [("formula embedding size", c.embedding_dim), ("memory tokens", c.num_memory_tokens)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""---
library_name: transformers
license: {license}
pipeline_tag: {pipeline}
tags:
- stldec
- signal-temporal-logic
- custom_code
---

# {name}

{TITLE[kind]}, built with the `stldec` package. {description}

| | |
|---|---|
{table}

Formulae use the published text format (e.g. `eventually[0,5] ( x_0 >= 0.5 )`); the tokenizer spells numbers digit
by digit and has no space tokens.

## Usage

The code ships in this repository, so loading needs `trust_remote_code=True` and transformers >= 5.24 (no `stldec`
install required):

```python
import torch
from transformers import AutoTokenizer, {HEAD[kind]}

repo = "{name}"
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = {HEAD[kind]}.from_pretrained(repo, trust_remote_code=True).eval()
{USAGE[kind]}
```
"""


def prepare_hub_folder(model, tokenizer, out_dir: str | Path, *, name: str = "stldec-model", description: str = "",
                       license: str = "mit") -> Path:
    """Write a self-contained, Hub-ready folder for `model` (any stldec head) and its tokenizer; returns its path.

    `name` is the repository id shown in the card's usage snippet; `description` is free text for the card.
    """
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for file in CODE_FILES:
        shutil.copyfile(Path(__file__).with_name(file), out / file)
    for path, auto_map in (("config.json", AUTO_MAP), ("tokenizer_config.json", TOKENIZER_AUTO_MAP)):
        data = json.loads((out / path).read_text())
        data["auto_map"] = auto_map
        (out / path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    c = model.config
    kind = "mlm" if not c.is_decoder else "decoder" if c.add_cross_attention else "gpt"
    (out / "README.md").write_text(_model_card(model, kind, name, description, license))
    return out


def push_to_hub(model, tokenizer, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload stldec model", **card) -> str:
    """Prepare the Hub folder in a temporary directory and upload it to `repo_id`; returns the commit URL.

    `card` is passed to `prepare_hub_folder` (`description`, `license`).
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare_hub_folder(model, tokenizer, tmp, name=repo_id, **card)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message).commit_url
