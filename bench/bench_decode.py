"""Decode tokens/s of SmolLM2-135M on CPU: rapid_engine vs transformers, same machine, same dtype, one run.

For each context length the same real text (King James Bible tokens) is prefilled by both; then single-token
decode steps are timed round-robin (ours, transformers, ours, ...) with a streaming-read bandwidth probe before
every round, at a fixed position (each step is rolled back: our cache.truncate, transformers' cache.crop).
Bytes per token = every weight once (the tied embedding counts once, as the LM head reads it) + the K and V of
the context, so achieved GB/s / read bandwidth is the fraction of this machine's memory roofline.

    pytest bench/bench_decode.py -s      # writes bench/results/bench_decode.json
Targets (issue: Models/Speed): >= 1x transformers at 1K context, >= 2x at 8K (fp32).
Env: RAPID_BENCH_DTYPE=bf16 to run both in bfloat16; RAPID_BENCH_CONTEXTS=1024,8000 to pick contexts;
RAPID_BENCH_MODEL=qwen-coder for Qwen2.5-Coder-0.5B; RAPID_BENCH_TAG=qwen_bf16 writes bench_decode_qwen_bf16.json.
"""
import os
import statistics

import pytest
import torch

import roofline as rl
from rapid_engine import assets
from rapid_engine.models import load_model

transformers = pytest.importorskip("transformers")

DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}[os.environ.get("RAPID_BENCH_DTYPE", "fp32")]
CONTEXTS = [int(c) for c in os.environ.get("RAPID_BENCH_CONTEXTS", "1024,8000").split(",")]
MODEL = os.environ.get("RAPID_BENCH_MODEL", "smollm2")
ROUNDS, STEPS = 3, 8


@pytest.fixture(scope="module")
def models():
    path = {"smollm2": assets.smollm2_path, "qwen-coder": assets.qwen_coder_path}[MODEL]()
    ours = load_model(path, dtype=DTYPE)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPE).eval()
    return ours, hf


def _text_ids(tokenizer, n):
    ids = tokenizer.encode(assets.bible_text()[: n * 8])[:n]
    assert len(ids) == n, f"need {n} tokens of text, got {len(ids)}"
    return torch.tensor([ids])


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    tensors = [model.embed, model.final_norm, model.lm_head]
    for L in model.layers:
        tensors += [getattr(L, s) for s in L.__slots__]
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("context", CONTEXTS)
def test_decode_vs_transformers(models, context, roofline, report):
    ours, hf = models
    kv_dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}[DTYPE]
    ids = _text_ids(ours.tokenizer, context + 1)
    prompt, step_ids = ids[:, :context], ids[:, context:context + 1]

    cache = ours.new_cache(context + 1, kv_dtype=kv_dtype)
    ours.prefill(prompt, cache)
    with torch.inference_mode():
        hf_cache = hf(prompt, use_cache=True).past_key_values

    def ours_step():
        ours.forward(step_ids, cache)
        cache.truncate(context)

    def hf_step():
        with torch.inference_mode():
            hf(step_ids, past_key_values=hf_cache, use_cache=True)
        hf_cache.crop(-1)  # drop the step just taken (transformers 4.x and 5.x)

    torch.testing.assert_close(ours.forward(step_ids, cache)[0, 0], _hf_last(hf, step_ids, hf_cache),
                               rtol=0, atol=2e-3 if DTYPE == torch.float32 else 0.5)  # same work being timed
    cache.truncate(context)
    hf_cache.crop(-1)  # drop the step just taken (transformers 4.x and 5.x)

    per_round = {"ours": [], "hf": []}
    reads = []
    for _ in range(ROUNDS):
        reads.append(roofline.read_gbs())
        t = rl.time_interleaved({"ours": ours_step, "hf": hf_step}, warmup=1, reps=STEPS)
        for k in per_round:
            per_round[k].append(t[k])
    t_ours, t_hf = statistics.median(per_round["ours"]), statistics.median(per_round["hf"])
    read_bw = statistics.median(reads)
    bytes_per_token = _weight_bytes(ours) + context * ours.kv_bytes_per_token(kv_dtype)
    achieved = bytes_per_token / t_ours / 1e9
    row = report(model=MODEL, context=context, dtype=str(DTYPE).replace("torch.", ""), ours_tok_s=1 / t_ours,
                 transformers_tok_s=1 / t_hf, speedup=t_hf / t_ours, bytes_per_token=bytes_per_token,
                 achieved_gbs=achieved, read_gbs=read_bw, fraction_of_read_bw=achieved / read_bw,
                 threads=torch.get_num_threads())
    print(f"\ncontext {context:>6} {row['dtype']}: ours {row['ours_tok_s']:.1f} tok/s, transformers "
          f"{row['transformers_tok_s']:.1f} tok/s -> {row['speedup']:.2f}x; ours reads "
          f"{bytes_per_token / 1e6:.0f} MB/token = {achieved:.1f} GB/s vs {read_bw:.1f} GB/s measured read "
          f"bandwidth ({achieved / read_bw:.0%})")


def _hf_last(hf, step_ids, hf_cache):
    with torch.inference_mode():
        return hf(step_ids, past_key_values=hf_cache, use_cache=True).logits[0, -1].float()
