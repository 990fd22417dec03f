"""rapid_engine: RAPID (retrieval-augmented speculative decoding) for questions over long documents.

Public API only; see README "Architecture" for which file does what.
"""
from rapid_engine._ext import backends
from rapid_engine import ops

__version__ = "0.1.0"

__all__ = ["backends", "ops", "__version__"]
