"""stldec models: one pre-norm transformer trunk, three heads, read top to bottom.

memory projection -> attention -> MLP -> block -> trunk `StlDecModel` -> heads:
- `StlDecForCausalLM` with `config.add_cross_attention=True`: the conditional decoder. A formula embedding
  `(B, embedding_dim)` is projected into `num_memory_tokens` memory tokens `(B, M, hidden)` that every block
  cross-attends to; `forward`/`generate` take it as the keyword `formula_embedding`.
- `StlDecForCausalLM` with `add_cross_attention=False`: the unconditional formula language model (GPT).
- `StlDecForMaskedLM` (`is_decoder=False`): bidirectional masked-LM encoder (BERT-like) on the same trunk.
Attention goes through the transformers attention interface (`sdpa` default, `eager`, `flex_attention`); caching uses
HF `Cache` objects (`EncoderDecoderCache` with cross-attention: memory keys/values are computed once per `generate`).
Self-contained (torch + transformers only): copied next to saved models and loaded with `trust_remote_code`.
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration import StlDecConfig


class StlDecMemory(nn.Module):
    """Formula embedding `(B, E)` -> `num_memory_tokens` memory tokens `(B, M, C)`: one linear map, then LayerNorm."""

    def __init__(self, config: StlDecConfig):
        super().__init__()
        self.embedding_dim, self.num_tokens = config.embedding_dim, config.num_memory_tokens
        self.proj = nn.Linear(config.embedding_dim, config.num_memory_tokens * config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, formula_embedding: torch.Tensor) -> torch.Tensor:
        if formula_embedding.dim() != 2 or formula_embedding.shape[-1] != self.embedding_dim:
            raise ValueError(f"formula_embedding must have shape (batch, {self.embedding_dim}) (config.embedding_dim), "
                             f"got {tuple(formula_embedding.shape)} with size {formula_embedding.shape[-1]}")
        finite = torch.isfinite(formula_embedding).all(-1)  # (B,)
        if not bool(finite.all()):
            rows = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"formula_embedding has NaN or inf values in rows {rows[:10]}{' ...' * (len(rows) > 10)}")
        x = self.proj(formula_embedding.to(self.proj.weight.dtype))  # (B, M * C)
        return self.norm(x.view(x.shape[0], self.num_tokens, -1))  # (B, M, C)


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Plain softmax attention: q `(B, H, Tq, D)`, k/v `(B, H, Tk, D)` -> out `(B, Tq, H, D)`, weights."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Tq, Tk)
    if attention_mask is not None:
        weights = weights + attention_mask  # additive float mask (B, 1, Tq, Tk)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class StlDecAttention(nn.Module):
    """Multi-head attention: self-attention over tokens (causal when `config.is_decoder`), or cross-attention from
    tokens `(B, T, C)` to memory tokens `(B, M, C)`. Keys/values go through the HF cache when one is given."""

    def __init__(self, config: StlDecConfig, layer_idx: int, is_cross_attention: bool = False):
        super().__init__()
        self.config, self.layer_idx, self.is_cross_attention = config, layer_idx, is_cross_attention
        self.is_causal = config.is_decoder and not is_cross_attention  # read by the sdpa interface
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        c = config.hidden_size
        if is_cross_attention:  # queries from tokens, keys and values from memory
            self.q_proj, self.kv_proj = nn.Linear(c, c), nn.Linear(c, 2 * c)
        else:
            self.qkv_proj = nn.Linear(c, 3 * c)
        self.o_proj = nn.Linear(c, c)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, cache: Cache | None = None,
                memory: torch.Tensor | None = None, **kwargs):
        if self.is_cross_attention:  # cache is an EncoderDecoderCache or None
            query = self._heads(self.q_proj(hidden_states))
            cross = cache.cross_attention_cache if cache is not None else None
            if cross is not None and cache.is_updated.get(self.layer_idx, False):
                key, value = cross.layers[self.layer_idx].keys, cross.layers[self.layer_idx].values
            else:
                key, value = map(self._heads, self.kv_proj(memory).chunk(2, dim=-1))  # (B, H, M, D)
                if cross is not None:
                    key, value = cross.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            query, key, value = map(self._heads, self.qkv_proj(hidden_states).chunk(3, dim=-1))  # (B, H, T, D)
            if cache is not None:
                key, value = getattr(cache, "self_attention_cache", cache).update(key, value, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
        out, weights = attention(self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling,
                                 **kwargs)  # out (B, T, H, D)
        return self.o_proj(out.reshape(*out.shape[:2], -1)), weights


class StlDecMLP(nn.Module):
    def __init__(self, config: StlDecConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class StlDecBlock(GradientCheckpointingLayer):
    """Pre-norm block: x + self-attn(LN x) -> x + cross-attn(LN x, memory) (decoder only) -> x + MLP(LN x)."""

    def __init__(self, config: StlDecConfig, layer_idx: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = StlDecAttention(config, layer_idx)
        if config.add_cross_attention:
            self.ln_cross = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.cross_attn = StlDecAttention(config, layer_idx, is_cross_attention=True)
        self.ln_mlp = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = StlDecMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, memory: torch.Tensor | None = None, attention_mask=None,
                cache: Cache | None = None, **kwargs) -> torch.Tensor:
        x = hidden_states  # (B, T, C); memory (B, M, C), None once the cross keys/values are cached
        x = x + self.dropout(self.attn(self.ln_attn(x), attention_mask, cache, **kwargs)[0])
        if hasattr(self, "cross_attn"):
            x = x + self.dropout(self.cross_attn(self.ln_cross(x), None, cache, memory, **kwargs)[0])
        return x + self.dropout(self.mlp(self.ln_mlp(x)))


# config.json's `auto_map` for remote code: every head, so a folder saved from one head also loads as the others
# (`AutoModel` on a decoder folder gives its trunk); HF's save_pretrained alone maps only the head it saves
AUTO_MAP = {"AutoConfig": "configuration.StlDecConfig", "AutoModel": "modeling.StlDecModel",
            "AutoModelForCausalLM": "modeling.StlDecForCausalLM", "AutoModelForMaskedLM": "modeling.StlDecForMaskedLM"}


class StlDecPreTrainedModel(PreTrainedModel):
    config: StlDecConfig
    config_class = StlDecConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["StlDecBlock"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": StlDecBlock,
        "attentions": OutputRecorder(StlDecAttention, index=1, layer_name=".attn"),
        "cross_attentions": OutputRecorder(StlDecAttention, index=1, layer_name=".cross_attn"),
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """HF's save_pretrained. Once the classes are registered for the Auto classes (`import stldec` does it), it
        also copies configuration.py and modeling.py and writes `AUTO_MAP`: the folder then loads with
        `trust_remote_code=True` where stldec is not installed."""
        if self.is_remote_code():
            self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)


class StlDecModel(StlDecPreTrainedModel):
    """Trunk: token + learned position embeddings -> blocks -> final LayerNorm. ids `(B, T)` -> hidden `(B, T, C)`."""

    def __init__(self, config: StlDecConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.memory = StlDecMemory(config) if config.add_cross_attention else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(StlDecBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def _memory(self, formula_embedding: torch.Tensor | None, cache: Cache | None, batch_size: int):
        """Memory tokens `(B, M, C)`, or None when not needed (no cross-attention, or cross keys/values cached)."""
        if not self.config.add_cross_attention:
            if formula_embedding is not None:
                raise ValueError("this model has no cross-attention (config.add_cross_attention=False): it takes no "
                                 "formula_embedding")
            return None
        if cache is not None and cache.is_updated.get(0, False):
            return None
        if formula_embedding is None:
            raise ValueError(f"this decoder is conditional (config.add_cross_attention=True): pass formula_embedding, "
                             f"a float tensor (batch, {self.config.embedding_dim})")
        if formula_embedding.shape[0] != batch_size:
            raise ValueError(f"formula_embedding has {formula_embedding.shape[0]} rows but the batch has {batch_size}")
        return self.memory(formula_embedding)

    @capture_outputs
    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")  # the name before transformers 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        formula_embedding: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        kwargs.pop("output_attentions", None)
        kwargs.pop("output_hidden_states", None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, C)
        batch_size, length = inputs_embeds.shape[:2]

        use_cache = self.config.use_cache if use_cache is None else use_cache
        use_cache = use_cache and self.config.is_decoder and not (self.gradient_checkpointing and self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if self.config.add_cross_attention and cache is not None and not isinstance(
                cache, EncoderDecoderCache):  # generate() hands decoder-only models a plain DynamicCache
            cache = EncoderDecoderCache(cache, DynamicCache(config=self.config))
        past_length = cache.get_seq_length() if cache is not None else 0
        if past_length + length > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past_length + length} tokens is longer than max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:  # count real tokens: left padding works
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
            else:
                position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
        hidden_states = self.dropout(inputs_embeds + self.embed_positions(position_ids))

        if self.config.is_decoder:
            mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      cache=cache, position_ids=position_ids)
        else:
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds,
                                             attention_mask=attention_mask)
        memory = self._memory(formula_embedding, cache, batch_size)  # (B, M, C) or None
        for layer in self.layers:
            hidden_states = layer(hidden_states, memory, attention_mask=mask, cache=cache, **kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.norm(hidden_states),
                                                         cache=cache if use_cache else None)


class StlDecForCausalLM(StlDecPreTrainedModel, GenerationMixin):
    """Causal LM head (tied to the token embeddings). With `config.add_cross_attention=True` it is the conditional
    decoder: `forward(input_ids, formula_embedding=E)` and `generate(formula_embedding=E)` with `E (B, embedding_dim)`
    (`generate` starts from BOS when no `input_ids` are given). Labels are shifted inside; -100 is ignored."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: StlDecConfig):
        if not config.is_decoder:
            raise ValueError("StlDecForCausalLM needs a causal config (is_decoder=True); this one is bidirectional")
        super().__init__(config)
        self.model = StlDecModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        formula_embedding: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds,
                         formula_embedding=formula_embedding, use_cache=use_cache, **kwargs)
        logits = self.lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))  # (B, T, V)
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, cache=out.cache,
                                                 hidden_states=out.hidden_states, attentions=out.attentions,
                                                 cross_attentions=out.cross_attentions)


class StlDecForMaskedLM(StlDecPreTrainedModel):
    """Masked LM head on the bidirectional trunk (`config.is_decoder=False`): ids `(B, T)` -> logits `(B, T, V)`;
    labels are -100 except at masked positions (e.g. from `DataCollatorForLanguageModeling`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: StlDecConfig):
        if config.is_decoder:
            raise ValueError("StlDecForMaskedLM needs a bidirectional config: pass is_decoder=False")
        super().__init__(config)
        self.model = StlDecModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        formula_embedding: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, formula_embedding=formula_embedding, **kwargs)
        logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
