"""Attention over the paged KV cache, and the per-step metadata every layer reads.

The runner orders a step's tokens as [prefill/extend tokens of P sequences | one decode token
for each of D sequences] and builds one AttentionMetadata for the whole forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttentionMetadata:
    """Shapes: N tokens this step, P extending sequences, D decoding sequences.

    slot_mapping        int64 [N]     cache slot of each token (block * block_size + offset); < 0 skips
    num_prefill_tokens  int           tokens [0, num_prefill_tokens) belong to extending sequences
    cu_seqlens_q        int32 [P+1]   cumulative new-token counts of the extending sequences
    prefix_lens         int32 [P]     tokens already cached before each extending sequence's new ones
    prefill_block_tables int32 [P, M]
    max_seqlen_q        int           longest extend in this step
    context_lens        int32 [D]     keys of each decoding sequence, its current token included
    decode_block_tables int32 [D, M]
    """

    slot_mapping: torch.Tensor
    num_prefill_tokens: int
    cu_seqlens_q: torch.Tensor | None = None
    prefix_lens: torch.Tensor | None = None
    prefill_block_tables: torch.Tensor | None = None
    max_seqlen_q: int = 0
    context_lens: torch.Tensor | None = None
    decode_block_tables: torch.Tensor | None = None

    @property
    def num_decode_tokens(self) -> int:
        return 0 if self.context_lens is None else int(self.context_lens.shape[0])


class PagedAttention(nn.Module):
    """Stores this step's K/V into the layer's cache, then attends through the block tables."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, ops, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.ops = ops

    def forward(self, q, k, v, kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata):
        """q [N, H, D], k/v [N, Hkv, D] -> [N, H, D]."""
        k_cache, v_cache = kv_cache
        self.ops.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        p = meta.num_prefill_tokens
        if meta.num_decode_tokens == 0:
            return self.ops.prefix_extend_attention(
                q, k, v, k_cache, v_cache, meta.prefill_block_tables, meta.cu_seqlens_q,
                meta.prefix_lens, self.scale, meta.max_seqlen_q,
            )
        if p == 0:
            return self.ops.paged_decode_attention(
                q, k_cache, v_cache, meta.decode_block_tables, meta.context_lens, self.scale
            )
        out = torch.empty_like(q)
        out[:p] = self.ops.prefix_extend_attention(
            q[:p], k[:p], v[:p], k_cache, v_cache, meta.prefill_block_tables, meta.cu_seqlens_q,
            meta.prefix_lens, self.scale, meta.max_seqlen_q,
        )
        out[p:] = self.ops.paged_decode_attention(
            q[p:], k_cache, v_cache, meta.decode_block_tables, meta.context_lens, self.scale
        )
        return out
