"""`StlDecConfig`: the one configuration object of every stldec model head (HF standard field names).

A single trunk serves three uses, chosen by two flags:
- conditional decoder: `is_decoder=True, add_cross_attention=True` (default) -- causal LM that cross-attends to
  `num_memory_tokens` memory tokens projected from a formula embedding of size `embedding_dim`;
- unconditional formula language model (GPT): `is_decoder=True, add_cross_attention=False`;
- masked LM encoder (BERT-like): `is_decoder=False, add_cross_attention=False` -- bidirectional attention.

`StlDecConfig.from_preset("tiny" | "small" | "base" | "base-512", **overrides)` gives the sizes we use.
Self-contained (transformers only): it is copied next to saved models and loaded with `trust_remote_code`.
"""

from transformers import PreTrainedConfig

PRESETS = {
    # tests: ~0.1 M parameters
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=128, embedding_dim=16, num_memory_tokens=4,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    # CPU-trainable, the defaults: ~4 M parameters with the published 1024-dim embeddings
    "small": {},
    # paper scale (12 layers, 16 heads, FFN 4096): ~210 M parameters at d = 1024, ~80 M at d = 512
    "base": dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, intermediate_size=4096,
                 embedding_dim=1024),
    "base-512": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=16, intermediate_size=4096,
                     embedding_dim=512),
}


class StlDecConfig(PreTrainedConfig):
    r"""Sizes and switches of an stldec model.

    embedding_dim: size of the formula embedding fed to the decoder as `formula_embedding` `(B, embedding_dim)`.
    num_memory_tokens: M, the number of memory tokens the embedding is projected into; the decoder cross-attends to
        them. M = 1 reproduces the reference design (a softmax over one key: the cross-attention is a constant).
    encoder_fingerprint: the fingerprint of the kernel encoder whose embeddings the decoder was trained on (written
        by training; `stldec.decoding` refuses any other encoder). None: not recorded (older models, GPT/MLM heads).
    """

    model_type = "stldec"

    vocab_size: int = 32
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 512
    embedding_dim: int = 1024
    num_memory_tokens: int = 8
    encoder_fingerprint: str | None = None
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    is_decoder: bool = True
    add_cross_attention: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.num_memory_tokens < 1 or self.embedding_dim < 1:
            raise ValueError(f"num_memory_tokens ({self.num_memory_tokens}) and embedding_dim ({self.embedding_dim}) "
                             "must be positive")
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "StlDecConfig":
        """A named size (`tiny`, `small`, `base`, `base-512`); keyword arguments override any field."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
