"""Small helpers shared by the Triton kernels (launch-side Python only, no kernels)."""
import os

import torch
import triton


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1).

    The interpreter computes bf16 arithmetic and bf16 `tl.dot` wrongly, so kernels take an
    UPCAST constexpr and convert loaded tiles to float32 when this is set.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact fp32 for fp32 models (tf32 would cost ~1e-3 accuracy);
    irrelevant for 16-bit inputs, which use the tensor cores natively."""
    return "ieee" if dtype == torch.float32 else "tf32"
