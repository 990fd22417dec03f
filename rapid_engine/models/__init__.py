"""Model runtime: config parsing, the Llama/Qwen2 decoder, safetensors loading, the tokenizer."""
from rapid_engine.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from rapid_engine.models.llama import Model
from rapid_engine.models.loader import load_model
from rapid_engine.models.tokenizer import Tokenizer

__all__ = ["Model", "ModelConfig", "SUPPORTED_ARCHITECTURES", "Tokenizer", "load_model"]
