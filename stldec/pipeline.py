"""`StlDecodingPipeline`: the transformers pipeline of the task "stl-decoding", embeddings or formulae -> formulae.

    import stldec  # registers the task
    pipe = pipeline("stl-decoding", model="outputs/small")  # a trained decoder folder with its encoder/
    pipe("always[0,10] ( x_0 >= 0.5 )")                      # {'formula': ...}: embedded, then decoded
    pipe(embeddings, strategy="beam", constrained=True)     # a (B, D) tensor/array or a list of vectors: B dicts
    pipe(formulae, batch_size=16)                           # decoded 16 rows per `decode` call (default 64)

A formula string or one embedding vector `(D,)` gives one `{"formula": text}`; a list of them, or a `(B, D)` tensor
or array, gives a list. Formula strings are embedded with the model folder's kernel encoder (its `encoder/`, found in
a local folder or a Hub repository, or `pipeline(..., encoder=...)`). Options, at `pipeline()` or per call: the
fields of `stldec.decoding.DecodingConfig` (`strategy`, `constrained`, `num_beams`, `k`, ...), checked at once;
`n_vars` and `max_horizon` default to the encoder's trajectories, as in `stldec decode`. Decoding is
`stldec.decoding.decode`, one call per batch.

Remote code, and what it can honestly mean here: `stldec hub prepare` saves this file next to the model and names
it in config.json (`custom_pipelines`), so `pipeline(model=FOLDER_OR_REPO, trust_remote_code=True)` finds the task
without `import stldec`. The pipeline still needs the stldec package installed: the grammar and the kernel encoder
live there, and this file imports `stldec.decoding` (by absolute name: transformers copies relatively imported files
flat next to the model, which `stldec.decoding` cannot survive). Without stldec that call fails with transformers'
"requires the following packages ... stldec"; the model and tokenizer of the same folder still load with
`trust_remote_code=True`, since configuration.py, modeling.py and tokenization.py never import stldec.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from transformers import Pipeline
from transformers.utils import cached_file

from stldec.decoding import ENCODER_DIR, DecodingConfig, check_embeddings, decode, load_model_encoder


def folder_encoder(name_or_path: str | None):
    """The kernel encoder saved in `encoder/` of a local model folder or a Hub repository (downloaded), or None."""
    found = cached_file(name_or_path, "encoder_config.json", subfolder=ENCODER_DIR,
                        _raise_exceptions_for_missing_entries=False) if name_or_path else None
    if found is None:
        return None
    cached_file(name_or_path, "anchors.txt", subfolder=ENCODER_DIR)  # lands next to it
    return load_model_encoder(Path(found).parent.parent)


def _is_vector(x) -> bool:
    if isinstance(x, list | tuple):
        return bool(x) and isinstance(x[0], numbers.Number)
    return getattr(x, "ndim", None) == 1


class StlDecodingPipeline(Pipeline):
    """Decode formulae from kernel embeddings or formula strings (see the module docstring)."""

    _load_tokenizer = True
    _load_processor = _load_image_processor = _load_video_processor = _load_feature_extractor = False

    def __init__(self, *args, encoder=None, **kwargs):
        kwargs.setdefault("batch_size", 64)
        super().__init__(*args, **kwargs)
        self.encoder = encoder if encoder is not None else folder_encoder(self.model.config._name_or_path)

    def __call__(self, inputs, **kwargs):
        """One formula or vector -> {"formula": text}; a list of them or a (B, D) tensor/array -> a list of those."""
        single = isinstance(inputs, str) or _is_vector(inputs)
        items = [inputs] if single else list(inputs)  # a (B, D) tensor -> B rows
        outputs = super().__call__(items, **kwargs) if items else []
        return outputs[0] if single else outputs

    def _sanitize_parameters(self, **settings):
        DecodingConfig(**settings)  # an unknown option or a bad value fails here, before any work
        return {}, settings, {}

    def preprocess(self, item) -> dict:
        if isinstance(item, str):
            if self.encoder is None:
                raise ValueError(f"formula inputs are embedded with the model's kernel encoder, but "
                                 f"{self.model.config._name_or_path!r} has no {ENCODER_DIR}/ folder: pass "
                                 "pipeline(..., encoder=StlKernelEncoder.from_pretrained(...)) or embeddings")
            return {"embedding": self.encoder.encode([item])}  # (1, D)
        return {"embedding": check_embeddings(item, self.model.config.embedding_dim)}  # (1, D)

    def _forward(self, model_inputs: dict, **settings) -> dict:
        if self.encoder is not None:  # constrained decoding stays inside the encoder's trajectories
            settings = {"n_vars": self.encoder.n_vars, "max_horizon": self.encoder.n_points - 1, **settings}
        e = model_inputs["embedding"]  # (b, D): one pipeline batch, one decode call
        return {"formula": decode(self.model, self.tokenizer, e, encoder=self.encoder, batch_size=len(e),
                                  progress=False, **settings)}

    def postprocess(self, model_outputs: dict) -> dict:
        text = model_outputs["formula"]  # a str once the pipeline unbatched a batch; a 1-list when batch_size=1
        return {"formula": text if isinstance(text, str) else text[0]}
