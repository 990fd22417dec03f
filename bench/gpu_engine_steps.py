"""Engine step costs on a GPU at Llama-3.1-8B shapes (random weights), and the RAPID speedup they predict.

    python bench/gpu_engine_steps.py [--tiny] [--out PATH]

Times, on one card and in one process: an `lc` decode step (1 token) over 32K/64K/128K tokens of target
KV (bf16 and int8), a drafter step over 4K/8K retrieved tokens, one 11-token verify step, the spec_sample
step, and transformers' own decode step (SDPA) at the same lengths. From those, for acceptance rates of
60-90%, the expected `rapid` speedup over `lc` with the best gamma:
    tokens/round = (1 - a^(g+1)) / (1 - a),  cost/round = g * t_draft + t_verify(g+1) + t_sample
(the verify cost is measured at 11 tokens and used for every g <= 10: on a GPU it barely depends on g).
Model files are too large to carry to the GPU machine, so the weights are random in the real shapes; the
KV caches are filled with random values (the cost of a step does not depend on their content).
`--tiny` runs the same code on the CPU with toy shapes, to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # noqa: E402  (bench/roofline.py: the shared timing helper)
from rapid_engine import ops  # noqa: E402
from rapid_engine.kv_cache import KVCache  # noqa: E402
from rapid_engine.models.config import ModelConfig  # noqa: E402
from rapid_engine.models.llama import Model  # noqa: E402

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                num_kv_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=32, max_position_embeddings=4096, rope_theta=10000.0)


class RandomWeights:
    """Stands in for SafetensorsFolder: every tensor random (std 0.02), norms at 1."""

    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype

    def get(self, name, shape):
        if "norm" in name:
            return torch.ones(shape, device=self.device, dtype=self.dtype)
        return torch.randn(shape, device=self.device, dtype=self.dtype) * 0.02

    def copy_into(self, out, name):
        out.normal_(0.0, 0.02)


def timeit(fn, device, reps=5, warmup=2):
    return roofline.time_call(fn, warmup=warmup, reps=reps, device=device)


def filled_cache(cfg, length, kv_dtype, device, room=16):
    """A cache holding `length` tokens of random K/V (quantized on write like a real prefill would)."""
    cache = KVCache(cfg.num_layers, 1, cfg.num_kv_heads, length + room, cfg.head_dim, kv_dtype=kv_dtype, device=device)
    chunk = 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for s in range(0, length, chunk):  # write() appends at most at cache.length, as a prefill does
        n = min(chunk, length - s)
        k = torch.randn(1, cfg.num_kv_heads, n, cfg.head_dim, device=device, dtype=dtype)
        for i in range(cfg.num_layers):
            cache.write(i, k, k, s)
        cache.length = s + n
    return cache


def step(model, cache, n, device):
    """One forward of n new tokens at the end of the cache, then roll back (the cost of a decode/verify step)."""
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
    base = cache.length

    def run():
        model.forward(ids, cache)
        cache.truncate(base)
    return timeit(run, device)


def hf_step(cfg, lengths, device):
    """transformers' decode step (SDPA) over a random KV of each length; {} if transformers can't run."""
    try:
        from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        return {"error": f"transformers unavailable: {e}"}
    hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
                     rope_theta=cfg.rope_theta, attn_implementation="sdpa")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        hf = LlamaForCausalLM(hc).to(dtype).eval()
    out = {}
    for S in lengths:
        cache = DynamicCache()
        for i in range(cfg.num_layers):
            k = torch.randn(1, cfg.num_kv_heads, S, cfg.head_dim, device=device, dtype=dtype)
            cache.update(k, k, i)
        ids = torch.randint(0, cfg.vocab_size, (1, 1), device=device)
        pos = torch.tensor([[S]], device=device)

        def run():
            with torch.inference_mode():
                hf(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True)
                cache.crop(-1)  # drop the token just appended (negative = remove, on transformers 4.x and 5.x)
        out[S] = timeit(run, device, reps=3)
        del cache
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del hf
    return out


def predicted_speedup(t_lc, t_draft, t_verify, t_sample, accept):
    best = (1.0, 0)
    for g in range(1, 11):
        tokens = (1 - accept ** (g + 1)) / (1 - accept)
        cost = g * t_draft + t_verify + t_sample
        best = max(best, ((tokens / cost) * t_lc, g))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy shapes on the CPU (checks the script)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' decode step")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    shapes = TINY if args.tiny else LLAMA_8B
    cfg = ModelConfig(architecture="LlamaForCausalLM", **shapes)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = Model.from_weights(cfg, RandomWeights(device, dtype), dtype=dtype, device=device)
    target_lens = [256, 512, 1024] if args.tiny else [32768, 65536, 131072 - 64]
    draft_lens = [64, 128] if args.tiny else [4096, 8192]
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "shapes": shapes, "lc_step": {}, "verify11_step": {}, "draft_step": {},
           "spec_sample_step": None, "hf_step": {}, "predicted": {}}
    if device.type == "cuda":
        res["driver"] = os.popen("nvidia-smi --query-gpu=driver_version --format=csv,noheader").read().strip()
    for kv in ("bf16", "int8"):
        for S in target_lens:
            cache = filled_cache(cfg, S, kv, device)
            res["lc_step"][f"{kv}@{S}"] = step(model, cache, 1, device)
            res["verify11_step"][f"{kv}@{S}"] = step(model, cache, 11, device)
            print(f"target {kv} S={S}: lc step {res['lc_step'][f'{kv}@{S}'] * 1e3:.2f} ms, "
                  f"verify(11) {res['verify11_step'][f'{kv}@{S}'] * 1e3:.2f} ms", flush=True)
            del cache
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for S in draft_lens:
        cache = filled_cache(cfg, S, "bf16", device)
        res["draft_step"][S] = step(model, cache, 1, device)
        print(f"drafter S={S}: step {res['draft_step'][S] * 1e3:.2f} ms", flush=True)
        del cache
    V = cfg.vocab_size
    logits = torch.randn(1, 11, V, device=device) * 3
    drafts = torch.randint(0, V, (1, 10), device=device)
    q = torch.softmax(torch.randn(1, 10, V, device=device) * 3, -1)
    res["spec_sample_step"] = timeit(lambda: ops.spec_sample(logits, drafts, q, temperature=1.0, top_p=0.9, eta=10.0), device)
    print(f"spec_sample [1, 11, {V}]: {res['spec_sample_step'] * 1e3:.3f} ms", flush=True)
    if not args.no_hf:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        hf = hf_step(cfg, target_lens, device)
        res["hf_step"] = {str(k): v for k, v in hf.items()}
        print("transformers decode step:", {k: (f"{v * 1e3:.2f} ms" if isinstance(v, float) else v) for k, v in hf.items()})
    for kv in ("bf16", "int8"):
        for S in target_lens:
            for dl in draft_lens:
                for a in (0.6, 0.7, 0.8, 0.9):
                    sp, g = predicted_speedup(res["lc_step"][f"bf16@{S}"], res["draft_step"][dl],
                                              res["verify11_step"][f"{kv}@{S}"], res["spec_sample_step"], a)
                    res["predicted"][f"{kv}@{S}/draft{dl}/a{a}"] = {"speedup_vs_lc_bf16": sp, "gamma": g}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"gpu_engine_steps_{'tiny' if args.tiny else res['device'].replace(' ', '_')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(out + ".tmp", out)
    print("wrote", out)


if __name__ == "__main__":
    main()
