"""Predicted latency of each component, and end to end, for one model on one device:
the cost model's FLOPs and bytes turned into seconds by a TimeModel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baton.engine.analysis import cost_model as cm
from baton.engine.analysis.calibration import TimeModel
from baton.models.config import ModelConfig


@dataclass(frozen=True)
class Breakdown:
    """Seconds per component of one request (batch of identical requests for decode)."""

    vision: float
    prefill: float
    decode: float

    @property
    def total(self) -> float:
        return self.vision + self.prefill + self.decode


class LatencyPredictor:
    def __init__(self, name: str, cfg: ModelConfig, dtype_bytes: int, time_model: TimeModel):
        self.name = name
        self.cfg = cfg
        self.dtype_bytes = dtype_bytes
        self.time_model = time_model

    def prompt_len(self, visual_tokens: int, text_tokens: int) -> int:
        """An image request's prompt: its text plus <|vision_start|>, the visual tokens, <|vision_end|>."""
        return text_tokens + (visual_tokens + 2 if visual_tokens else 0)

    def vision(self, visual_tokens: int) -> float:
        if visual_tokens == 0:
            return 0.0
        grid = cm.image_grid(visual_tokens, self.cfg.vision)
        return self.time_model.time(cm.vision_cost(self.cfg, grid, self.dtype_bytes))

    def vision_grid(self, grid_hw: tuple[int, int]) -> float:
        return self.time_model.time(cm.vision_cost(self.cfg, grid_hw, self.dtype_bytes))

    def prefill(self, num_new: int, prefix: int = 0) -> float:
        return self.time_model.time(cm.prefill_cost(self.cfg, num_new, prefix, dtype_bytes=self.dtype_bytes))

    def decode_step(self, context_len: int, batch: int = 1) -> float:
        """One decode step of `batch` sequences at `context_len` keys each."""
        cost = cm.decode_step_cost(self.cfg, [context_len] * batch, dtype_bytes=self.dtype_bytes)
        return self.time_model.time(cost)

    def decode(self, prompt_len: int, num_output: int, batch: int = 1) -> float:
        """Decode steps after the prefill: num_output - 1 of them (the prefill samples the first)."""
        steps = max(num_output - 1, 0)
        if steps == 0:
            return 0.0
        if self.time_model.overlap:  # max() is not linear: sum step by step
            return sum(self.decode_step(prompt_len + k, batch) for k in range(1, steps + 1))
        # the sum form is linear in the cost, so the closed-form total is exact
        return self.time_model.time(cm.decode_cost(self.cfg, prompt_len, num_output, batch,
                                                   dtype_bytes=self.dtype_bytes))

    def decode_curve(self, prompt_len: int, max_output: int, batch: int = 1) -> np.ndarray:
        """Decode seconds for every output length: element n (0 .. max_output) is decode(prompt_len, n).

        A step's FLOPs and bytes are affine in its context length, so all steps are evaluated
        at once; works for both time-model forms."""
        base = cm.decode_step_cost(self.cfg, [0] * batch, dtype_bytes=self.dtype_bytes)
        per_key = cm.decode_step_cost(self.cfg, [1] * batch, dtype_bytes=self.dtype_bytes)
        d_flops, d_bytes = (per_key.flops - base.flops) / batch, (per_key.bytes - base.bytes) / batch
        ctx = prompt_len + np.arange(1, max(max_output, 1), dtype=np.float64)  # steps 1 .. max_output-1
        compute = (base.flops + batch * ctx * d_flops) / self.time_model.flops
        memory = (base.bytes + batch * ctx * d_bytes) / self.time_model.bandwidth
        steps = np.maximum(compute, memory) if self.time_model.overlap else compute + memory
        return np.concatenate([[0.0, 0.0], np.cumsum(steps)])[: max_output + 1]

    def request_curve(self, visual_tokens: int, text_tokens: int, max_output: int) -> np.ndarray:
        """End-to-end seconds of one request for every output length 0 .. max_output."""
        n = self.prompt_len(visual_tokens, text_tokens)
        return self.vision(visual_tokens) + self.prefill(n) + self.decode_curve(n, max_output)

    def request(self, visual_tokens: int, text_tokens: int, num_output: int) -> Breakdown:
        """One request from scratch: encode the image, prefill the prompt, decode the answer."""
        n = self.prompt_len(visual_tokens, text_tokens)
        return Breakdown(self.vision(visual_tokens), self.prefill(n), self.decode(n, num_output))

    def fits(self, memory_bytes: float, context_len: int = 8192) -> bool:
        """Weights plus one sequence's KV cache within `memory_bytes`."""
        need = cm.weight_bytes(self.cfg, self.dtype_bytes) + context_len * cm.kv_bytes_per_token(
            self.cfg.text, self.dtype_bytes)
        return need <= memory_bytes
