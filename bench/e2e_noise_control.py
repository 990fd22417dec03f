"""Noise control for bench_e2e's "x lc" column: lc, and sd/rapid with gamma fixed at 0 (identical work per token:
one target step and spec_sample with gamma 0 per token), plus sd/rapid with gamma="auto", interleaved on one
prefilled document. The spread of the identical-work modes is the run-to-run noise the x-lc figures carry.

    python bench/e2e_noise_control.py 8192 --cache-dir DIR [--model smollm2] [--new-tokens 128] [--reps 3]
(DIR from bench_e2e.py --cache-dir DIR --prefill-only, so no mode pays the long prefill.)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import _document, _load  # noqa: E402
from rapid_engine.engine import RapidEngine  # noqa: E402
from rapid_engine.retrieval.needles import FACTS  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("length", type=int, nargs="?", default=8192)
ap.add_argument("--cache-dir", required=True)
ap.add_argument("--model", default="smollm2")
ap.add_argument("--new-tokens", type=int, default=128)
ap.add_argument("--reps", type=int, default=3)
args = ap.parse_args()
model, capacity, doc_tokens, ext = _load(args.model, args.length)
fact, question = FACTS[args.length % len(FACTS)]
eng = RapidEngine(model, kv_dtype="bf16", cache_dir=Path(args.cache_dir), max_context=capacity)
doc = _document(model.tokenizer, doc_tokens, fact)
kw = dict(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
import gc, os
if os.environ.get("NOGC") == "freeze":
    gc.collect(); gc.freeze()
elif os.environ.get("NOGC"):
    gc.collect(); gc.freeze(); gc.disable()
res = {}
for rep in range(args.reps):
    for mode, g in (("lc", None), ("sd", 0), ("rapid", 0), ("sd", "auto"), ("rapid", "auto")):
        extra = {} if g is None else {"gamma": g}
        r = eng.generate(doc, question, mode=mode, **kw, **extra)
        key = f"{mode}-{g}"
        res.setdefault(key, []).append(r.stats["decode_tokens_per_s"])
        print(rep, key, f"{r.stats['decode_tokens_per_s']:.2f} tok/s", f"drafted {r.stats['drafted']}",
              f"verify(1) {r.stats['verify_s'].get(1, 0) * 1e3:.1f} ms", flush=True)
lc = max(res["lc-None"])
for k, v in res.items():
    print(f"{args.model} {args.length} {k}: best {max(v):.2f} tok/s = {max(v) / lc:.3f}x lc; runs "
          + ", ".join(f"{x:.2f}" for x in v))
