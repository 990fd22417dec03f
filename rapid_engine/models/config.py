"""ModelConfig: the decoder's shape and RoPE settings, parsed from a Hugging Face `config.json`.

Accepts the field layouts of transformers 4.x (`rope_theta` + `rope_scaling`) and 5.x
(`rope_parameters` holding `rope_theta` and the scaling type). Anything the decoder cannot run
exactly (another architecture, another activation, sliding-window attention) is a ValueError here,
before any weight is read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")

# Keys each rope type needs besides `factor` (checked so a typo fails at load, not mid-forward).
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


@dataclass
class ModelConfig:
    architecture: str  # "LlamaForCausalLM" | "Qwen2ForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Normalised scaling dict with "rope_type" in ROPE_TYPES (None = plain RoPE).
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: always; Llama: `attention_bias`
    o_bias: bool = False  # Llama `attention_bias` also puts a bias on o_proj
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list = field(default_factory=list)

    @property
    def rope_type(self) -> str:
        return self.rope_scaling["rope_type"] if self.rope_scaling else "default"

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_file(cls, path: str, rope_scaling: dict | None = None) -> "ModelConfig":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model config not found: {path} (expected a Hugging Face config.json)")
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw, rope_scaling=rope_scaling, source=path)

    @classmethod
    def from_dict(cls, raw: dict, rope_scaling: dict | None = None, source: str = "config") -> "ModelConfig":
        """Parse a config.json dict. `rope_scaling` overrides the file's scaling (to extend RoPE past the
        trained length), e.g. {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}."""
        archs = raw.get("architectures") or []
        arch = archs[0] if archs else {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(raw.get("model_type"))
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{source}: unsupported architecture {arch or raw.get('model_type')!r}; "
                f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: hidden_act must be 'silu' for {arch}, got {act!r}")
        if arch == "Qwen2ForCausalLM" and raw.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported (full attention only)")

        def need(key):
            if key not in raw:
                raise ValueError(f"{source}: missing required field {key!r}")
            return raw[key]

        hidden, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
        n_kv = int(raw.get("num_key_value_heads") or n_heads)
        head_dim = int(raw.get("head_dim") or hidden // n_heads)
        if n_heads % n_kv:
            raise ValueError(f"{source}: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads ({n_kv})")
        if head_dim % 2:
            raise ValueError(f"{source}: head_dim must be even for RoPE, got {head_dim}")

        theta, scaling = _parse_rope(raw, source)
        if rope_scaling is not None:
            scaling = _normalise_scaling(dict(rope_scaling), raw, "rope_scaling override")
        eos = raw.get("eos_token_id")
        eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
        is_qwen = arch == "Qwen2ForCausalLM"
        attn_bias = bool(raw.get("attention_bias", False))
        return cls(
            architecture=arch,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            # transformers' default differs per class: Qwen2Config ties, LlamaConfig does not.
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", is_qwen)),
            qkv_bias=is_qwen or attn_bias,
            o_bias=(not is_qwen) and attn_bias,
            mlp_bias=(not is_qwen) and bool(raw.get("mlp_bias", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def _parse_rope(raw: dict, source: str):
    """-> (rope_theta, normalised scaling dict or None) from either config layout."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params:  # transformers 5.x
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:  # transformers 4.x
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw.get("rope_scaling") or {})
    return theta, _normalise_scaling(scaling, raw, source)


def _normalise_scaling(scaling: dict, raw: dict, source: str) -> dict | None:
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    if rope_type == "default":
        return None
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{source}: unsupported rope type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    missing = [k for k in _ROPE_REQUIRED[rope_type] if scaling.get(k) is None]
    if missing:
        raise ValueError(f"{source}: rope type {rope_type!r} needs {', '.join(missing)}")
    if "factor" in scaling and not float(scaling["factor"]) >= 1.0:
        raise ValueError(f"{source}: rope factor must be >= 1, got {scaling['factor']}")
    if rope_type in ("yarn", "llama3") and not scaling.get("original_max_position_embeddings"):
        # transformers falls back to max_position_embeddings when the dict omits it
        scaling["original_max_position_embeddings"] = int(raw.get("max_position_embeddings", 2048))
    scaling["rope_type"] = rope_type
    return scaling
