"""Qwen3-VL dense: vision tower + text decoder + LM head, and how checkpoint tensors map
onto our (partly fused) parameters."""
from __future__ import annotations

import torch
from torch import nn

from baton.models.attention import AttentionMetadata
from baton.models.config import ModelConfig
from baton.models.ops_linear import OpsLinear
from baton.models.qwen3_vl_text import TextDecoder
from baton.models.qwen3_vl_vision import VisionTower


class Qwen3VL(nn.Module):
    # checkpoint sub-name -> (our fused parameter sub-name, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # checkpoint prefix -> ours (hub layout first; older text-only layouts after)
    prefix_map = (
        ("model.visual.", "visual."),
        ("model.language_model.", "language_model."),
        ("visual.", "visual."),
        ("model.", "language_model."),
        ("lm_head.", "lm_head."),
    )

    def __init__(self, cfg: ModelConfig, ops):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg.vision, ops)
        self.language_model = TextDecoder(cfg.text, ops)
        self.lm_head = OpsLinear(cfg.text.hidden_size, cfg.text.vocab_size, ops)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight

    def shard_layout(self) -> dict[str, dict]:
        """Rows of each fused parameter that a checkpoint shard fills: {fused: {shard: (offset, rows)}}."""
        t = self.cfg.text
        q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
        inter = t.intermediate_size
        return {
            "qkv_proj": {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)},
            "gate_up_proj": {0: (0, inter), 1: (inter, inter)},
        }

    # stored as a Conv3d [E, C, T, P, P] in checkpoints; ours is the equivalent Linear
    reshaped_params = ("visual.patch_embed.proj.weight",)

    @torch.no_grad()
    def encode_images(self, pixel_patches: torch.Tensor, grids: list[tuple[int, int, int]]):
        """-> (embeds [tokens, hidden], deepstack list of [tokens, hidden]) for the images in order."""
        return self.visual(pixel_patches, grids)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        visual_index: torch.Tensor | None = None,
        visual_embeds: torch.Tensor | None = None,
        deepstack: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """input_ids int64 [N], positions int64 [3, N]. Visual rows (visual_index [M]) take
        visual_embeds [M, hidden] instead of their token embedding. Returns hidden [N, hidden]."""
        embeds = self.language_model.embed_tokens(input_ids)
        if visual_index is not None and visual_index.numel():
            embeds[visual_index] = visual_embeds.to(embeds.dtype)
        else:
            deepstack = None
        return self.language_model(embeds, positions, kv_caches, meta, visual_index, deepstack)

    @torch.no_grad()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> float32 logits [B, vocab]."""
        return self.lm_head(hidden).float()
