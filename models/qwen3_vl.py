"""Qwen3-VL dense: vision tower + text decoder + LM head, and how checkpoint tensors map
onto our (partly fused) parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from baton.models.config import ModelConfig
from baton.models.interface import StepInputs
from baton.models.ops_linear import OpsLinear
from baton.models.qwen3_vl_text import TextDecoder
from baton.models.qwen3_vl_vision import VisionTower
from baton.models.registry import register_model


@dataclass(frozen=True)
class Qwen3VLVisualFeatures:
    """One image's vision output (models.interface.VisualFeatures), T visual tokens.

    embeds: [T, hidden] replace the image pad tokens' embeddings; deepstack: one [T, hidden]
    per deepstack level i, added to the residual stream after decoder layer i. Model dtype.
    """

    embeds: torch.Tensor
    deepstack: tuple[torch.Tensor, ...]

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.embeds, *self.deepstack))

    def rows(self, start: int, end: int) -> "Qwen3VLVisualFeatures":
        return Qwen3VLVisualFeatures(self.embeds[start:end], tuple(d[start:end] for d in self.deepstack))


@register_model("qwen3_vl")
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

    def parameter_groups(self) -> dict[str, nn.Module]:
        """Modules the cost model counts apart: embedding, decoder layers, final norm, LM head
        (shares the embedding's weight when tied) and the vision tower."""
        lm = self.language_model
        return {"embedding": lm.embed_tokens, "layers": lm.layers, "final_norm": lm.norm,
                "lm_head": self.lm_head, "vision": self.visual}

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor,
                      grids: Sequence[tuple[int, int, int]]) -> list[Qwen3VLVisualFeatures]:
        """pixel_values [num_patches, patch_dim] of the images in order, grids their (t, h, w).
        Returns one Qwen3VLVisualFeatures per image (t*h*w / merge^2 tokens each)."""
        embeds, deepstack = self.visual(pixel_values, list(grids))
        merge = self.cfg.vision.spatial_merge_size ** 2
        sizes = [t * h * w // merge for t, h, w in grids]
        levels = [d.split(sizes) for d in deepstack]
        return [Qwen3VLVisualFeatures(e, tuple(level[i] for level in levels))
                for i, e in enumerate(embeds.split(sizes))]

    @torch.no_grad()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Visual rows take their features' embeds instead of the token embedding, and get the
        deepstack features added after the first layers. Returns hidden [N, hidden]."""
        embeds = self.language_model.embed_tokens(inputs.input_ids)
        rows, deepstack = inputs.visual_rows, None
        if rows is not None and rows.numel():
            feats = inputs.visual
            embeds[rows] = torch.cat([f.embeds for f in feats]).to(embeds.dtype)
            deepstack = [torch.cat([f.deepstack[i] for f in feats]) for i in range(len(feats[0].deepstack))]
        return self.language_model(embeds, inputs.positions, inputs.kv_caches, inputs.attn, rows, deepstack)

    @torch.no_grad()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> float32 logits [B, vocab]."""
        return self.lm_head(hidden).float()
