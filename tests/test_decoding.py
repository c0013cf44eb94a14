"""Decoding: the grammar constraint (random-logit rollouts, real generate), re-ranking, decode() errors, resume."""

import json
import math

import pytest
import torch

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.decoding import DecodingConfig, decode, read_inputs, rerank
from stldec.grammar import _DONE, GrammarLogitsProcessor, StlGrammar
from stldec.stl import FormulaGenerator, StlKernelEncoder, parse

TOK = StlTokenizer()


@pytest.fixture(scope="module")
def encoder():
    gen = FormulaGenerator("random", seed=1, n_points=30)
    return StlKernelEncoder(gen.sample(16), n_trajectories=200, n_points=30)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StlDecForCausalLM(StlDecConfig.from_preset("tiny", max_position_embeddings=48)).eval()


def rollouts(proc: GrammarLogitsProcessor, n: int, seed: int) -> list[str]:
    """Sample n sequences from random logits through the processor; check the cost bookkeeping on the way."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), TOK.bos_token_id)
    done = torch.zeros(n, dtype=torch.bool)
    while not done.all():
        assert ids.shape[1] < proc.max_length, "a row did not end by max_length"
        scores = proc(ids, torch.randn(n, len(TOK), generator=g) * 3)
        assert torch.isfinite(scores).any(-1).all()
        nxt = torch.multinomial(scores.softmax(-1), 1, generator=g)[:, 0]
        nxt = torch.where(done, TOK.pad_token_id, nxt)
        done |= nxt == TOK.eos_token_id
        ids = torch.cat([ids, nxt[:, None]], 1)
    for row in ids[:20]:  # need(state) is exact: the cheapest allowed token costs exactly need(state)
        for t in range(1, len(row)):
            state = proc.state(row[:t])
            if state is _DONE:
                break
            costs = [1 + proc.grammar.need(s) for tok in TOK.convert_ids_to_tokens(list(range(len(TOK))))
                     if (s := proc.grammar.advance(state, tok)) is not None]
            assert min(costs) == proc.grammar.need(state)
    return TOK.batch_decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("max_length,n_vars,max_horizon,dialect", [
    (24, 3, None, "reference"), (48, 3, 29, "reference"), (40, 12, 9, "textbook"), (64, 1, 99, "reference"),
])
def test_random_logit_rollouts_are_canonical_formulae(max_length, n_vars, max_horizon, dialect):
    proc = GrammarLogitsProcessor(TOK, max_length=max_length, n_vars=n_vars, max_horizon=max_horizon,
                                  dialect=dialect)
    texts = rollouts(proc, 600, seed=max_length)
    for t in texts:
        f = parse(t, dialect=dialect)
        assert f.to_string(dialect=dialect) == t
        assert max(f.variables) < n_vars
        assert max_horizon is None or f.time_horizon <= max_horizon
    assert len(set(texts)) > 500  # the constraint leaves the distribution rich


def test_grammar_accepts_generated_formulae():
    for preset in ("random", "balanced", "hard"):
        grammar = StlGrammar(n_vars=3, max_horizon=99)
        for f in FormulaGenerator(preset, seed=5).sample(100):
            state = grammar.start
            for t in TOK.tokenize(f.to_string()) + [TOK.eos_token]:
                state = grammar.advance(state, t)
                assert state is not None, f.to_string()


def test_grammar_refuses_what_does_not_round_trip():
    grammar = StlGrammar(n_vars=3, max_horizon=10)

    def accepted(text):
        state = grammar.start
        for t in TOK.tokenize(text) + [TOK.eos_token]:
            if (state := grammar.advance(state, t)) is None:
                return False
        return True

    assert accepted("always[2,3] ( x_0 <= -0.5 )")
    assert accepted("( always[0,6] ( x_0 <= 1.0 ) until[0,6] x_1 >= 2.0 )")  # horizon 5 + 5 = 10
    for bad in ["always[3,3] ( x_0 <= 1.0 )", "x_0 <= 01.0", "x_0 <= 1.50", "x_0 <= 1", "x_3 <= 1.0",
                "x_0 <= 1.23456", "( x_0 <= 1.0 )", "always[0,12] ( x_0 <= 1.0 )",
                "( always[0,7] ( x_0 <= 1.0 ) until[0,6] x_1 >= 2.0 )", "not x_0 <= 1.0"]:
        assert not accepted(bad), bad


@pytest.mark.parametrize("kwargs", [dict(), dict(num_beams=3), dict(num_beams=3, num_return_sequences=3),
                                    dict(do_sample=True, num_return_sequences=2)])
def test_constrained_generate_is_valid_from_an_untrained_model(model, kwargs):
    e = torch.rand(6, model.config.embedding_dim)
    proc = GrammarLogitsProcessor(TOK, max_length=40, n_vars=2, max_horizon=20)
    ids = model.generate(input_ids=torch.full((6, 1), TOK.bos_token_id), formula_embedding=e, max_new_tokens=39,
                         logits_processor=[proc], pad_token_id=0, eos_token_id=2, **kwargs)
    for t in TOK.batch_decode(ids, skip_special_tokens=True):
        f = parse(t)
        assert f.to_string() == t and max(f.variables) < 2 and f.time_horizon <= 20


def test_rerank_is_never_farther_than_greedy(encoder):
    gen = FormulaGenerator("random", seed=2, n_points=30)
    pool = [f.to_string() for f in gen.sample(120)]
    targets = encoder.encode(gen.sample(20))
    rows = [[pool[(7 * i + j) % len(pool)] for j in range(6)] + ["not a formula"] for i in range(20)]
    emb = {t: e for t, e in zip(pool, encoder.encode(pool))}
    for distance in ("cosine", "l2"):
        for tol in (0.0, 0.05, 10.0):
            for row, target, j in zip(rows, targets, rerank(rows, targets, encoder, distance=distance,
                                                            size_tolerance=tol)):
                d = {t: (1 - torch.cosine_similarity(emb[t], target, dim=0)) if distance == "cosine"
                     else (emb[t] - target).norm() for t in row if t in emb}
                assert d[row[j]] <= d[row[0]] + 1e-6
                if tol == 0:
                    assert d[row[j]] <= min(d.values()) + 1e-6
    assert rerank([["nope", "x_0 <= 1.0"]], targets[:1], encoder) == [1]
    assert rerank([["nope"]], targets[:1], encoder) == [0]


def test_decode_strategies_and_nbest(model, encoder):
    model.config.embedding_dim = encoder.embedding_dim  # tiny preset: 16 = the encoder's anchors
    e = encoder.encode(FormulaGenerator("random", seed=4, n_points=30).sample(5))
    greedy = decode(model, TOK, e, batch_size=2)
    assert greedy == decode(model, TOK, e, batch_size=5)  # batching does not change greedy outputs
    for strategy in ("beam", "sample", "rerank"):
        out = decode(model, TOK, e, strategy=strategy, constrained=True, max_horizon=29, encoder=encoder,
                     num_beams=2, k=3, batch_size=2)
        assert len(out) == 5 and all(parse(t).to_string() == t for t in out)
    sampled = [decode(model, TOK, e, strategy="sample", seed=s, batch_size=2) for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] != sampled[2]
    nbest = decode(model, TOK, e, n=3, constrained=True, batch_size=2)
    assert [len(r) for r in nbest] == [3] * 5
    ref = decode(model, TOK, e, constrained=True)
    assert decode(model, TOK, e, constrained=True, dialect="textbook") == [parse(t).to_string(dialect="textbook")
                                                                            for t in ref]


def test_decode_errors_before_work(model, encoder, tmp_path):
    model.config.embedding_dim = 16
    with pytest.raises(ValueError, match=r"size 17 != 16"):
        decode(model, TOK, torch.zeros(2, 17))
    bad = torch.zeros(5, 16)
    bad[1, 3], bad[4, 0] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"rows: \[1, 4\]"):
        decode(model, TOK, bad)
    with pytest.raises(ValueError, match="pass the kernel encoder"):
        decode(model, TOK, torch.zeros(1, 16), strategy="rerank")
    with pytest.raises(ValueError, match="strategy"):
        decode(model, TOK, torch.zeros(1, 16), strategy="beams")
    for name in ("max_new_tokens", "n_vars"):  # 0 is an error, never replaced by the default
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
            decode(model, TOK, torch.zeros(1, 16), constrained=True, **{name: 0})
    # a model folder records its training encoder: another one is refused
    model.save_pretrained(tmp_path / "m")
    encoder.save_pretrained(tmp_path / "m" / "encoder")
    loaded = StlDecForCausalLM.from_pretrained(tmp_path / "m")
    other = StlKernelEncoder(encoder.anchors, n_trajectories=100, n_points=30)
    with pytest.raises(ValueError, match="trained with encoder"):
        decode(loaded, TOK, torch.zeros(1, 16), strategy="rerank", encoder=other)
    from safetensors.torch import save_file

    from stldec.cli import main

    save_file({"embeddings": torch.zeros(1, 16)}, tmp_path / "e.safetensors")
    for flag in ("--max_new_tokens", "--n_vars"):
        with pytest.raises(SystemExit, match=f"{flag[2:]} must be >= 1, got 0"):
            main(["decode", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "e.safetensors"), "--output",
                  str(tmp_path / "out.csv"), "--constrained", flag, "0"])


def test_decode_resumes_from_parts_file(model, tmp_path, monkeypatch):
    model.config.embedding_dim = 16
    e = torch.rand(7, 16)
    parts = tmp_path / "out.parts.jsonl"
    full = decode(model, TOK, e, strategy="sample", batch_size=2, parts_path=parts)
    lines = parts.read_text().splitlines()
    assert len(lines) == 1 + 4 and json.loads(lines[0])["rows"] == 7
    parts.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed while writing the 3rd batch
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(1) or generate(**kw))
    assert decode(model, TOK, e, strategy="sample", batch_size=2, parts_path=parts) == full
    assert len(calls) == 2 and len(parts.read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="other settings or inputs"):
        decode(model, TOK, e, strategy="greedy", batch_size=2, parts_path=parts)
    parts.write_text("my notes\n")  # a file of the same name that is not ours: refused, left as it is
    with pytest.raises(ValueError, match="not a decoding parts file"):
        decode(model, TOK, e, strategy="sample", batch_size=2, parts_path=parts)
    assert parts.read_text() == "my notes\n"


def test_decode_cli_removes_only_its_own_parts_files(model, tmp_path):
    from safetensors.torch import save_file

    from stldec.cli import main

    model.config.embedding_dim = 16
    model.save_pretrained(tmp_path / "m")
    save_file({"embeddings": torch.rand(3, 16)}, tmp_path / "e.safetensors")
    mine = tmp_path / "out.csv.nbest.parts.jsonl"  # not written by a run without --nbest: not deleted by it
    mine.write_text("my notes\n")
    main(["decode", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "e.safetensors"), "--output",
          str(tmp_path / "out.csv"), "--max_new_tokens", "8"])
    assert (tmp_path / "out.csv").is_file() and not (tmp_path / "out.csv.parts.jsonl").exists()
    assert mine.read_text() == "my notes\n"


def test_canonical_settings_drop_irrelevant_keys():
    assert DecodingConfig(strategy="beam", temperature=0.3).canonical() == DecodingConfig(strategy="beam").canonical()
    assert "num_beams" not in DecodingConfig().canonical()
    assert DecodingConfig(strategy="sample", seed=1).canonical() != DecodingConfig(strategy="sample").canonical()


def test_read_inputs(tmp_path, encoder):
    from safetensors.torch import save_file

    e = torch.rand(3, 16)
    save_file({"embeddings": e}, tmp_path / "e.safetensors")
    assert torch.equal(read_inputs(tmp_path / "e.safetensors")[0], e)
    import numpy as np

    np.save(tmp_path / "e.npy", e.numpy())
    assert torch.equal(read_inputs(tmp_path / "e.npy")[0], e)
    (tmp_path / "f.csv").write_text('formula\n"always[0,5] ( x_0 <= 1.0 )"\nx_1 >= 0.5\n')
    emb, gold = read_inputs(tmp_path / "f.csv", encoder)
    assert gold == ["always[0,5] ( x_0 <= 1.0 )", "x_1 >= 0.5"] and torch.equal(emb, encoder.encode(gold))
    with pytest.raises(ValueError, match="no `embedding` column"):
        read_inputs(tmp_path / "f.csv")


def test_grammar_horizon_counts_untils_nested_in_a_left_operand():
    """An until inside another until's left operand lengthens the paths through it: the grammar charges both."""
    text = "( ( always[0,10] ( x_0 >= 0.0 ) until[0,5] x_1 >= 0.0 ) until[0,5] x_1 >= 0.0 )"
    assert parse(text).time_horizon == 17
    for max_horizon, ok in ((16, False), (17, True)):
        state = StlGrammar(max_horizon=max_horizon).start
        for t in TOK.tokenize(text) + [TOK.eos_token]:
            state = state if state is None else StlGrammar(max_horizon=max_horizon).advance(state, t)
        assert (state is not None) == ok, max_horizon


def test_grammar_accepts_exactly_the_formulae_within_the_horizon():
    formulae = FormulaGenerator("random", seed=8, time_bound_max_range=12).sample(300)
    for max_horizon in (5, 12, 20):
        grammar = StlGrammar(max_horizon=max_horizon)
        for f in formulae:
            state = grammar.start
            for t in TOK.tokenize(f.to_string()) + [TOK.eos_token]:
                state = state if state is None else grammar.advance(state, t)
            assert (state is not None) == (f.time_horizon <= max_horizon), (max_horizon, str(f))
