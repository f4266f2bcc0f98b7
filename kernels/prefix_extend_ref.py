"""Plain-torch prefix + extend attention: new tokens over a cached prefix plus themselves."""
from typing import Optional

import torch
import torch.nn.functional as F

from baton.kernels.paged_decode_ref import gather_kv


def prefix_extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_lens: torch.Tensor,
    scale: float,
    max_seqlen_q: Optional[int] = None,
) -> torch.Tensor:
    """Attention for the new tokens of B sequences, flattened into one token dimension.

    q: [Nq, Hq, D]; k, v: [Nq, Hkv, D], the new tokens' K/V (also already in the cache).
    k_cache, v_cache: [num_blocks, block_size, Hkv, D]. block_tables: int32 [B, max_blocks].
    cu_seqlens_q: int32 [B + 1], sequence b's new tokens are rows cu[b]:cu[b + 1].
    prefix_lens: int32 [B], tokens already cached before the new ones (0 = fresh prefill;
    may end mid-block). New token i of sequence b attends to keys 0 .. prefix_lens[b] + i
    (bottom-right causal). The prefix is read from the cache through the block table and the
    new part from k/v. max_seqlen_q is unused here. Returns [Nq, Hq, D] in q's dtype.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    for b, prefix in enumerate(prefix_lens.tolist()):
        start, end = starts[b], starts[b + 1]
        num_new = end - start
        if num_new == 0:
            continue
        keys, values = k[start:end], v[start:end]
        if prefix == 0:
            # A fresh prefill is plain causal attention; is_causal lets SDPA skip the masked
            # half, which beats folding the group with an explicit mask.
            o = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1)[None],  # [1, Hq, n, D]; 4-D for CPU flash
                keys.transpose(0, 1)[None], values.transpose(0, 1)[None],
                is_causal=True, scale=scale, enable_gqa=group > 1,
            )
            out[start:end] = o[0].transpose(0, 1)
            continue
        keys = torch.cat([gather_kv(k_cache, block_tables[b], prefix), keys])
        values = torch.cat([gather_kv(v_cache, block_tables[b], prefix), values])
        total = prefix + num_new
        rows = torch.arange(num_new, device=q.device).unsqueeze(1) + prefix
        mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows  # [n, total], True = attend
        # Fold the GQA group into the query rows (row g * n + i is head g of token i), so the
        # SDPA call sees Hkv heads and needs no K/V repeat (about 25% faster on CPU).
        queries = (q[start:end].view(num_new, num_kv_heads, group, head_dim)
                   .permute(1, 2, 0, 3).reshape(1, num_kv_heads, group * num_new, head_dim))
        o = F.scaled_dot_product_attention(
            queries, keys.transpose(0, 1)[None], values.transpose(0, 1)[None],
            attn_mask=mask.repeat(group, 1), scale=scale,
        )  # [1, Hkv, G * n, D]
        out[start:end] = o.view(num_kv_heads, group, num_new, head_dim).permute(2, 0, 1, 3).reshape(
            num_new, num_heads, head_dim)
    return out
