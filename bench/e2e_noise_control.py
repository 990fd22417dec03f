"""Noise control for bench_e2e's "x lc" column: lc, and sd/rapid with gamma fixed at 0 (identical work per token),
plus sd with gamma="auto", interleaved twice on one prefilled document. Their spread is the run-to-run noise.

    python bench/e2e_noise_control.py 32768 --cache-dir DIR    (DIR from bench_e2e.py --cache-dir ... --prefill-only)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import _load, _document
from rapid_engine.engine import RapidEngine
from rapid_engine.retrieval.needles import FACTS
ap = argparse.ArgumentParser()
ap.add_argument("length", type=int, nargs="?", default=32768)
ap.add_argument("--cache-dir", required=True)
args = ap.parse_args()
length = args.length
model, capacity, doc_tokens, ext = _load("smollm2", length)
fact, question = FACTS[length % len(FACTS)]
eng = RapidEngine(model, kv_dtype="bf16", cache_dir=Path(args.cache_dir), max_context=capacity)
doc = _document(model.tokenizer, doc_tokens, fact)
kw = dict(max_new_tokens=64, temperature=0.0, ignore_eos=True)
res = {}
for rep in range(2):
    for mode, g in (("lc", None), ("sd", 0), ("rapid", 0), ("sd", "auto")):
        extra = {} if g is None else {"gamma": g}
        r = eng.generate(doc, question, mode=mode, **kw, **extra)
        key = f"{mode}-{g}"
        res.setdefault(key, []).append(r.stats["decode_tokens_per_s"])
        print(rep, key, f"{r.stats['decode_tokens_per_s']:.2f}", r.stats.get("prompt_tokens"), flush=True)
lc = max(res["lc-None"])
for k, v in res.items():
    print(k, f"best {max(v):.2f} tok/s = {max(v)/lc:.3f}x lc")
