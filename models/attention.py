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
    captures: list["AttentionCapture"] | None = None
    capture_layer: int = -1

    @property
    def num_decode_tokens(self) -> int:
        return 0 if self.context_lens is None else int(self.context_lens.shape[0])


@dataclass
class AttentionCapture:
    """Attention probabilities of some query rows of this step onto a key span, summed over
    heads and queries (the 'attention' reasoning-token selector reads them).

    rows [row_start, row_end) of this step are the sequence's tokens [pos_start, ...); keys
    [key_start, key_end) are read through block_table; each row attends to keys 0..its position.
    """

    row_start: int
    row_end: int
    pos_start: int
    key_start: int
    key_end: int
    block_table: torch.Tensor  # int32 [blocks]
    scores: torch.Tensor | None = None  # float32 [key_end - key_start], filled by the layer


def capture_attention(q, k_cache, v_cache, cap: AttentionCapture, scale: float) -> torch.Tensor:
    """Plain-torch probabilities of q rows [n, H, D] over their full causal context, reduced to
    the key span. Only used for the few probe rows, so clarity wins over speed."""
    n, num_heads, _ = q.shape
    ctx = cap.pos_start + n
    block_size = k_cache.shape[1]
    blocks = cap.block_table[: (ctx + block_size - 1) // block_size].long()
    keys = k_cache.index_select(0, blocks).flatten(0, 1)[:ctx]  # [ctx, Hkv, D]
    group = num_heads // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1).float()
    logits = torch.einsum("qhd,khd->hqk", q.float(), keys) * scale
    pos = torch.arange(cap.pos_start, ctx, device=q.device)[:, None]
    logits = logits.masked_fill(torch.arange(ctx, device=q.device)[None, :] > pos, float("-inf"))
    probs = logits.softmax(dim=-1)[:, :, cap.key_start:cap.key_end]
    from baton.kernels import attention_scores

    return attention_scores(probs.contiguous(), reduce="sum")


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
        if meta.captures and self.layer_idx == meta.capture_layer:
            for cap in meta.captures:
                cap.scores = capture_attention(q[cap.row_start:cap.row_end], k_cache, v_cache, cap, self.scale)
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
