"""Small helpers shared by the Triton kernels: launch-side Python and one shared jit tile loader."""
import os

import torch
import triton
import triton.language as tl


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


def rows_per_program(row_elements: int, num_rows: int) -> int:
    """How many rows one program of a row-wise kernel handles (a power of two).

    On a GPU a program gets a few thousand elements. The interpreter runs programs one at a
    time with a fixed cost each, so there a program takes many rows at once.
    """
    budget = (1 << 16) if interpreting() else 4096
    return min(max(1, budget // next_pow2(row_elements)), next_pow2(num_rows))


@triton.jit
def load_paged_kv(k_cache_ptr, v_cache_ptr, table_ptr, pos, n_mask, d, d_mask, kv_head,
                  stride_cb, stride_cs, stride_ch, BLOCK_SIZE: tl.constexpr, UPCAST: tl.constexpr):
    """K and V tiles [len(pos), len(d)] of one KV head for token positions `pos` of a sequence,
    read through its block table (`table_ptr` points at the sequence's row); masked rows are 0.
    UPCAST widens to fp32 (the interpreter computes bf16 wrongly)."""
    block_ids = tl.load(table_ptr + pos // BLOCK_SIZE, mask=n_mask, other=0)
    rows = block_ids.to(tl.int64) * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v
