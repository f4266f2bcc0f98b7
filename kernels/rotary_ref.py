"""Plain-torch multimodal rotary embedding (Qwen3-VL interleaved M-RoPE)."""
import functools
from typing import Sequence

import torch


def mrope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: Sequence[int]
):
    """cos and sin tables for interleaved M-RoPE, each float32 [N, D/2].

    positions: int64 [3, N] (temporal, height, width) or [N] (text: one position for all
    three). inv_freq: float32 [D/2]. Frequency j takes the height position if j % 3 == 1 and
    j < 3 * mrope_section[1], the width position if j % 3 == 2 and j < 3 * mrope_section[2],
    else the temporal one (Qwen3-VL's layout; Qwen2-VL's chunked layout is different).
    """
    inv_freq = inv_freq.float()
    if positions.dim() == 1:
        freqs = positions.unsqueeze(-1).float() * inv_freq
    else:
        half = inv_freq.shape[0]
        if positions.device.type == "cpu":  # the same few ops every decode step: computed once
            axis = _cpu_axis(half, tuple(mrope_section))
        else:  # built each call, so a captured CUDA graph never holds a cached tensor
            axis = _axis(half, mrope_section, positions.device)
        # Only the chosen axis per frequency is needed: gather positions, then multiply.
        chosen = positions.index_select(0, axis)  # [D/2, N]
        freqs = (chosen.t().float() * inv_freq).contiguous()
    return freqs.cos(), freqs.sin()


def _axis(half: int, mrope_section: Sequence[int], device) -> torch.Tensor:
    """Which position row (0 temporal, 1 height, 2 width) each of the D/2 frequencies takes."""
    j = torch.arange(half, device=device)
    # torch.where, not boolean-mask assignment, which can sync with the host (nonzero): a
    # captured CUDA graph cannot
    axis = torch.where((j % 3 == 1) & (j < 3 * mrope_section[1]), 1, 0)
    return torch.where((j % 3 == 2) & (j < 3 * mrope_section[2]), 2, axis)


@functools.lru_cache(maxsize=16)
def _cpu_axis(half: int, mrope_section: tuple[int, ...]) -> torch.Tensor:
    return _axis(half, mrope_section, "cpu")


def apply_rotary_(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    """Rotate q and k in place (rotate-half convention), computing in float32.

    q: [N, Hq, D]; k: [N, Hkv, D]; either may be a strided view (e.g. of a fused qkv buffer)
    as long as the last dimension is contiguous. cos, sin: float32 [N, D/2].
    With x1, x2 the two halves of D: out1 = x1*cos - x2*sin, out2 = x2*cos + x1*sin.
    """
    c = cos.unsqueeze(1)
    s = sin.unsqueeze(1)
    for x in (q, k):
        half = x.shape[-1] // 2
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        x.copy_(rotated)
