"""Qwen3-VL text decoder: Qwen3 layers (RMSNorm, QK-norm, GQA, SwiGLU) with interleaved
multimodal rotary positions, and deepstack visual features added after the first layers.

q/k/v and gate/up are fused projections; the loader fills them from the checkpoint's
separate tensors (see Qwen3VL.packed_modules).
"""
from __future__ import annotations

import torch
from torch import nn

from baton.models.attention import AttentionMetadata, PagedAttention
from baton.models.config import TextConfig, rope_inv_freq
from baton.models.native_decode import NativeDecode
from baton.models.ops_linear import OpsLinear


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ops):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.ops = ops

    def forward(self, x, residual=None):
        return self.ops.rms_norm(x, self.weight, self.eps, residual)


class TextAttention(nn.Module):
    def __init__(self, cfg: TextConfig, ops, layer_idx: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = OpsLinear(cfg.hidden_size, self.q_size + 2 * self.kv_size, ops, bias=cfg.attention_bias)
        self.o_proj = OpsLinear(self.q_size, cfg.hidden_size, ops, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, ops)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, ops)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, ops, layer_idx)
        self.ops = ops

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata):
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.reshape(n * self.num_heads, self.head_dim)).view(n, self.num_heads, self.head_dim)
        k = self.k_norm(k.reshape(n * self.num_kv_heads, self.head_dim)).view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        self.ops.apply_rotary_(q, k, cos, sin)
        out = self.attn(q, k, v, kv_cache, meta)
        return self.o_proj(out.reshape(n, self.q_size))


class TextMLP(nn.Module):
    def __init__(self, cfg: TextConfig, ops):
        super().__init__()
        self.gate_up_proj = OpsLinear(cfg.hidden_size, 2 * cfg.intermediate_size, ops)
        self.down_proj = OpsLinear(cfg.intermediate_size, cfg.hidden_size, ops)
        self.ops = ops

    def forward(self, x):
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, ops, layer_idx: int):
        super().__init__()
        self.self_attn = TextAttention(cfg, ops, layer_idx)
        self.mlp = TextMLP(cfg, ops)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)

    def forward(self, x, residual, cos, sin, kv_cache, meta):
        """Residual adds are deferred into the next norm (fused add + RMSNorm)."""
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, cos, sin, kv_cache, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class TextDecoder(nn.Module):
    def __init__(self, cfg: TextConfig, ops):
        super().__init__()
        self.cfg = cfg
        self.ops = ops
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        # a buffer, so it lives on the model's device: no host->device copy per forward (which
        # a captured CUDA graph cannot hold); non-persistent, so checkpoints never carry it
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.native_decode = NativeDecode(self)

    def reset_buffers(self) -> None:
        """Recomputes buffers derived from the config (models.factory calls it after to_empty,
        which leaves them uninitialised)."""
        self.inv_freq.copy_(rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta))

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        visual_index: torch.Tensor | None = None,
        deepstack: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """embeds [N, hidden]; positions int64 [3, N]; visual_index int64 [M] rows of this step's
        visual tokens and deepstack[i] [M, hidden] their features for layer i. Returns [N, hidden]."""
        cos, sin = self.ops.mrope_cos_sin(positions, self.inv_freq, self.cfg.mrope_section)
        if self.native_decode.applies(embeds, cos, meta, kv_caches, visual_index):
            x, residual = self.native_decode(embeds, cos, sin, kv_caches, meta)
            x, _ = self.norm(x, residual)
            return x
        x, residual = embeds, None
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, residual, cos, sin, kv_caches[i], meta)
            if deepstack is not None and i < len(deepstack):
                # hidden = x + residual after this layer; adding into residual keeps the add deferred
                residual = residual.index_add(0, visual_index, deepstack[i].to(residual.dtype))
        x, _ = self.norm(x, residual)
        return x
