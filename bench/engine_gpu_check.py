"""RapidEngine on a CUDA device: a tiny random-weight Llama, every mode, greedy exactness and sampling.

    python bench/engine_gpu_check.py     # prints one JSON line per check; exits 1 if a check fails

A device smoke test of the engine's plumbing (generators, tensors and caches on the GPU, the document cache
loading onto the device); the kernels' own GPU tests live with the kernels. Skips cleanly without CUDA.
"""
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_tests"))


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    from engine_fixtures import tiny_llama_dir
    from rapid_engine import _ext
    from rapid_engine.engine import RapidEngine
    from rapid_engine.models.loader import load_model
    from rapid_engine.retrieval.embedders import HashingEmbedder

    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "backends": {k: v for k, v in _ext.backends().items() if k != "ext_error"}}), flush=True)
    tmp = Path(tempfile.mkdtemp())
    model = load_model(tiny_llama_dir(tmp / "tiny", init_range=0.3), device="cuda", dtype=torch.float32)
    context = " ".join(f"Paragraph {i}: the keeper of gate {i} is named {chr(65 + i % 26)}{i * 7 % 13}."
                       for i in range(40))
    question = "Who keeps gate 17?"
    failed = 0
    for kv_dtype in ("fp32", "bf16", "int8"):
        engine = RapidEngine(model, kv_dtype=kv_dtype, embedder=HashingEmbedder(), cache_dir=tmp / "cache")
        kw = dict(max_new_tokens=24, retrieval_tokens=256, chunk_tokens=64)
        try:
            lc = engine.generate(context, question, mode="lc", **kw)
            for gamma in (1, 4, "auto"):
                sd = engine.generate(context, question, mode="sd", gamma=gamma, **kw)
                same = sd.token_ids == lc.token_ids
                failed += not same
                print(json.dumps({"kv_dtype": kv_dtype, "check": f"sd gamma={gamma} == lc (greedy)", "ok": same,
                                  "acceptance": sd.stats["acceptance_rate"], "doc_cache_hit": sd.stats["doc_cache_hit"]}),
                      flush=True)
            # A fixed gamma: with gamma="auto" the draft lengths follow measured timings, and so does the use
            # of the random stream (a seed then fixes the distribution, not the tokens).
            rp = engine.generate(context, question, mode="rapid", temperature=0.8, top_p=0.9, seed=0, gamma=4, **kw)
            rp2 = engine.generate(context, question, mode="rapid", temperature=0.8, top_p=0.9, seed=0, gamma=4, **kw)
            print(json.dumps({"kv_dtype": kv_dtype, "check": "rapid sampling, same seed -> same tokens",
                              "ok": rp.token_ids == rp2.token_ids, "tokens": len(rp.token_ids),
                              "acceptance": rp.stats["acceptance_rate"]}), flush=True)
            failed += rp.token_ids != rp2.token_ids
        except Exception as e:  # report and go on: one format's failure should not hide the others
            failed += 1
            print(json.dumps({"kv_dtype": kv_dtype, "error": f"{type(e).__name__}: {e}",
                              "where": traceback.format_exc().splitlines()[-3:]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
