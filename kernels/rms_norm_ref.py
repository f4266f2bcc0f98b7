"""Plain-torch RMSNorm with an optional fused residual add (Qwen3 semantics)."""
from typing import Optional

import torch


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: Optional[torch.Tensor] = None,
):
    """RMSNorm over the last dimension, matching Hugging Face's Qwen3 RMSNorm bit for bit.

    x: [N, H]; weight: [H]. The statistics are computed in float32 and the normalised value is
    rounded to x's dtype before the weight multiply:
    ``weight * (x_f32 * rsqrt(mean(x_f32 ** 2) + eps)).to(x.dtype)``.
    Without residual returns out. With residual ([N, H], x's dtype) returns
    ``(out, new_residual)`` where new_residual = x + residual (kept in x's dtype) and out is
    the norm of new_residual.
    """
    if residual is not None:
        x = x + residual
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    out = weight * (xf * torch.rsqrt(variance + eps)).to(x.dtype)
    return out if residual is None else (out, x)
