"""StlTokenizer: fixed ids, canonical round trips, spacing invariance, errors, padding, save/load, Auto, MLM."""

import os
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, PreTrainedTokenizer

import stldec
from stldec.stl import FormulaGenerator, parse
from stldec.tokenization import VOCAB_SIZE, StlTokenizer

DOCUMENTED_IDS = {  # the published contract: checkpoints depend on these ids never changing
    "<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4,
    "not": 5, "and": 6, "or": 7, "always": 8, "eventually": 9, "until": 10,
    "(": 11, ")": 12, "[": 13, "]": 14, ",": 15, "inf": 16, "<=": 17, ">=": 18, "x_": 19,
    **{str(d): 20 + d for d in range(10)}, "-": 30, ".": 31,
}
TOKEN_CHARS = set("".join(DOCUMENTED_IDS))


@pytest.fixture(scope="module")
def tok() -> StlTokenizer:
    return StlTokenizer()


def sample_formula(rng: random.Random, depth: int) -> str:
    """A random formula printed directly in the canonical published syntax (independent of stldec's printer)."""
    if depth <= 1:
        c = repr(round(rng.choice([rng.gauss(0, 1), rng.uniform(-200, 200), float(rng.randint(-3, 3))]), 4))
        return f"x_{rng.choice([0, 1, 2, rng.randint(3, 120)])} {rng.choice(['<=', '>='])} {c}"

    def interval() -> str:
        a = rng.randint(0, 150)
        return rng.choice(["", f"[{a},inf]", f"[{a},{a + rng.randint(1, 150)}]"])

    op, sub = rng.choice(["not", "and", "or", "always", "eventually", "until"]), depth - 1
    if op == "not":
        return f"not ( {sample_formula(rng, sub)} )"
    if op in ("always", "eventually"):
        return f"{op}{interval()} ( {sample_formula(rng, sub)} )"
    left, right = sample_formula(rng, rng.randint(1, sub)), sample_formula(rng, rng.randint(1, sub))
    return f"( {left} {op}{interval() if op == 'until' else ''} {right} )"


def formulae(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sample_formula(rng, rng.randint(1, 7)) for _ in range(n)]


canonical = st.builds(lambda seed: formulae(1, seed)[0], st.integers(0, 2**32))


def test_ids_are_the_documented_ones(tok):
    assert tok.get_vocab() == DOCUMENTED_IDS
    assert len(tok) == tok.vocab_size == VOCAB_SIZE == len(DOCUMENTED_IDS)
    specials = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id)
    assert specials == (0, 1, 2, 3, 4)


def test_config_defaults_to_the_vocabulary_size(tok):
    assert stldec.StlDecConfig().vocab_size == len(tok)


def test_published_examples(tok):
    first = "always[0,10] ( x_0 >= 0.53 and x_2 <= -1.1 )"
    assert tok.tokenize(first) == ["always", "[", "0", ",", "1", "0", "]", "(", "x_", "0", ">=", "0", ".", "5", "3",
                               "and", "x_", "2", "<=", "-", "1", ".", "1", ")"]
    assert tok.tokenize("x_12 <= 3") == ["x_", "1", "2", "<=", "3"]
    for s in [first, "( x_0 <= 0.2 until[6,inf] x_1 >= 1.5 )", "not ( always ( x_12 >= -0.0 ) )"]:
        ids = tok(s)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == s
        assert tok.decode(ids) == f"<s> {s} </s>"


def test_round_trip_thousands_of_formulae(tok):
    texts = formulae(3000)
    ids = tok(texts)["input_ids"]
    assert not any(tok.unk_token_id in row for row in ids)
    assert tok.batch_decode(ids, skip_special_tokens=True) == texts
    assert [parse(t).to_string() for t in texts] == texts  # the sampler prints what the project calls canonical


def test_round_trip_shared_data_and_generator(tok):
    path = os.path.join(os.path.dirname(__file__), "../../shared/data/balanced_test_3000.csv")
    texts = [parse(t).to_string() for t in formulae(200, seed=1)]
    if os.path.exists(path):
        import pandas as pd

        texts += pd.read_csv(path)["formula"].tolist()
    texts += [f.to_string() for f in FormulaGenerator("balanced", seed=0).sample(600)]
    assert tok.batch_decode(tok(texts)["input_ids"], skip_special_tokens=True) == texts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(DOCUMENTED_IDS.values())), max_size=40))
def test_any_id_sequence_survives_decode_encode(ids):
    tok = StlTokenizer()
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids


@settings(max_examples=200, deadline=None)
@given(canonical, st.randoms(use_true_random=False))
def test_spacing_does_not_matter(s, rng):
    tok = StlTokenizer()
    pieces = tok.tokenize(s)
    respaced = "".join(p + rng.choice(["", "", " ", "  ", "\t", "\n"]) for p in pieces)
    assert tok.tokenize(respaced) == tok.tokenize("".join(s.split())) == pieces


@settings(max_examples=100, deadline=None)
@given(canonical, st.characters(exclude_characters=TOKEN_CHARS, exclude_categories=["Zs", "Zl", "Zp", "Cc", "Cs"]),
       st.integers(0, 10**6))
def test_unknown_character_is_named_with_its_position(s, char, where):
    tok = StlTokenizer()
    cut = [0] + [i + 1 for i, c in enumerate(s) if c == " "]
    at = cut[where % len(cut)]
    bad = s[:at] + char + s[at:]
    with pytest.raises(ValueError, match=re.escape(f"{char!r} at position {at} ")):
        tok(bad)


@pytest.mark.parametrize("text, char, at", [("x_0 => 1", "=", 4), ("always ( x 0 <= 1 )", "x", 9),
                                            ("( x_0 <= 1e3 )", "e", 10), ("x_0 <= +1", "+", 7)])
def test_unknown_character_examples(tok, text, char, at):
    with pytest.raises(ValueError, match=re.escape(f"{char!r} at position {at} fits no STL token")):
        tok.tokenize(text)


@settings(max_examples=100, deadline=None)
@given(canonical, st.lists(st.sampled_from(["<s>", "</s>", "<mask>", "<pad>", "<unk>", " "]), max_size=4),
       st.randoms(use_true_random=False))
def test_fast_paths_agree_with_the_generic_hf_paths(s, specials, rng):
    tok = StlTokenizer()
    words = s.split()
    for sp in specials:
        words.insert(rng.randint(0, len(words)), sp)
    text = rng.choice([" ", ""]).join(words)
    tokens = tok.tokenize(text)
    assert tokens == PreTrainedTokenizer.tokenize(tok, text)
    ids = tok.convert_tokens_to_ids(tokens + ["foo"])
    assert ids == [tok._convert_token_to_id_with_added_voc(t) for t in tokens + ["foo"]]
    for skip in (False, True):
        generic = PreTrainedTokenizer.convert_ids_to_tokens(tok, ids + [99], skip_special_tokens=skip)
        assert tok.convert_ids_to_tokens(ids + [99], skip_special_tokens=skip) == generic


def test_added_tokens_are_recognised():
    tok = StlTokenizer()
    tok.add_tokens(["<sep>"], special_tokens=True)
    assert len(tok) == VOCAB_SIZE + 1
    assert tok.tokenize("x_0 <= 1<sep>x_1 >= 2") == ["x_", "0", "<=", "1", "<sep>", "x_", "1", ">=", "2"]
    assert tok.encode("<sep> x_0 <= 1", add_special_tokens=False) == [VOCAB_SIZE, 19, 20, 17, 21]
    assert tok.decode([VOCAB_SIZE, 19, 20]) == "<sep> x_0"
    with pytest.raises(ValueError, match="'<' at position 0"):
        tok.tokenize("<sep>", split_special_tokens=True)


def test_batch_padding_right_and_left(tok):
    texts = ["not ( x_0 >= 1 )", "always[0,10] ( ( x_1 <= 2.5 or x_12 >= -0.001 ) )", "eventually ( x_2 <= 0.0 )"]
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    for side in ("right", "left"):
        b = tok(texts, padding=True, return_tensors="pt", padding_side=side)
        assert b["input_ids"].shape == b["attention_mask"].shape == (3, max(lengths))
        assert b["input_ids"].dtype == torch.long and set(b) == {"input_ids", "attention_mask"}
        assert b["attention_mask"].sum(1).tolist() == lengths
        real = b["attention_mask"].bool()
        assert (b["input_ids"][~real] == tok.pad_token_id).all()
        first_real = real.long().argmax(1)
        if side == "right":
            assert (first_real == 0).all()
        else:
            assert (real[:, -1]).all()
        assert tok.batch_decode(b["input_ids"], skip_special_tokens=True) == texts
    left = StlTokenizer(padding_side="left")(texts, padding=True)["input_ids"]
    assert left == tok(texts, padding=True, padding_side="left")["input_ids"]


def test_without_special_tokens(tok):
    s = "eventually[3,inf] ( x_0 >= 7.25 )"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert ids == tok(s)["input_ids"][1:-1] == tok.convert_tokens_to_ids(tok.tokenize(s))
    assert tok.decode(ids) == s


def test_save_and_load(tmp_path, tok):
    assert stldec.StlTokenizer is StlTokenizer  # the public name; first access registers the Auto classes
    tok2 = StlTokenizer(padding_side="left", model_max_length=300)
    tok2.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tokenization.py", "tokenizer_config.json", "vocab.json"]  # + its code
    texts = formulae(50, seed=3)
    for loaded in (StlTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(loaded) is StlTokenizer
        assert loaded.get_vocab() == DOCUMENTED_IDS
        assert (loaded.padding_side, loaded.model_max_length) == ("left", 300)
        assert loaded(texts, padding=True)["input_ids"] == tok2(texts, padding=True)["input_ids"]


def test_auto_tokenizer_from_a_model_folder(tmp_path, tok):
    stldec.StlDecConfig().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is StlTokenizer and loaded("x_0 <= 1")["input_ids"] == tok("x_0 <= 1")["input_ids"]


def test_foreign_vocabulary_is_refused(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text('{"<pad>": 0, "hello": 1}')
    with pytest.raises(ValueError, match="not an StlTokenizer vocabulary"):
        StlTokenizer.from_pretrained(tmp_path)


def test_mlm_collator(tok):
    texts = formulae(64, seed=4)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.3, seed=0)
    batch = collator([tok(t) for t in texts])
    ids, labels = batch["input_ids"], batch["labels"]
    original = tok(texts, padding=True, return_tensors="pt")["input_ids"]
    assert ids.shape == labels.shape == original.shape
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    chosen = labels != -100
    assert not (chosen & special).any()  # bos/eos/pad are never masked
    assert (labels[chosen] == original[chosen]).all() and (ids[~chosen] == original[~chosen]).all()
    assert 0.2 < chosen.sum() / (~special).sum() < 0.4
    assert (ids[chosen] == tok.mask_token_id).float().mean() > 0.6


@pytest.mark.slow
def test_remote_code_loading_without_stldec(tmp_path, tok):
    """The file is self-contained: saved with its code, it loads by trust_remote_code where stldec cannot import."""
    tok.save_pretrained(tmp_path)  # `import stldec` registered it for AutoTokenizer: the code file is copied
    assert (tmp_path / "tokenization.py").exists()
    s = "( x_0 <= 0.2 until[6,inf] x_1 >= 1.5 )"
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "stldec":
                    raise ImportError("stldec is blocked")
        sys.meta_path.insert(0, Block())
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        ids = tok({s!r})["input_ids"]
        print(type(tok).__module__, ids, tok.decode(ids, skip_special_tokens=True), sep="|")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    module, ids, text = out.stdout.strip().splitlines()[-1].split("|")
    assert module.startswith("transformers_modules") and ids == str(tok(s)["input_ids"]) and text == s
