"""Predicted end-to-end latency of the multi-agent modes, as functions of their token counts.

All stages run on one device, one after another (two models do not share weights, so their
steps add up). Token counts: a brief answer of `answer` tokens; `small_reason` / `large_reason`
reasoning tokens; `budget` (k) reasoning tokens transferred to the large model; `agreement`
(p) the fraction of questions where both brief answers agree; `instruction` tokens appended to
a cached prompt when a stage re-asks (e.g. "think step by step" / "given this reasoning").

- small-reason: the small model reasons, then answers (one generation).
- large-reason: the same on the large model.
- transfer: the small model reasons; the large model gets prompt + k selected tokens and
  answers briefly. Cold: the large model encodes the image and prefills everything.
- auto: both answer briefly; with probability 1 - p they disagree and the transfer stages run,
  warm: the image embeddings and the prompt's KV are still cached in both models, so the
  small model only prefills the instruction and the large model the instruction plus k tokens.
- auto-cold: the same decision tree, but every stage starts cold (re-encodes the image and
  re-prefills the prompt) as a prototype without a shared prefix cache would.
"""
from __future__ import annotations

from dataclasses import dataclass

from baton.engine.analysis.predictor import LatencyPredictor

MODES = ("small-reason", "large-reason", "transfer", "auto", "auto-cold")


@dataclass(frozen=True)
class ModeTokens:
    visual_tokens: int = 256
    text_tokens: int = 64
    answer: int = 8
    small_reason: int = 1024
    large_reason: int = 1024
    budget: int = 128
    agreement: float = 0.86
    instruction: int = 16


def _cold(m: LatencyPredictor, x: ModeTokens, extra_prompt: int, output: int) -> float:
    """A request from scratch whose prompt carries `extra_prompt` more tokens than the question."""
    n = m.prompt_len(x.visual_tokens, x.text_tokens) + extra_prompt
    return m.vision(x.visual_tokens) + m.prefill(n) + m.decode(n, output)


def _warm(m: LatencyPredictor, x: ModeTokens, extra_prompt: int, output: int) -> float:
    """A request whose image and question are already cached: prefill only `extra_prompt` new tokens."""
    p = m.prompt_len(x.visual_tokens, x.text_tokens)
    return m.prefill(extra_prompt, prefix=p) + m.decode(p + extra_prompt, output)


def mode_latency(mode: str, small: LatencyPredictor, large: LatencyPredictor, x: ModeTokens) -> float:
    """Expected seconds, end to end, for one question."""
    if mode == "small-reason":
        return _cold(small, x, 0, x.small_reason + x.answer)
    if mode == "large-reason":
        return _cold(large, x, 0, x.large_reason + x.answer)
    if mode == "transfer":
        return _cold(small, x, 0, x.small_reason) + _cold(large, x, x.instruction + x.budget, x.answer)
    if mode in ("auto", "auto-cold"):
        brief = _cold(small, x, 0, x.answer) + _cold(large, x, 0, x.answer)
        if mode == "auto":
            rest = _warm(small, x, x.instruction, x.small_reason) + _warm(large, x, x.instruction + x.budget, x.answer)
        else:
            rest = _cold(small, x, x.instruction, x.small_reason) + _cold(large, x, x.instruction + x.budget, x.answer)
        return brief + (1.0 - x.agreement) * rest
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
