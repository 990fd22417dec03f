"""The engine's side of the `rapid-engine` command: `generate --context FILE --question TEXT` and `demo`.

cli.py registers the subcommands: `generate` (plain `--prompt` generation) takes ENGINE_ARGS too and hands over
to `answer_question` when --context is given; `demo` takes DEMO_ARGS and runs `demo`. The modes and KV formats
are the engine's and the ops' own lists.
"""
from __future__ import annotations

import json
import sys
import time

from rapid_engine.engine import MODES
from rapid_engine.ops import KV_DTYPES


def arg(*names, **kwargs):
    """One argparse argument, as cli.arg builds it."""
    return names, kwargs


ENGINE_ARGS = (
    arg("--context", metavar="FILE", help="document to answer questions about (text file); needs --question"),
    arg("--question", help="question about --context"),
    arg("--drafter", metavar="DIR", help="separate drafter model folder (same tokenizer); default: self-speculation"),
    arg("--mode", choices=list(MODES), default="rapid",
        help="rapid (default), sd (eta=0), rag (target on retrieved chunks), lc (target on the whole document)"),
    arg("--kv-dtype", default="bf16", choices=list(KV_DTYPES), help="target KV cache format (default bf16)"),
    arg("--gamma", default="auto", help="draft length, or 'auto' (cost model; default)"),
    arg("--eta", type=float, default=None, help="RAPID shift; default 10 when sampling, 1 when greedy"),
    arg("--retrieval-tokens", type=int, default=None, help="drafter's context budget (default max(4096, L/24))"),
    arg("--strict", action="store_true", help="refuse a document that needs middle truncation"),
    arg("--cache-dir", default=None, help="document/index cache (default $RAPID_CACHE_DIR)"),
    arg("--json", action="store_true", help="print one JSON object (text, token_ids, stats) instead of streaming"),
)


def _gamma(value: str):
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--gamma must be 'auto' or an integer, got {value!r}") from None


def stats_table(rows: dict) -> str:
    """`rows`: mode -> stats. One line per mode: decode tok/s, acceptance, mean accepted, gamma, prefill."""
    head = f"{'mode':<8}{'decode tok/s':>14}{'accept':>9}{'mean acc':>10}{'gamma':>7}{'prefill s':>11}{'tokens':>8}"
    lines = [head, "-" * len(head)]
    for mode, s in rows.items():
        acc = f"{s['acceptance_rate']:.2f}" if s.get("drafted") else "-"
        mean = f"{s['mean_accepted']:.2f}" if s.get("drafted") else "-"
        lines.append(f"{mode:<8}{s['decode_tokens_per_s']:>14.1f}{acc:>9}{mean:>10}{s['gamma']:>7.2f}"
                     f"{s['prefill_s']:>11.2f}{s['generated_tokens']:>8}")
    return "\n".join(lines)


def answer_question(args) -> int:
    """`generate --context FILE --question TEXT`: stream the answer, then a stats table (or --json)."""
    from rapid_engine.engine import RapidEngine

    if not args.question:
        raise ValueError("--context needs --question")
    with open(args.context, encoding="utf-8") as f:
        document = f.read()
    engine = RapidEngine.from_pretrained(args.model, args.drafter, kv_dtype=args.kv_dtype, cache_dir=args.cache_dir,
                                         dtype=getattr(args, "dtype", None))
    kw = dict(mode=args.mode, max_new_tokens=getattr(args, "max_new_tokens", 256),
              temperature=getattr(args, "temperature", 0.0) or 0.0, top_k=getattr(args, "top_k", 0) or 0,
              top_p=getattr(args, "top_p", 1.0) or 1.0, seed=getattr(args, "seed", None), gamma=_gamma(args.gamma),
              eta=args.eta, retrieval_tokens=args.retrieval_tokens, strict=args.strict, progress=None)
    if args.json:
        res = engine.generate(document, args.question, **kw)
        print(json.dumps({"text": res.text, "token_ids": res.token_ids, "finish_reason": res.finish_reason,
                          "stats": res.stats}, default=str))
        return 0
    stream = engine.generate(document, args.question, stream=True, **kw)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    print("\n")
    print(stats_table({args.mode: stream.result.stats}))
    return 0


DEMO_ARGS = (
    arg("--model", default="smollm2", help="smollm2 (default), qwen-coder, or a model folder"),
    arg("--context-file", default=None, help="use this text instead of the King James Bible"),
    arg("--tokens", type=int, default=6000, help="document length in tokens (default 6000)"),
    arg("--max-new-tokens", type=int, default=48),
    arg("--retrieval-tokens", type=int, default=1024,
        help="drafter context budget (default 1024: on a CPU the drafter must read far less than the target)"),
    arg("--kv-dtype", default="bf16", choices=list(KV_DTYPES)),
    arg("--cache-dir", default=None),
)


def demo(args) -> int:
    """Fetch the small model and a long real text, plant a fact, ask about it with lc and rapid."""
    from rapid_engine import assets
    from rapid_engine.engine import RapidEngine
    from rapid_engine.retrieval.needles import FACTS

    path = {"smollm2": assets.smollm2_path, "qwen-coder": assets.qwen_coder_path}.get(args.model)
    engine = RapidEngine.from_pretrained(path() if path else args.model, kv_dtype=args.kv_dtype,
                                         cache_dir=args.cache_dir)
    if args.context_file:
        with open(args.context_file, encoding="utf-8") as f:
            text = f.read()
    else:
        try:
            text = assets.bible_text()
        except assets.AssetError as e:
            if not sys.stdin.isatty():
                raise ValueError(f"could not fetch the demo text ({e}); pass --context-file FILE with a long text")
            path = input(f"could not fetch the demo text ({e}).\nPath to a long text file: ").strip()
            with open(path, encoding="utf-8") as f:
                text = f.read()
    fact, question = FACTS[0]
    document = plant_fact(text, fact, engine.target.tokenizer, args.tokens)
    print(f"document: {args.tokens} tokens of {'your file' if args.context_file else 'the King James Bible'}, "
          f"with one planted sentence:\n  {fact}\nquestion: {question}\n", flush=True)
    results = {}
    for mode in ("lc", "rapid"):
        t0 = time.perf_counter()
        res = engine.generate(document, question, mode=mode, max_new_tokens=args.max_new_tokens, progress=None,
                              retrieval_tokens=args.retrieval_tokens)
        results[mode] = res
        print(f"[{mode}] ({time.perf_counter() - t0:.1f} s) {res.text.strip()}\n", flush=True)
    print(stats_table({m: r.stats for m, r in results.items()}))
    lc, rp = results["lc"].stats, results["rapid"].stats
    print(f"\nrapid decodes {rp['decode_tokens_per_s'] / lc['decode_tokens_per_s']:.2f}x as fast as lc "
          f"(acceptance {rp['acceptance_rate']:.0%}, mean gamma {rp['gamma']:.1f})")
    return 0


def plant_fact(text: str, fact: str, tokenizer, n_tokens: int) -> str:
    """About n_tokens of `text` with `fact` inserted as its own paragraph at the middle paragraph break."""
    if n_tokens < 64:
        raise ValueError(f"--tokens must be at least 64, got {n_tokens}")
    ids = tokenizer.encode(text[: n_tokens * 8], add_special_tokens=False)[:n_tokens]
    body = tokenizer.decode(ids)
    mid = body.find("\n", len(body) // 2)
    mid = len(body) // 2 if mid < 0 else mid
    return f"{body[:mid]}\n{fact}\n{body[mid:]}"
