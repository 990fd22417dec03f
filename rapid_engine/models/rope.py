"""Rotary position embeddings (the "rotate half" convention of Llama/Qwen2 checkpoints).

Frequencies follow the RoPE scaling types of Hugging Face configs: default, linear (position
interpolation), dynamic (NTK base stretched with the sequence length), yarn (per-band interpolation
plus an attention temperature on cos/sin) and llama3 (per-band smooth interpolation).
For every type but `dynamic` the cos/sin table depends only on the absolute position, so it is built
once (grown by doubling) and sliced: a token gets bit-identical rotations however the sequence is
chunked. `dynamic` depends on the current sequence length and is recomputed per call.
"""
from __future__ import annotations

import math

import torch

from rapid_engine.models.config import ModelConfig


def inv_frequencies(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """-> (inverse frequencies float32 [head_dim/2], cos/sin multiplier). `seq_len` matters for `dynamic` only."""
    dim, base = cfg.head_dim, cfg.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # [D/2]
    inv_freq = 1.0 / (base ** exponents)
    sc, rope_type = cfg.rope_scaling or {}, cfg.rope_type
    if rope_type == "default":
        return inv_freq, 1.0
    factor = float(sc["factor"])
    if rope_type == "linear":
        return inv_freq / factor, 1.0
    if rope_type == "dynamic":
        max_pos = cfg.max_position_embeddings
        seq_len = max(seq_len or max_pos, max_pos)
        stretched = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (stretched ** exponents), 1.0
    if rope_type == "llama3":
        return _llama3(inv_freq, sc, factor), 1.0
    if rope_type == "yarn":
        return _yarn(exponents, base, dim, sc, factor)
    raise ValueError(f"unsupported rope type {rope_type!r}")


def _llama3(inv_freq: torch.Tensor, sc: dict, factor: float) -> torch.Tensor:
    old_len = sc["original_max_position_embeddings"]
    low, high = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (beyond the trained context) are interpolated by `factor`, short ones are kept,
    # and the band between blends the two linearly in old_len / wavelen.
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


def _yarn(exponents, base, dim, sc: dict, factor: float) -> tuple[torch.Tensor, float]:
    orig_len = sc["original_max_position_embeddings"]

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = sc.get("attention_factor")
    if attn is None:
        m, m_all = sc.get("mscale"), sc.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)
    beta_fast, beta_slow = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1

    def band_dim(rotations):  # dimension index whose wavelength turns `rotations` times over orig_len
        return dim * math.log(orig_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = band_dim(beta_fast), band_dim(beta_slow)
    if sc.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    keep = 1 - ramp  # 1 = extrapolate (high frequency, kept), 0 = interpolate by `factor`
    freqs = base ** exponents
    inv_freq = (1.0 / (factor * freqs)) * (1 - keep) + (1.0 / freqs) * keep
    return inv_freq, float(attn)


class RotaryEmbedding:
    """cos/sin tables [positions, head_dim/2] and their application to [B, T, heads, D] tensors."""

    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.dynamic = cfg.rope_type == "dynamic"
        self._cos = self._sin = None  # [L, D/2] in `dtype`, positions 0..L-1

    def _table(self, positions: torch.Tensor, seq_len: int | None):
        inv_freq, attn_scale = inv_frequencies(self.cfg, seq_len)
        angles = torch.outer(positions.float(), inv_freq)  # [L, D/2], fp32 like the reference models
        cos, sin = angles.cos() * attn_scale, angles.sin() * attn_scale
        return cos.to(self.device, self.dtype), sin.to(self.device, self.dtype)

    def cos_sin(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions start .. start+length-1, each [length, D/2]."""
        end = start + length
        if self.dynamic:
            return self._table(torch.arange(start, end), seq_len=end)
        if self._cos is None or self._cos.shape[0] < end:
            size = max(end, 2 * (0 if self._cos is None else self._cos.shape[0]), 256)
            self._cos, self._sin = self._table(torch.arange(size), seq_len=None)
        return self._cos[start:end], self._sin[start:end]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, heads, D] -> rotated copy. Pairs element i with i + D/2 ("rotate half")."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        c, s = cos[:, None, :], sin[:, None, :]  # [T, 1, D/2] broadcast over heads
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
