"""rapid_engine: RAPID (retrieval-augmented speculative decoding) for questions over long documents.

Public API only; docs/DESIGN.md maps which file does what.

    import rapid_engine
    engine = rapid_engine.RapidEngine.from_pretrained("path/to/model")
    result = engine.generate(long_text, "Who built the lighthouse?", mode="rapid")
"""
from rapid_engine._ext import backends
from rapid_engine import ops
from rapid_engine.kv_cache import KVCache
from rapid_engine.models import Model, ModelConfig, Tokenizer, load_model
from rapid_engine.generation import GenerationResult
from rapid_engine.engine import RapidEngine

__version__ = "0.1.0"

__all__ = ["GenerationResult", "KVCache", "Model", "ModelConfig", "RapidEngine", "Tokenizer", "backends",
           "load_model", "ops", "__version__"]
