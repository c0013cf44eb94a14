"""generate() and training throughput of the stldec decoder against GPT2LMHeadModel(add_cross_attention=True).

Both models have the same width, depth, heads, FFN size, vocabulary (the stldec tokenizer) and positions. Ours
cross-attends to `num_memory_tokens` memory tokens projected from the formula embedding; the GPT2 baseline gets the
embedding through its own Linear(embedding_dim, hidden) as one memory vector (`encoder_hidden_states (B, 1, hidden)`,
the reference design). Rows:
- generate(): greedy, exactly `--new_tokens` new tokens from BOS, batch 1 and 32, cache on/off; tokens/s = new
  tokens per second (best of `--repeats`, runs of the two models interleaved);
- formulae/s of cached greedy generate() at batch 32 when each formula takes the test set's mean length in our
  tokens vs in the reference scheme (spaces as tokens, `token_stats.reference_tokens`): what shorter sequences buy;
- training step (forward + backward + AdamW) at batch 32 on formulae of the 3000-formula test set, dynamic padding;
  tokens/s counts real (non-padding) tokens.

    .venv/bin/python benchmarks/bench_generate.py [--preset small] [--threads 1] [--repeats 3] [--device cpu]
"""

import argparse
import csv
import platform
import time
from pathlib import Path

import torch
from token_stats import reference_tokens
from transformers import GPT2Config, GPT2LMHeadModel

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class Gpt2Decoder(torch.nn.Module):
    """The baseline: GPT2 with cross-attention plus the projection its conditioning needs."""

    def __init__(self, cfg: StlDecConfig):
        super().__init__()
        self.proj = torch.nn.Linear(cfg.embedding_dim, cfg.hidden_size)
        self.gpt2 = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_hidden_layers,
            n_head=cfg.num_attention_heads, n_inner=cfg.intermediate_size, n_positions=cfg.max_position_embeddings,
            resid_pdrop=cfg.hidden_dropout_prob, embd_pdrop=cfg.hidden_dropout_prob,
            attn_pdrop=cfg.attention_probs_dropout_prob, add_cross_attention=True, bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id))

    def forward(self, formula_embedding, **kwargs):
        return self.gpt2(encoder_hidden_states=self.proj(formula_embedding)[:, None], **kwargs)

    def generate(self, formula_embedding, **kwargs):
        return self.gpt2.generate(encoder_hidden_states=self.proj(formula_embedding)[:, None], **kwargs)


def timed(fn) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def bench_generate(models: dict, batch: int, new_tokens: int, use_cache: bool, repeats: int, device) -> dict:
    """Best tokens/s of each model over `repeats` interleaved runs."""
    emb = torch.rand(batch, models["ours"].config.embedding_dim, device=device)
    bos = torch.ones(batch, 1, dtype=torch.long, device=device)
    kwargs = dict(input_ids=bos, attention_mask=torch.ones_like(bos), formula_embedding=emb, do_sample=False,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache)
    best = {name: float("inf") for name in models}
    with torch.no_grad():
        for _ in range(repeats):
            for name, model in models.items():
                best[name] = min(best[name], timed(lambda m=model: m.generate(**kwargs)))
    return {name: batch * new_tokens / t for name, t in best.items()}


def bench_train(models: dict, formulae: list[str], tok: StlTokenizer, batch: int, steps: int, device) -> dict:
    """Real tokens/s of forward + backward + AdamW steps; the two models alternate on the same batches."""
    batches = []
    for i in range(steps + 1):
        enc = tok(formulae[i * batch : (i + 1) * batch], padding=True, return_tensors="pt").to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        emb = torch.rand(batch, models["ours"].config.embedding_dim, device=device)
        batches.append(dict(**enc, labels=labels, formula_embedding=emb))
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)

    def step(name, b):
        models[name](**b).loss.backward()
        opts[name].step()
        opts[name].zero_grad()

    for name in models:
        models[name].train()
        step(name, batches[0])  # warm-up
    for b in batches[1:]:
        for name in models:
            seconds[name] += timed(lambda n=name, b=b: step(n, b))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    return {name: tokens / s for name, s in seconds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the shared 2-core CPU is steadier with 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--train_steps", type=int, default=10)
    p.add_argument("--attn", default="sdpa", help="our attention implementation: sdpa | eager | flex_attention")
    p.add_argument("--device", default="cpu")
    p.add_argument("--test", default=str(DATA / "balanced_test_3000.csv"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = StlDecConfig.from_preset(args.preset)
    ours = StlDecForCausalLM(cfg)
    ours.set_attn_implementation(args.attn)
    models = {"ours": ours.to(args.device).eval(), "gpt2": Gpt2Decoder(cfg).to(args.device).eval()}
    sizes = {name: sum(q.numel() for q in m.parameters()) / 1e6 for name, m in models.items()}
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, device {args.device}")
    print(f"preset {args.preset}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"{cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}, embedding {cfg.embedding_dim}, "
          f"M = {cfg.num_memory_tokens}; stldec ({args.attn}) {sizes['ours']:.2f} M parameters, "
          f"GPT2-xattn (sdpa) {sizes['gpt2']:.2f} M\n")
    print("| measurement | batch | stldec tokens/s | GPT2-xattn tokens/s | stldec / GPT2 |")
    print("|---|---|---|---|---|")
    speed = {}
    for batch in (1, 32):
        for use_cache in (True, False):
            r = bench_generate(models, batch, args.new_tokens, use_cache, args.repeats if use_cache else 1,
                               args.device)
            speed[batch, use_cache] = r
            print(f"| generate {args.new_tokens} new tokens, cache {'on' if use_cache else 'off'} | {batch} | "
                  f"{r['ours']:.0f} | {r['gpt2']:.0f} | {r['ours'] / r['gpt2']:.2f} |", flush=True)
        print(f"| cache speed-up (on / off) | {batch} | {speed[batch, True]['ours'] / speed[batch, False]['ours']:.1f}x"
              f" | {speed[batch, True]['gpt2'] / speed[batch, False]['gpt2']:.1f}x | |", flush=True)
    with open(args.test, newline="") as f:
        formulae = [row["formula"] for row in csv.DictReader(f)]
    formulae = [formulae[i] for i in torch.randperm(len(formulae)).tolist()]
    tok = StlTokenizer()
    r = bench_train(models, formulae, tok, 32, args.train_steps, args.device)
    print(f"| training step (real tokens/s) | 32 | {r['ours']:.0f} | {r['gpt2']:.0f} | {r['ours'] / r['gpt2']:.2f} |")

    print("\n| tokenisation | mean tokens per test formula (with BOS, EOS) | stldec formulae/s, batch 32, cached |")
    print("|---|---|---|")
    lengths = {"StlTokenizer": sum(len(ids) for ids in tok(formulae)["input_ids"]) / len(formulae),
               "reference scheme (spaces as tokens)": sum(len(reference_tokens(f)) for f in formulae) / len(formulae)}
    for name, length in lengths.items():
        r = bench_generate({"ours": models["ours"]}, 32, round(length) - 1, True, args.repeats, args.device)
        print(f"| {name} | {length:.1f} | {r['ours'] / (round(length) - 1):.2f} |", flush=True)


if __name__ == "__main__":
    main()
