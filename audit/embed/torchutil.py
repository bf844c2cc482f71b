"""Small torch helpers shared by the embedder backends (imports torch only when called)."""
from __future__ import annotations

import time
from typing import Callable


def choose_autocast(precision: str, device: str, forward: Callable, x) -> bool:
    """bf16 autocast where it is faster: asked for explicitly, always on CUDA, on CPU only if a timed trial of
    ``forward(x)`` says bf16 beats fp32 by 10% (on many CPUs without bf16 units it is several times slower)."""
    import torch

    if precision in ("fp32", "bf16"):
        return precision == "bf16"
    if device.startswith("cuda"):
        return True
    times = {}
    for use in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use):
            forward(x)  # warm-up
            t = time.perf_counter()
            forward(x)
            times[use] = time.perf_counter() - t
    return times[True] < 0.9 * times[False]


def autocast(device: str, enabled: bool):
    import torch

    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=enabled)
