"""Transformers as the oracle: greedy generation and last-position logits on the same weights."""
from __future__ import annotations

import torch
from transformers import GenerationConfig


def hf_model(checkpoint, dtype=torch.float32):
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(str(checkpoint), dtype=dtype)
    return model.eval()


def hf_inputs(processed, image_token_id: int) -> dict:
    ids = torch.tensor([processed.token_ids])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if processed.images:
        inputs["pixel_values"] = torch.cat([im.pixel_values for im in processed.images])
        inputs["image_grid_thw"] = torch.tensor([list(im.grid_thw) for im in processed.images])
        inputs["mm_token_type_ids"] = (ids == image_token_id).long()
    return inputs


@torch.no_grad()
def hf_greedy(model, inputs: dict, max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """(greedy continuation ignoring EOS, float32 logits of the last prompt position)."""
    logits = model(**inputs).logits[0, -1].float()
    # plain argmax, EOS allowed but not stopping (our ignore_eos); min_new_tokens would instead
    # suppress EOS, and generation_config extras (repetition penalty...) must not apply
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), logits


class LogitsRecorder:
    """Wraps model.compute_logits to keep the rows computed at each step."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self._inner = model.compute_logits
        model.compute_logits = self

    def __call__(self, hidden):
        logits = self._inner(hidden)
        self.calls.append(logits.detach().clone())
        return logits
