"""A whole target step on the CPU: Qwen2.5-1.5B shapes (random bf16 weights, random bf16 KV), each CPU path.

    python bench/bench_model_step.py [--lengths 8192 32768] [--paths amx avx512] [--prefill 8192] [--tiny]

For every KV length and CPU path (RAPID_CPU_ISA, switched in-process), `Model.forward` of 1, 5 and 11 new
tokens at the end of the cache (a decode step, a verify step of gamma = 4 and of gamma = 10), timed round-robin
so a drift of this shared machine hits all alike; then chunked prefill tokens/s of a `--prefill`-token
document per path. The figures are ratios within one run: verify(11) / decode(1) per path (the issue's target:
<= 1.5x on AMX, <= 2.5x with AVX512-BF16 only) and prefill tokens/s of each path against the avx512 (fp32 FMA)
path. Writes bench/results/bench_model_step.json. The weights are random: a step's cost does not depend on
their values, and this keeps the 3 GB model off the disk.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # noqa: E402
from rapid_engine import _ext  # noqa: E402
from rapid_engine.kv_cache import KVCache  # noqa: E402
from rapid_engine.models.config import ModelConfig  # noqa: E402
from rapid_engine.models.llama import Model  # noqa: E402

QWEN_1_5B = dict(architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                 num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, max_position_embeddings=32768,
                 rope_theta=1e6, tie_word_embeddings=True, qkv_bias=True)
TINY = dict(architecture="Qwen2ForCausalLM", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=4096, qkv_bias=True)


class RandomWeights:
    """Stands in for SafetensorsFolder: every tensor random (std 0.02), norms at 1."""

    def get(self, name, shape):
        return torch.ones(shape) if "norm" in name else torch.randn(shape) * 0.02

    def copy_into(self, out, name):
        out.normal_(0.0, 0.02)


def filled_cache(cfg, length, room=16):
    cache = KVCache(cfg.num_layers, 1, cfg.num_kv_heads, length + room, cfg.head_dim, kv_dtype="bf16", device="cpu")
    for s in range(0, length, 8192):
        n = min(8192, length - s)
        k = torch.randn(1, cfg.num_kv_heads, n, cfg.head_dim, dtype=torch.bfloat16)
        for i in range(cfg.num_layers):
            cache.write(i, k, k, s)
        cache.length = s + n
    return cache


def with_isa(isa, fn):
    def call():
        os.environ["RAPID_CPU_ISA"] = isa
        try:
            fn()
        finally:
            os.environ.pop("RAPID_CPU_ISA", None)
    return call


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--paths", nargs="+", default=None, help="CPU paths to compare (default: the best and avx512)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 5, 11])
    ap.add_argument("--prefill", type=int, default=8192, help="prefill benchmark length (0: skip)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="toy shapes (checks the script)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_model_step.json"))
    args = ap.parse_args()
    if not _ext.HAS_EXT:
        sys.exit("bench_model_step: the compiled extension is not built")
    best = _ext.cpu_isa()
    paths = args.paths or ([best, "avx512"] if best != "avx512" else ["avx512"])
    cfg = ModelConfig(**(TINY if args.tiny else QWEN_1_5B))
    lengths = [256, 1024] if args.tiny else args.lengths
    torch.manual_seed(0)
    model = Model.from_weights(cfg, RandomWeights(), dtype=torch.bfloat16, device="cpu")
    res = {"machine": roofline.machine_info(), "cpu_isa_best": best, "paths": paths, "shapes": {
        k: v for k, v in (TINY if args.tiny else QWEN_1_5B).items()}, "steps": {}, "prefill": {}}
    for S in lengths:
        cache = filled_cache(cfg, S)
        fns = {}
        for isa in paths:
            for n in args.tokens:
                ids = torch.randint(0, cfg.vocab_size, (1, n))

                def run(ids=ids):
                    model.forward(ids, cache)
                    cache.truncate(S)
                fns[f"{isa}/{n}"] = with_isa(isa, run)
        load = os.getloadavg()[0]
        t = roofline.time_interleaved(fns, warmup=1, reps=args.reps)
        for isa in paths:
            row = {f"t{n}_ms": t[f"{isa}/{n}"] * 1e3 for n in args.tokens}
            for n in args.tokens[1:]:
                row[f"t{n}_over_t1"] = t[f"{isa}/{n}"] / t[f"{isa}/1"]
            row["load_avg"] = load
            res["steps"][f"{isa}@{S}"] = row
            print(f"S={S} {isa:>10}: " + ", ".join(f"{n} tok {t[f'{isa}/{n}'] * 1e3:.1f} ms" for n in args.tokens) +
                  " | " + ", ".join(f"{n}/1 {row[f't{n}_over_t1']:.2f}x" for n in args.tokens[1:]), flush=True)
        del cache
    n_pre = 512 if args.tiny else args.prefill
    if n_pre:
        ids = torch.randint(0, cfg.vocab_size, (1, n_pre))
        for isa in paths:
            cache = KVCache(cfg.num_layers, 1, cfg.num_kv_heads, n_pre + 16, cfg.head_dim, kv_dtype="bf16")
            os.environ["RAPID_CPU_ISA"] = isa
            t0 = time.perf_counter()
            model.prefill(ids, cache)
            dt = time.perf_counter() - t0
            os.environ.pop("RAPID_CPU_ISA", None)
            res["prefill"][isa] = {"tokens": n_pre, "seconds": dt, "tokens_per_s": n_pre / dt,
                                   "load_avg": os.getloadavg()[0]}
            print(f"prefill {n_pre} tokens, {isa:>10}: {dt:.1f} s = {n_pre / dt:.0f} tokens/s", flush=True)
            del cache
        if "avx512" in res["prefill"]:
            for isa, row in res["prefill"].items():
                row["speedup_vs_avx512"] = row["tokens_per_s"] / res["prefill"]["avx512"]["tokens_per_s"]
    if not args.tiny:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
