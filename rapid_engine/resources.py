"""Checks the engine makes before it commits memory or pairs two models."""
from __future__ import annotations

import os

import torch


def available_memory(device) -> int:
    """Bytes that can still be allocated on `device`: free GPU memory, or the OS's MemAvailable for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems: free physical pages (pessimistic: ignores reclaimable page cache)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # cannot tell: do not refuse


def check_tokenizers_match(target_tok, drafter_tok) -> None:
    """A separate drafter must tokenize exactly like the target: drafts are verified id by id.
    Raises ValueError naming how the vocabularies differ."""
    a = target_tok.tokenizer.get_vocab(with_added_tokens=True)
    b = drafter_tok.tokenizer.get_vocab(with_added_tokens=True)
    if a == b:
        return
    only_t = sorted(set(a) - set(b))[:3]
    only_d = sorted(set(b) - set(a))[:3]
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])[:3]
    raise ValueError(
        f"the drafter's tokenizer differs from the target's ({len(a)} vs {len(b)} tokens; only in target: "
        f"{only_t}, only in drafter: {only_d}, different ids: {moved}); speculative decoding needs the same "
        f"vocabulary: pick a drafter from the same model family")
