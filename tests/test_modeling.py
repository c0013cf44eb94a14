"""Invariants of the stldec models: shapes, cache == no cache, padding invariance, save/load, heads, clear errors."""

import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
)

from stldec import StlDecConfig, StlDecForCausalLM, StlDecForMaskedLM, StlDecModel, StlTokenizer
from stldec.stl import parse

FORMULAE = [
    "always[0,5] ( x_0 >= 0.5 )",
    "( x_1 <= -1.2 and x_2 >= 0.3 )",
    "eventually[2,8] ( not ( x_0 <= 0.1 ) )",
    "( x_0 >= 1 until[1,4] x_1 <= 0.25 )",
    "( always ( x_2 <= 0.75 ) or eventually[0,inf] ( x_1 >= -0.5 ) )",
]


def tiny(**overrides) -> StlDecConfig:
    return StlDecConfig.from_preset("tiny", **overrides)


def decoder(seed: int = 0, **overrides) -> StlDecForCausalLM:
    torch.manual_seed(seed)
    return StlDecForCausalLM(tiny(**overrides)).eval()


def batch(b: int = 3, t: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 32, (b, t), generator=g)
    ids[:, 0] = 1
    return ids, torch.rand(b, 16, generator=g)


def test_config_defaults_presets_and_validation():
    assert StlDecConfig().vocab_size == len(StlTokenizer())
    assert (StlDecConfig().pad_token_id, StlDecConfig().bos_token_id, StlDecConfig().eos_token_id) == (0, 1, 2)
    assert StlDecConfig.from_preset("small", num_memory_tokens=1).num_memory_tokens == 1
    with torch.device("meta"):
        sizes = {name: sum(p.numel() for p in StlDecForCausalLM(StlDecConfig.from_preset(name)).parameters())
                 for name in ("tiny", "small", "base", "base-512")}
    assert 5e4 < sizes["tiny"] < 2e5 and 2e6 < sizes["small"] < 5e6
    assert 1.9e8 < sizes["base"] < 2.2e8 and sizes["base-512"] < sizes["base"]
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        StlDecConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown preset"):
        StlDecConfig.from_preset("huge")


def test_shapes_dtypes_and_outputs():
    m = decoder()
    ids, emb = batch()
    out = m(ids, formula_embedding=emb, output_hidden_states=True)
    assert out.logits.shape == (3, 7, 32) and out.logits.dtype == torch.float32
    assert len(out.hidden_states) == m.config.num_hidden_layers + 1
    assert all(h.shape == (3, 7, 64) for h in out.hidden_states)
    assert m(ids, formula_embedding=emb, logits_to_keep=1).logits.shape == (3, 1, 32)
    base = StlDecModel(tiny()).eval()
    assert base(ids, formula_embedding=emb).last_hidden_state.shape == (3, 7, 64)
    m.set_attn_implementation("eager")
    attn = m(ids, formula_embedding=emb, output_attentions=True)
    assert attn.attentions[0].shape == (3, 4, 7, 7) and attn.cross_attentions[0].shape == (3, 4, 7, 4)
    bf16 = m.to(torch.bfloat16)(ids, formula_embedding=emb).logits  # float32 embedding into a bf16 model
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("memory_tokens", [1, 4])
def test_cached_equals_uncached(attn, memory_tokens):
    m = decoder(num_memory_tokens=memory_tokens)
    m.set_attn_implementation(attn)
    ids, emb = batch()
    full = m(ids, formula_embedding=emb, use_cache=False).logits
    out, steps = m(ids[:, :3], formula_embedding=emb, use_cache=True), []
    for t in range(3, ids.shape[1]):  # continue from the returned cache one token at a time
        steps.append(out.logits[:, -1])
        out = m(ids[:, t : t + 1], formula_embedding=emb, cache=out.cache)
    steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 2:], atol=1e-5, rtol=1e-5)
    old = m(ids[:, :3], formula_embedding=emb, use_cache=True).cache  # the keyword before transformers 5.24
    with pytest.warns(FutureWarning, match="past_key_values"):
        old = m(ids[:, 3:4], formula_embedding=emb, past_key_values=old).logits[:, -1]
    torch.testing.assert_close(old, full[:, 3], atol=1e-5, rtol=1e-5)
    for kwargs in (dict(do_sample=False), dict(num_beams=3, num_return_sequences=2)):
        cached = m.generate(formula_embedding=emb, max_new_tokens=24, min_new_tokens=24, **kwargs)
        uncached = m.generate(formula_embedding=emb, max_new_tokens=24, min_new_tokens=24, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached)
    static = m.generate(formula_embedding=emb, max_new_tokens=24, min_new_tokens=24, cache_implementation="static")
    assert torch.equal(static, m.generate(formula_embedding=emb, max_new_tokens=24, min_new_tokens=24))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention compiles for ~1 min on CPU")
def test_flex_attention_matches_eager():
    m = decoder().cuda()
    ids, emb = (x.cuda() for x in batch())
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    with torch.no_grad():
        m.set_attn_implementation("eager")
        eager = m(ids, attention_mask=mask, formula_embedding=emb).logits
        m.set_attn_implementation("flex_attention")
        flex = m(ids, attention_mask=mask, formula_embedding=emb).logits
    torch.testing.assert_close(flex[0, :5], eager[0, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex[1:], eager[1:], atol=1e-5, rtol=1e-5)


def test_memory_keys_values_computed_once_per_generate():
    m = decoder()
    calls = []
    m.model.memory.register_forward_hook(lambda *a: calls.append(1))
    m.model.layers[0].cross_attn.kv_proj.register_forward_hook(lambda *a: calls.append(2))
    m.generate(formula_embedding=batch()[1], max_new_tokens=10, min_new_tokens=10, num_beams=2)
    assert calls == [1, 2]


@pytest.mark.parametrize("memory_tokens", [1, 4])
def test_one_memory_token_makes_cross_attention_constant(memory_tokens):
    """M = 1 (the reference design): softmax over one key, so cross-attention ignores the query; M > 1 does not."""
    ids, emb = batch()
    m = decoder(num_memory_tokens=memory_tokens)
    seen = []
    m.model.layers[0].cross_attn.register_forward_hook(lambda mod, args, out: seen.append(out[0]))
    m(ids, formula_embedding=emb)
    spread = (seen[0] - seen[0][:, :1]).abs().max().item()  # difference between positions
    assert (spread < 1e-5) == (memory_tokens == 1)


def test_padding_invariance_forward_and_generate():
    m = decoder()
    ids, emb = batch()
    lengths = [7, 4, 2]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    right = m(ids.masked_fill(mask == 0, 0), attention_mask=mask, formula_embedding=emb).logits
    for i, n in enumerate(lengths):
        alone = m(ids[i : i + 1, :n], formula_embedding=emb[i : i + 1]).logits
        torch.testing.assert_close(right[i : i + 1, :n], alone, atol=1e-5, rtol=1e-5)
    left_ids = torch.stack([ids[i].roll(7 - n) for i, n in enumerate(lengths)]).masked_fill(mask.flip(1) == 0, 0)
    left = m.generate(left_ids, attention_mask=mask.flip(1), formula_embedding=emb, max_new_tokens=12,
                      min_new_tokens=12, do_sample=False)
    for i, n in enumerate(lengths):
        alone = m.generate(ids[i : i + 1, :n], formula_embedding=emb[i : i + 1], max_new_tokens=12, min_new_tokens=12,
                           do_sample=False)
        assert torch.equal(left[i, 7:], alone[0, n:])
    torch.manual_seed(0)
    mlm = StlDecForMaskedLM(tiny(is_decoder=False, add_cross_attention=False)).eval()
    padded = mlm(ids.masked_fill(mask == 0, 0), attention_mask=mask).logits
    for i, n in enumerate(lengths):  # bidirectional: padding must not leak into real tokens either way
        torch.testing.assert_close(padded[i : i + 1, :n], mlm(ids[i : i + 1, :n]).logits, atol=1e-5, rtol=1e-5)


def test_generate_starts_from_bos_and_expands_embeddings():
    m = decoder()
    emb = batch()[1]
    out = m.generate(formula_embedding=emb, max_new_tokens=5, do_sample=True, num_return_sequences=2)
    assert out.shape[0] == 6 and (out[:, 0] == m.config.bos_token_id).all()
    _, kwargs = m._expand_inputs_for_generation(expand_size=2, input_ids=out[:3, :1], formula_embedding=emb)
    assert torch.equal(kwargs["formula_embedding"], emb.repeat_interleave(2, dim=0))
    beams = m.generate(formula_embedding=emb, max_new_tokens=8, num_beams=3)  # rows must keep their own embedding
    for i in range(3):
        assert torch.equal(beams[i], m.generate(formula_embedding=emb[i : i + 1], max_new_tokens=8, num_beams=3)[0])


def test_loss_shifts_labels_ignores_padding_and_honours_num_items():
    m = decoder()
    ids, emb = batch()
    logits = m(ids, formula_embedding=emb).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(m(ids, formula_embedding=emb, labels=ids).loss, manual)
    labels = ids.clone()
    labels[:, 5:] = -100
    part = m(ids[:, :5], formula_embedding=emb, labels=ids[:, :5]).loss
    torch.testing.assert_close(m(ids, formula_embedding=emb, labels=labels).loss, part)
    summed = m(ids, formula_embedding=emb, labels=labels, num_items_in_batch=torch.tensor(24)).loss
    torch.testing.assert_close(summed, part * 12 / 24)


def test_gradient_checkpointing_gives_same_gradients():
    ids, emb = batch()
    grads = []
    for checkpointing in (False, True):
        m = decoder().train()
        if checkpointing:
            m.activation_checkpointing_enable()
        m(ids, formula_embedding=emb, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_save_load_every_auto_class(tmp_path):
    ids, emb = batch()
    gpt_cfg, mlm_cfg = tiny(add_cross_attention=False), tiny(add_cross_attention=False, is_decoder=False)
    cases = [(AutoModelForCausalLM, StlDecForCausalLM(tiny()), dict(formula_embedding=emb)),
             (AutoModelForCausalLM, StlDecForCausalLM(gpt_cfg), {}),
             (AutoModelForMaskedLM, StlDecForMaskedLM(mlm_cfg), {}),
             (AutoModel, StlDecModel(tiny()), dict(formula_embedding=emb))]
    for i, (auto, model, kwargs) in enumerate(cases):
        model.eval().save_pretrained(tmp_path / str(i))
        assert not list((tmp_path / str(i)).glob("*.bin")), "weights must be safetensors"
        assert isinstance(AutoConfig.from_pretrained(tmp_path / str(i)), StlDecConfig)
        loaded = auto.from_pretrained(tmp_path / str(i)).eval()
        assert type(loaded) is type(model)
        out, again = model(ids, **kwargs), loaded(ids, **kwargs)
        key = "last_hidden_state" if auto is AutoModel else "logits"
        assert torch.equal(out[key], again[key])
        if hasattr(loaded, "lm_head"):
            assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_decoder_initialised_from_gpt_checkpoint(tmp_path):
    torch.manual_seed(0)
    gpt = StlDecForCausalLM(tiny(add_cross_attention=False))
    gpt.save_pretrained(tmp_path)
    dec, info = StlDecForCausalLM.from_pretrained(tmp_path, config=tiny(), output_loading_info=True)
    assert info["missing_keys"] and all(".cross_attn." in k or ".ln_cross." in k or "model.memory." in k
                                        for k in info["missing_keys"])
    assert not info["unexpected_keys"]
    trunk = gpt.state_dict()
    assert all(torch.equal(v, trunk[k]) for k, v in dec.state_dict().items() if k in trunk)
    fresh = dec.model.memory  # newly initialised like a fresh model: LayerNorm at identity, N(0, 0.02) weights
    assert torch.equal(fresh.norm.weight, torch.ones(64)) and 0.015 < fresh.proj.weight.std() < 0.025
    assert dec.generate(formula_embedding=batch()[1], max_new_tokens=4).shape[0] == 3


def test_clear_errors():
    m = decoder()
    ids, emb = batch()
    with pytest.raises(ValueError, match=r"\(batch, 16\).*size 13"):
        m(ids, formula_embedding=torch.rand(3, 13))
    bad = emb.clone()
    bad[1, 0], bad[2, 3] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf values in rows \[1, 2\]"):
        m(ids, formula_embedding=bad)
    with pytest.raises(ValueError, match="pass formula_embedding"):
        m(ids)
    with pytest.raises(ValueError, match="pass formula_embedding"):
        m.generate(max_new_tokens=3)
    with pytest.raises(ValueError, match="2 rows but the batch has 3"):
        m(ids, formula_embedding=emb[:2])
    with pytest.raises(ValueError, match="takes no formula_embedding"):
        decoder(add_cross_attention=False)(ids, formula_embedding=emb)
    with pytest.raises(ValueError, match="longer than max_position_embeddings"):
        m(torch.ones(1, 129, dtype=torch.long), formula_embedding=emb[:1])
    with pytest.raises(ValueError, match="is_decoder=False"):
        StlDecForMaskedLM(tiny())
    with pytest.raises(ValueError, match="is_decoder=True"):
        StlDecForCausalLM(tiny(is_decoder=False, add_cross_attention=False))


def train(model, batches, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_gpt_overfit_samples_parse():
    tok = StlTokenizer()
    enc = tok(FORMULAE, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    gpt = StlDecForCausalLM(tiny(add_cross_attention=False))
    losses = train(gpt, [dict(**enc, labels=labels)], steps=150, lr=1e-2)
    assert losses[-1] < 0.2 * losses[0]
    samples = tok.batch_decode(gpt.eval().generate(max_new_tokens=60, do_sample=True, num_return_sequences=8),
                               skip_special_tokens=True)
    for text in samples:
        parse(text)


def test_mlm_loss_decreases():
    tok = StlTokenizer()
    collate = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.3)
    torch.manual_seed(0)
    features = [{"input_ids": ids} for ids in tok(FORMULAE)["input_ids"]]
    batches = [collate(features) for _ in range(8)]
    mlm = StlDecForMaskedLM(tiny(add_cross_attention=False, is_decoder=False))
    losses = train(mlm, batches, steps=40)
    assert sum(losses[-8:]) < 0.6 * sum(losses[:8])


def test_import_stldec_alone_registers_every_auto_class(tmp_path):
    """`import stldec` is all a user does before `Auto*.from_pretrained` (fresh process: nothing else imported)."""
    StlDecForCausalLM(tiny()).save_pretrained(tmp_path)
    StlTokenizer().save_pretrained(tmp_path)
    code = ("import stldec\n"
            "from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer\n"
            "from transformers import AutoModelForMaskedLM\n"
            f"d = {str(tmp_path)!r}\n"
            "assert type(AutoConfig.from_pretrained(d)).__name__ == 'StlDecConfig'\n"
            "assert type(AutoModel.from_pretrained(d)).__name__ == 'StlDecModel'\n"
            "assert type(AutoModelForCausalLM.from_pretrained(d)).__name__ == 'StlDecForCausalLM'\n"
            "assert type(AutoTokenizer.from_pretrained(d)).__name__ == 'StlTokenizer'\n"
            "c = AutoConfig.for_model('stldec', is_decoder=False, add_cross_attention=False)\n"
            "assert type(AutoModelForMaskedLM.from_config(c)).__name__ == 'StlDecForMaskedLM'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize("first", [
    "import stldec\nfrom transformers.modeling_layers import GradientCheckpointingLayer",  # imports the Auto classes
    "from stldec import StlDecModel",                                          # stldec.modeling imports transformers
    "import transformers\nfrom transformers import AutoModel\nimport stldec",  # transformers first: registers at once
    "import stldec\nimport transformers.pipelines",                            # the pipelines import the Auto classes
    "from stldec import StlDecConfig",                                         # a config alone registers every class
])
def test_registration_survives_every_import_order(tmp_path, first):
    """Registration waits for transformers; whatever imports it first, the Auto classes, the pipeline task and
    `register_for_auto_class` are in place right after, in a fresh process."""
    StlDecForCausalLM(tiny()).save_pretrained(tmp_path)
    StlTokenizer().save_pretrained(tmp_path)
    code = (f"{first}\nimport sys\nauto = sys.modules['transformers.models.auto.configuration_auto']\n"
            "assert 'stldec' in auto.CONFIG_MAPPING, 'not registered right after the imports'\n"
            "from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline\n"
            f"d = {str(tmp_path)!r}\n"
            "assert type(AutoModel.from_pretrained(d)).__name__ == 'StlDecModel'\n"
            "assert type(AutoModelForCausalLM.from_pretrained(d)).__name__ == 'StlDecForCausalLM'\n"
            "assert type(AutoTokenizer.from_pretrained(d)).__name__ == 'StlTokenizer'\n"
            "assert type(pipeline('stl-decoding', model=d, device='cpu')).__name__ == 'StlDecodingPipeline'\n"
            "from stldec import StlDecConfig\n"
            "StlDecConfig().save_pretrained(d + '/config_only')\n"
            "assert 'auto_map' in open(d + '/config_only/config.json').read()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
