"""FLOPs and bytes moved by each component of a Qwen3-VL forward pass, from the config alone.

Counting rules (the unit tests recompute them by hand):

- A multiply-add is 2 FLOPs. Only matrix products are counted: linear layers, attention
  scores (Q K^T) and attention-weighted values (P V). Norms, activations, rotary, softmax and
  residual adds are elementwise and left to the calibration.
- Bytes moved are the DRAM traffic that cannot be avoided: every weight the step uses is read
  once, every cached key/value an attention reads is read once, and every new key/value is
  written once. Intermediate activations are assumed to stay in caches (they are small next
  to the weights in decode, and prefill / vision are compute bound).
- Weights read by a text step: the decoder layers, the final norm and the LM head. The
  embedding table is only gathered (a few rows), so it is not counted, tied or not.
- Decode context lengths count the keys a step attends to, its own token included (the
  engine's `context_lens`).

Parameter counts come from the model itself built on the meta device (models.param_counts):
no memory, so the model also runs on configs that do not fit. Everything else is plain ints.
"""
from __future__ import annotations

from dataclasses import dataclass

from baton.models.config import ModelConfig, TextConfig, VisionConfig
from baton.models.param_counts import parameter_counts

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Cost:
    """Work of one component: FLOPs and bytes moved to or from memory."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k)

    __rmul__ = __mul__


# -- parameter counts (from the model built on the meta device) ---------------------------------
def text_params(cfg: ModelConfig) -> dict[str, int]:
    """{"embedding", "layers", "final_norm", "lm_head", "total"}; a tied head counts once (in embedding)."""
    c = parameter_counts(cfg)
    out = {"embedding": c.embedding, "layers": c.layers, "final_norm": c.final_norm,
           "lm_head": 0 if c.lm_head_tied else c.lm_head}
    out["total"] = sum(out.values())
    return out


def text_linear_params(cfg: ModelConfig) -> int:
    """Weights of the matrix products of all decoder layers (q/k/v, o, gate/up, down), biases included."""
    return parameter_counts(cfg).layers_linear


def text_step_weight_params(cfg: ModelConfig) -> int:
    """Parameters one text forward step reads: layers, final norm and the LM head matrix."""
    c = parameter_counts(cfg)
    return c.layers + c.final_norm + c.lm_head


def vision_params(cfg: ModelConfig) -> int:
    """Every vision-tower parameter: patch embedding, position table, blocks and all mergers."""
    return parameter_counts(cfg).vision


def total_params(cfg: ModelConfig) -> int:
    return parameter_counts(cfg).total


def weight_bytes(cfg: ModelConfig, dtype_bytes: int) -> int:
    """Resident weight memory (unique parameters)."""
    return total_params(cfg) * dtype_bytes


def kv_bytes_per_token(t: TextConfig, dtype_bytes: int) -> int:
    """K and V of one token over all layers."""
    return 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * dtype_bytes


# -- components -------------------------------------------------------------------------------
def image_grid(visual_tokens: int, v: VisionConfig) -> tuple[int, int]:
    """(h, w) patch grid of a square image with `visual_tokens` merged tokens (a square number)."""
    side = round(visual_tokens**0.5)
    if side * side != visual_tokens:
        raise ValueError(f"visual_tokens={visual_tokens} is not a square number")
    m = v.spatial_merge_size
    return side * m, side * m


def vision_cost(cfg: ModelConfig, grid_hw: tuple[int, int], dtype_bytes: int) -> Cost:
    """Encoding one still image whose patch grid is (h, w) (one temporal patch).

    P = h*w patches go through the patch embedding and every block (attention over all P
    patches of the image); the main merger and each deepstack merger then map the
    P / merge^2 merged tokens to the text width."""
    v = cfg.vision
    h, w = grid_hw
    p = h * w
    tokens = p // v.spatial_merge_size**2
    hv, merged = v.hidden_size, v.hidden_size * v.spatial_merge_size**2
    flops = 2 * p * v.patch_dim * hv
    per_block = 2 * p * (hv * 3 * hv + hv * hv + 2 * hv * v.intermediate_size) + 4 * p * p * hv
    flops += v.depth * per_block
    mergers = 1 + len(v.deepstack_visual_indexes)
    flops += mergers * 2 * tokens * (merged * merged + merged * v.out_hidden_size)
    return Cost(float(flops), float(vision_params(cfg) * dtype_bytes))


def _attention_flops(t: TextConfig, query_key_pairs: int) -> int:
    """Q K^T and P V over all layers and query heads: 4 * head_dim FLOPs per (query, key) pair per head."""
    return 4 * t.head_dim * t.num_attention_heads * t.num_hidden_layers * query_key_pairs


def prefill_cost(cfg: ModelConfig, num_new: int, prefix: int = 0, *, dtype_bytes: int) -> Cost:
    """One sequence computing `num_new` prompt tokens on top of `prefix` cached ones (causal),
    then the LM head on its last token."""
    t = cfg.text
    pairs = num_new * prefix + num_new * (num_new + 1) // 2
    flops = 2 * num_new * text_linear_params(cfg)
    flops += _attention_flops(t, pairs) + 2 * t.hidden_size * t.vocab_size
    kv = kv_bytes_per_token(t, dtype_bytes)
    nbytes = text_step_weight_params(cfg) * dtype_bytes + (prefix + num_new) * kv + num_new * kv
    return Cost(float(flops), float(nbytes))


def decode_step_cost(cfg: ModelConfig, context_lens: list[int], *, dtype_bytes: int) -> Cost:
    """One decode step of len(context_lens) sequences, one new token each; context_lens[b]
    keys (the new token's included) are attended by sequence b."""
    t = cfg.text
    batch = len(context_lens)
    flops = 2 * batch * (text_linear_params(cfg) + t.hidden_size * t.vocab_size)
    flops += _attention_flops(t, sum(context_lens))
    kv = kv_bytes_per_token(t, dtype_bytes)
    nbytes = text_step_weight_params(cfg) * dtype_bytes + sum(context_lens) * kv + batch * kv
    return Cost(float(flops), float(nbytes))


def decode_cost(cfg: ModelConfig, prompt_len: int, num_output: int, batch: int = 1, *, dtype_bytes: int) -> Cost:
    """All decode steps of `batch` identical sequences producing `num_output` tokens after a
    prompt of `prompt_len`: the prefill samples token 1, then step k (1 .. num_output-1)
    attends to prompt_len + k keys. Returned as the sum over steps."""
    steps = max(num_output - 1, 0)
    if steps == 0:
        return Cost()
    mean_ctx = prompt_len + (steps + 1) / 2  # mean of prompt_len + k over k = 1..steps
    step = decode_step_cost(cfg, [0] * batch, dtype_bytes=dtype_bytes)
    t = cfg.text
    attn = Cost(_attention_flops(t, 1) * batch * mean_ctx, kv_bytes_per_token(t, dtype_bytes) * batch * mean_ctx)
    return (step + attn) * steps
