"""Data pipeline: files <-> datasets, resumable builds, the rank-aware stream, lazy tokenisation, the collator,
length grouping, and the experiment file (round trip, overrides, clear errors)."""

import json
import os
import warnings

import datasets
import pytest
import torch

from stldec import StlTokenizer
from stldec import data as D
from stldec.stl import StlKernelEncoder
from stldec.trainers import Experiment, GroupedSampler

SHORT = {"depth_shares": {2: 1, 3: 1}}


@pytest.fixture(scope="module")
def encoder():
    anchors = ["x_0 >= 0.1", "eventually[0,4] ( x_1 <= 0.0 )", "always[1,6] ( x_2 >= -0.3 )", "not ( x_0 <= 0.5 )"]
    return StlKernelEncoder(anchors, n_trajectories=200, n_points=30, seed=0)


@pytest.fixture(scope="module")
def tok():
    return StlTokenizer()


def test_derive_seed_is_a_pure_function_of_its_keys():
    assert D.derive_seed(0, 1) == D.derive_seed(0, 1)
    assert len({D.derive_seed(s, c) for s in range(5) for c in range(5)}) == 25


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ""])
def test_files_round_trip_with_embeddings(tmp_path, encoder, suffix):
    ds = D.generate_dataset(12, encoder, preset="balanced", seed=3, **SHORT)
    D.save_formulae(ds, tmp_path / f"set{suffix}")
    back = D.load_formulae(tmp_path / f"set{suffix}")
    assert back[:]["formula"] == ds[:]["formula"] and back[:]["depth"] == ds[:]["depth"]
    assert torch.equal(torch.tensor(back["embedding"]), torch.tensor(ds["embedding"]))


def test_load_fills_depth_and_embeds_on_load(tmp_path, encoder):
    rows = ["eventually[2,9] ( x_0 >= 0.25 )", "( x_1 <= 0.5 and not ( x_2 >= -1.0 ) )"]
    (tmp_path / "f.csv").write_text("Formula\n" + "".join(f'"{r}"\n' for r in rows))
    plain = D.load_formulae(tmp_path / "f.csv")
    assert plain.column_names == ["formula", "depth"] and list(plain["depth"]) == [2, 3]
    embedded = D.load_formulae(tmp_path / "f.csv", encoder)
    assert torch.allclose(torch.tensor(embedded["embedding"]), encoder.encode(rows))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        D.load_formulae(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match="unknown data format"):
        D.load_formulae(tmp_path / "x.txt")
    (tmp_path / "y.csv").write_text("text\nabc\n")
    with pytest.raises(ValueError, match="no `formula` column"):
        D.load_formulae(tmp_path / "y.csv")


def test_build_resumes_by_shard_and_refuses_other_settings(tmp_path, encoder):
    out = D.build_dataset(tmp_path / "b", 10, encoder, shard_size=4, seed=1, progress=False, **SHORT)
    whole = D.load_formulae(out)
    assert len(whole) == 10 and len(list(out.glob("shard-*.parquet"))) == 3
    os.remove(out / "shard-00001.parquet")  # as if the build had been killed before shard 1 was renamed into place
    with pytest.raises(ValueError, match="unfinished build"):
        D.load_formulae(out)
    D.build_dataset(out, 10, encoder, shard_size=4, seed=1, progress=False, **SHORT)
    again = D.load_formulae(out)
    assert again[:] == whole[:]
    with pytest.raises(ValueError, match="other settings"):
        D.build_dataset(out, 10, encoder, shard_size=4, seed=2, progress=False, **SHORT)
    other = StlKernelEncoder(encoder.anchors, n_trajectories=100, n_points=30)
    with pytest.raises(ValueError, match="embedded by encoder"):
        D.load_formulae(out, other)


def test_excluded_formulae_are_never_generated_built_or_streamed(tmp_path, encoder):
    """`exclude` (e.g. a test set) replaces a generated formula by the generator's next one: same count, same rows
    otherwise, none excluded -- in generated rows, a built folder (its settings record the exclusion), the stream."""
    from stldec.stl import parse

    kw = dict(preset="balanced", seed=3, **SHORT)
    plain = D.generate_rows(12, None, **kw)["formula"]
    banned = {parse(plain[1]), parse(plain[7])}
    kept = D.generate_rows(12, None, exclude=banned, **kw)["formula"]
    assert len(kept) == 12 and not banned & {parse(f) for f in kept}
    assert [f for f in plain if parse(f) not in banned] == kept[:10]
    built = D.load_formulae(D.build_dataset(tmp_path / "a", 12, encoder, shard_size=12, progress=False, **kw))
    banned = {parse(built["formula"][0]), parse(built["formula"][5])}
    out = D.build_dataset(tmp_path / "b", 12, encoder, shard_size=12, progress=False, exclude=banned, **kw)
    assert [f for f in built["formula"] if parse(f) not in banned] == D.load_formulae(out)["formula"][:10]
    assert len(D.load_formulae(out)) == 12
    with pytest.raises(ValueError, match="other settings"):
        D.build_dataset(out, 12, encoder, shard_size=12, progress=False, **kw)
    stream = [r["formula"] for r in _take(D.FormulaStream(chunk_size=12, **kw), 24)]
    banned = {parse(stream[2]), parse(stream[20])}
    again = [r["formula"] for r in _take(D.FormulaStream(chunk_size=12, exclude=banned, **kw), 24)]
    assert not banned & {parse(f) for f in again}
    assert [f for f in stream if parse(f) not in banned] == again[:11] + again[12:23]  # each chunk topped up


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_stream_ranks_partition_the_single_process_stream(encoder):
    kw = dict(preset="balanced", seed=5, chunk_size=4, **SHORT)
    single = _take(D.FormulaStream(**kw), 16)
    r0 = _take(D.FormulaStream(rank=0, world_size=2, **kw), 8)
    r1 = _take(D.FormulaStream(rank=1, world_size=2, **kw), 8)
    assert not {r["index"] for r in r0} & {r["index"] for r in r1}
    assert not {r["formula"] for r in r0} & {r["formula"] for r in r1}
    assert sorted(r["index"] for r in r0 + r1) == [r["index"] for r in single]
    by_index = {r["index"]: r["formula"] for r in single}
    assert all(by_index[r["index"]] == r["formula"] for r in r0 + r1)
    embedded = _take(D.FormulaStream(encoder, rank=1, world_size=2, **kw), 3)  # the encoder sets n_points = 30
    plain = _take(D.FormulaStream(rank=1, world_size=2, n_points=30, **kw), 3)
    assert [r["formula"] for r in embedded] == [r["formula"] for r in plain]
    z = torch.tensor([r["embedding"] for r in embedded])
    assert torch.allclose(z, encoder.encode([r["formula"] for r in plain]))


def test_stream_skip_continues_where_a_run_stopped():
    kw = dict(seed=2, chunk_size=5, rank=1, world_size=3, **SHORT)
    whole = _take(D.FormulaStream(**kw), 14)
    resumed = D.FormulaStream(**kw)
    resumed.skip(batches=3, batch_size=3)  # 9 rows consumed: resume inside the second chunk
    assert _take(resumed, 5) == whole[9:14]


def test_stream_transform_matches_with_transform(tok):
    s = D.FormulaStream(seed=1, chunk_size=4, transform=lambda b: D.tokenize_batch(tok, b), **SHORT)
    row = _take(s, 1)[0]
    assert row["input_ids"] == tok(D.FormulaStream(seed=1, chunk_size=4, **SHORT).chunk(0)["formula"][0])["input_ids"]


def test_lazy_tokenize_lengths_and_drop(encoder, tok):
    ds = D.generate_dataset(20, encoder, seed=0, **SHORT)
    lazy = D.lazy_tokenize(ds, tok)
    ids = tok(list(ds["formula"]))["input_ids"]
    assert list(lazy["length"]) == [len(x) for x in ids]
    assert lazy[3]["input_ids"] == ids[3] and len(lazy[3]["formula_embedding"]) == encoder.embedding_dim
    cut = sorted(lazy["length"])[10]
    with pytest.warns(UserWarning, match=rf"dropped \d+ of 20 rows longer than {cut} tokens \(\d+\.\d%\)"):
        assert max(D.lazy_tokenize(ds, tok, max_length=cut)["length"]) <= cut
    few = datasets.Dataset.from_dict({"formula": ["x_0 >= 1.5"] * 100 + ["always[0,10] ( ( x_1 <= -0.25 ) )"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1 row of 101 (< 1 %): a note, no warning
        assert len(D.lazy_tokenize(few, tok, max_length=8)) == 100


def test_collator_pads_to_the_batch_and_masks_labels(tok):
    texts = ["x_0 >= 1.5", "always[0,10] ( ( x_1 <= -0.25 or x_2 >= 3.0 ) )"]
    rows = [{"input_ids": x, "formula_embedding": [0.5] * 4} for x in tok(texts)["input_ids"]]
    b = D.StlCollator(tok, "decoder")(rows)
    n = [len(r["input_ids"]) for r in rows]
    assert b["input_ids"].shape == (2, max(n)) and b["formula_embedding"].shape == (2, 4)
    assert b["attention_mask"].sum(1).tolist() == n
    assert (b["labels"] == -100).sum() == max(n) - min(n)
    assert torch.equal(b["labels"][b["attention_mask"] == 1], b["input_ids"][b["attention_mask"] == 1])
    assert D.StlCollator(tok, "gpt", pad_to_multiple_of=8)(rows)["input_ids"].shape[1] % 8 == 0
    with pytest.raises(ValueError, match="needs embeddings"):
        D.StlCollator(tok, "decoder")([{"input_ids": r["input_ids"]} for r in rows])
    cut = D.StlCollator(tok, "decoder", max_length=min(n))  # a streamed row too long: dropped whole, never cut
    with pytest.warns(UserWarning, match=f"dropping rows longer than {min(n)} tokens"):
        short = cut(rows)
    assert short["input_ids"].shape == (1, min(n)) and cut.dropped == 1
    with pytest.raises(ValueError, match="every row of a batch is longer than 3 tokens"):
        D.StlCollator(tok, "decoder", max_length=3)(rows)


def test_mlm_collator_masks_only_real_non_special_tokens(tok):
    torch.manual_seed(0)
    rows = [{"input_ids": x} for x in tok(["always[0,10] ( x_1 <= -0.25 )"] * 64 + ["x_0 >= 1"] * 64)["input_ids"]]
    b = D.StlCollator(tok, "mlm", mlm_probability=0.3)(rows)
    chosen = b["labels"] != -100
    assert chosen.any() and (b["attention_mask"][chosen] == 1).all()
    special = torch.isin(b["labels"], torch.tensor(tok.all_special_ids))
    assert not special[chosen].any()
    assert 0.2 < chosen.sum() / (b["attention_mask"].sum() - 2 * len(rows)) < 0.4
    assert (b["input_ids"][chosen] == tok.mask_token_id).float().mean() > 0.6


def test_grouped_sampler_is_a_seeded_permutation_of_similar_length_batches():
    lengths = torch.randint(5, 200, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    s = GroupedSampler(lengths, batch_size=16, seed=3)
    s.set_epoch(1)
    order = list(s)
    assert sorted(order) == list(range(1000)) and order == list(s)
    s.set_epoch(2)
    assert list(s) != order
    spread = lambda idx: sum(max(lengths[i] for i in idx[k:k + 16]) - min(lengths[i] for i in idx[k:k + 16])  # noqa: E731
                             for k in range(0, 992, 16))
    assert spread(order) < 0.2 * spread(torch.randperm(1000).tolist())


def test_experiment_round_trips_and_overrides(tmp_path):
    e = Experiment.load("examples/configs/tiny.yaml")
    for name in ("e.yaml", "e.json"):
        e.save(tmp_path / name)
        assert Experiment.load(tmp_path / name) == e
    o = e.override({"learning_rate": 1e-4, "model.hidden_size": 32, "data.preset": "hard", "training.max_steps": 7})
    assert (o.training["learning_rate"], o.model["hidden_size"], o.data.preset, o.training["max_steps"]) == \
        (1e-4, 32, "hard", 7)
    assert o.training_arguments(output_dir=str(tmp_path)).max_steps == 7


@pytest.mark.parametrize("bad, message", [
    ({"training": {"learnin_rate": 1e-3}}, "did you mean 'learning_rate'"),
    ({"model": {"hiden_size": 8}}, "did you mean 'hidden_size'"),
    ({"data": {"presett": "easy"}}, "did you mean 'preset'"),
    ({"trainer": {}}, "unknown field 'trainer'"),
    ({"model": {"head": "seq2seq"}}, "model.head"),
])
def test_experiment_unknown_fields_fail_with_a_suggestion(bad, message):
    with pytest.raises(ValueError, match=message):
        Experiment.from_dict(bad)


def test_model_config_checks_the_embedding_size():
    e = Experiment.from_dict({"model": {"preset": "tiny", "embedding_dim": 32}})
    with pytest.raises(ValueError, match="embedding_dim is 32 but the data's embeddings have 16"):
        e.model_config(embedding_dim=16)
    assert Experiment.from_dict({"model": {"preset": "tiny"}}).model_config(embedding_dim=24).embedding_dim == 24
    gpt = Experiment.from_dict({"model": {"head": "gpt", "preset": "tiny"}}).model_config()
    mlm = Experiment.from_dict({"model": {"head": "mlm", "preset": "tiny"}}).model_config()
    assert (gpt.add_cross_attention, gpt.is_decoder, mlm.is_decoder) == (False, True, False)


def test_cli_value_parsing():
    from stldec.trainers.experiment import _value
    assert (_value("10"), _value("1e-3"), _value("true"), _value("[a, b]"), _value("cosine")) == \
        (10, 1e-3, True, ["a", "b"], "cosine")
    assert json.loads(json.dumps(_value("0.5"))) == 0.5


def test_stream_resume_with_dataloader_workers_keeps_the_batch_order():
    def indices(rows):
        return [r["index"] for r in rows]

    def loader(skip: int):
        s = D.FormulaStream(seed=1, chunk_size=4, **SHORT)
        s.skip(skip, 2)
        return iter(torch.utils.data.DataLoader(s, batch_size=2, num_workers=2, collate_fn=indices))

    whole = [next(it) for it in [loader(0)] for _ in range(9)]
    assert sorted(sum(whole, [])) == list(range(18))
    for n in (1, 3, 4):
        it = loader(n)
        assert [next(it) for _ in range(5)] == whole[n : n + 5]
