"""Simulated inputs for the latency sweeps: a processor directory, random images of an exact
visual-token count, and random text prompts of an exact length.

Random weights make the content irrelevant to timing; what matters is that every image and
prompt is new (distinct pixels and ids), so neither the encoder cache nor the prefix cache
serves a measurement that is meant to compute.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# One merged visual token covers (patch 16 * merge 2)^2 = 32x32 pixels.
PIXELS_PER_TOKEN_SIDE = 32
MAX_VISUAL_TOKENS = 16384


def processor_dir(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A directory the engine's Processor accepts: the synthetic tokenizer files plus a
    preprocessor_config.json whose pixel bounds admit 4 .. MAX_VISUAL_TOKENS visual tokens,
    so an image of side s*32 pixels is never resized (s*s tokens exactly)."""
    from baton.models.synthetic import ensure_checkpoint, preprocessor_config

    out = Path(root)
    marker = out / "preprocessor_config.json"
    if marker.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tiny = ensure_checkpoint("tiny", cache_dir)
    for f in tiny.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config", "preprocessor", "baton_")):
            shutil.copy2(f, out / f.name)
    px = PIXELS_PER_TOKEN_SIDE**2
    cfg = preprocessor_config(min_pixels=4 * px, max_pixels=MAX_VISUAL_TOKENS * px)
    marker.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


class Workload:
    """Draws fresh prompts and images from one seeded generator."""

    def __init__(self, processor, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        special = set(processor.tokenizer.all_special_ids)
        special |= {processor.image_token_id, processor.video_token_id,
                    processor.vision_start_token_id, processor.vision_end_token_id}
        vocab = len(processor.tokenizer)
        self.text_ids = np.array([i for i in range(vocab) if i not in special])
        self.vision_start = processor.vision_start_token_id
        self.image_pad = processor.image_token_id
        self.vision_end = processor.vision_end_token_id

    def text(self, n: int) -> list[int]:
        return [int(t) for t in self.rng.choice(self.text_ids, size=n)]

    def image(self, visual_tokens: int) -> np.ndarray:
        """HxWx3 uint8 noise of a square image giving exactly `visual_tokens` merged tokens."""
        side = round(visual_tokens**0.5)
        if side * side != visual_tokens or not 4 <= visual_tokens <= MAX_VISUAL_TOKENS:
            raise ValueError(f"visual_tokens must be a square number in [4, {MAX_VISUAL_TOKENS}], got {visual_tokens}")
        px = side * PIXELS_PER_TOKEN_SIDE
        return self.rng.integers(0, 256, size=(px, px, 3), dtype=np.uint8)

    def text_prompt(self, n: int) -> dict:
        return {"prompt_token_ids": self.text(n)}

    def image_prompt(self, visual_tokens: int, text_tokens: int) -> dict:
        """A few text tokens (so no two prompts share a first block), the image, the rest of the
        text: text_tokens + visual_tokens + 2 prompt tokens in all."""
        head = min(4, text_tokens)
        ids = self.text(head) + [self.vision_start, self.image_pad, self.vision_end] + self.text(text_tokens - head)
        return {"prompt_token_ids": ids, "images": [self.image(visual_tokens)]}
