"""Plain-torch SiLU-and-mul (the gated MLP activation)."""
import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 2I] -> silu(x[:, :I]) * x[:, I:], [N, I] in x's dtype (as HF's MLP rounds it)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
