"""Qwen3-VL vision tower: patch embedding, interpolated learned positions, 2-D rotary,
ViT blocks, the patch merger and the deepstack mergers.

Input is what the Hugging Face image processor emits: flattened patches
[num_patches, C*T*P*P] in spatial-merge-block order, plus each image's (t, h, w) grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baton.models.config import VisionConfig, rope_inv_freq
from baton.models.ops_linear import OpsLinear


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, ops):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = OpsLinear(cfg.hidden_size, 3 * cfg.hidden_size, ops, bias=True)
        self.proj = OpsLinear(cfg.hidden_size, cfg.hidden_size, ops, bias=True)
        self.ops = ops

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.qkv(x).view(n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        self.ops.apply_rotary_(q, k, cos, sin)
        out = torch.empty(n, self.num_heads, self.head_dim, dtype=x.dtype, device=x.device)
        start = 0
        for length in seqlens:  # images attend only within themselves (frame by frame)
            sl = slice(start, start + length)
            # 4-D [1, H, n, D]: on CPU the 3-D form misses the fused flash kernel and materialises
            # every n x n score matrix (3.4x slower at 4096 patches)
            out[sl] = F.scaled_dot_product_attention(
                q[sl].transpose(0, 1)[None], k[sl].transpose(0, 1)[None], v[sl].transpose(0, 1)[None]
            )[0].transpose(0, 1)
            start += length
        return self.proj(out.view(n, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig, ops):
        super().__init__()
        self.linear_fc1 = OpsLinear(cfg.hidden_size, cfg.intermediate_size, ops, bias=True)
        self.linear_fc2 = OpsLinear(cfg.intermediate_size, cfg.hidden_size, ops, bias=True)
        self.approximate = "tanh" if cfg.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate=self.approximate))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, ops):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.attn = VisionAttention(cfg, ops)
        self.mlp = VisionMLP(cfg, ops)

    def forward(self, x, cos, sin, seqlens):
        x = x + self.attn(self.norm1(x), cos, sin, seqlens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Concatenates each 2x2 (merge_size^2) block of patches and projects to the text width.

    The main merger normalises each patch before concatenation; the deepstack mergers
    normalise the concatenated vector (`postshuffle_norm`).
    """

    def __init__(self, cfg: VisionConfig, postshuffle_norm: bool, ops):
        super().__init__()
        self.merged_size = cfg.hidden_size * cfg.spatial_merge_size**2
        self.postshuffle_norm = postshuffle_norm
        self.norm = nn.LayerNorm(self.merged_size if postshuffle_norm else cfg.hidden_size, eps=1e-6)
        self.linear_fc1 = OpsLinear(self.merged_size, self.merged_size, ops, bias=True)
        self.linear_fc2 = OpsLinear(self.merged_size, cfg.out_hidden_size, ops, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postshuffle_norm:
            x = self.norm(x.view(-1, self.merged_size))
        else:
            x = self.norm(x).view(-1, self.merged_size)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class PatchEmbed(nn.Module):
    """The checkpoint's Conv3d with kernel == stride is a linear map of a flattened patch;
    stored here as a Linear over [C*T*P*P] (the loader reshapes the conv weight)."""

    def __init__(self, cfg: VisionConfig, ops):
        super().__init__()
        self.proj = OpsLinear(cfg.patch_dim, cfg.hidden_size, ops, bias=True)

    def forward(self, pixel_patches: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_patches.to(self.proj.weight.dtype))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, ops):
        super().__init__()
        self.cfg = cfg
        self.ops = ops
        self.patch_embed = PatchEmbed(cfg, ops)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.grid_side = int(cfg.num_position_embeddings**0.5)
        self.blocks = nn.ModuleList(VisionBlock(cfg, ops) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, postshuffle_norm=False, ops=ops)
        self.deepstack_merger_list = nn.ModuleList(
            PatchMerger(cfg, postshuffle_norm=True, ops=ops) for _ in cfg.deepstack_visual_indexes
        )
        # a plain CPU tensor, not a buffer: the model may be built on the meta device
        rot_dim = cfg.head_dim // 2
        self.inv_freq = rope_inv_freq(rot_dim, cfg.rope_theta)

    def _merge_order(self, grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[h, w, ...] raster grid -> [h*w, ...] in spatial-merge-block order."""
        m = self.cfg.spatial_merge_size
        rest = grid.shape[2:]
        g = grid.reshape(h // m, m, w // m, m, *rest).transpose(1, 2)
        return g.reshape(h * w, *rest)

    def _positions(self, grids: list[tuple[int, int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Learned position embeddings (bilinear, align_corners) and rotary (h, w) ids per patch."""
        side = self.grid_side
        table = self.pos_embed.weight.float().view(side, side, -1).permute(2, 0, 1).unsqueeze(0)
        pos, ids = [], []
        for t, h, w in grids:
            resized = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0]
            pos.append(self._merge_order(resized.permute(1, 2, 0), h, w).repeat(t, 1))
            hh, ww = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            hw = self._merge_order(torch.stack([hh, ww], dim=-1), h, w)
            ids.append(hw.repeat(t, 1))
        return torch.cat(pos), torch.cat(ids)

    def forward(self, pixel_patches: torch.Tensor, grids: list[tuple[int, int, int]]):
        """pixel_patches [P, C*T*p*p], grids [(t, h, w)] per image.

        Returns (embeds [P / merge^2, out_hidden], [deepstack features, same shape] per deepstack layer).
        """
        x = self.patch_embed(pixel_patches)
        pos, ids = self._positions(grids, x.device)
        x = x + pos.to(x.dtype)
        freqs = ids.float()[..., None] * self.inv_freq.to(x.device)  # [P, 2, rot_dim/2]
        freqs = freqs.flatten(1)  # [h freqs | w freqs] -> half of head_dim
        cos, sin = freqs.cos(), freqs.sin()
        seqlens = [h * w for t, h, w in grids for _ in range(t)]
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, seqlens)
            if i in self.cfg.deepstack_visual_indexes:
                j = self.cfg.deepstack_visual_indexes.index(i)
                deepstack.append(self.deepstack_merger_list[j](x))
        return self.merger(x), deepstack
