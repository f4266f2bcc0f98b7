"""Pure decode steps of the text decoder in one native call on the CPU (csrc/decode_stack.cpp).

Eagerly, a decode step crosses from Python into a kernel about 14 times per layer, through a
module call and a routing check each time: on a 28-layer model that is several milliseconds
per step whatever the width, a fifth of the bandwidth floor at bench-0.5b size. The native
stack runs the same kernels in the same order with the GIL released, so its output equals
the eager path's bit for bit (tests/models/test_native_decode.py checks it).

It takes a step when every token decodes (no prefill, no visual rows), on the CPU, in float32
or bfloat16, with the torch backend's native kernels built, and no forward hook on any
attention layer (the attention probe's hook must see the eager path). Each product still
goes where kernels.cpu_routing measured it faster. BATON_NATIVE_DECODE=0 turns it off.
"""
from __future__ import annotations

import logging
import os

import torch

from baton.kernels import linear as linear_kernels
from baton.kernels import rms_norm_cpu, rotary_cpu, kv_store_cpu, paged_decode_cpu

try:
    from baton.kernels import _native

    AVAILABLE = hasattr(_native, "DecodeStack")
except ImportError:  # no build: decode runs eagerly
    _native = None
    AVAILABLE = False

logger = logging.getLogger("baton")

ENV = "BATON_NATIVE_DECODE"
_DTYPES = (torch.float32, torch.bfloat16)


def enabled() -> bool:
    """Whether BATON_NATIVE_DECODE allows the native stack (default: on)."""
    return os.environ.get(ENV, "1").strip() != "0"


def status() -> str:
    """How CPU decode steps run here: "native", "off (BATON_NATIVE_DECODE=0)" or "not built"
    (llm.stats()["cpu_kernels"]["decode_stack"], `baton info`)."""
    if not _kernels_native():
        return "not built"
    return "native" if enabled() else f"off ({ENV}=0)"


def _kernels_native() -> bool:
    return AVAILABLE and all(m.NATIVE_AVAILABLE for m in (rms_norm_cpu, rotary_cpu, kv_store_cpu, paged_decode_cpu))


class NativeDecode:
    """The native stack of one TextDecoder, built on its first step over a given KV cache."""

    def __init__(self, decoder):
        self.decoder = decoder
        self._stack = None
        self._key = None
        self._placeholders: dict[int, tuple[torch.Tensor, ...]] = {}
        # the attention modules whose hooks keep a step eager: found once, not through 3 module
        # lookups per layer per step (most of applies()'s time at 28 layers, under cProfile)
        self._attns = tuple(layer.self_attn.attn for layer in decoder.layers)

    @property
    def stack(self):
        """The native stack built for the current KV cache (None before the first native step):
        its `profiling`, `profile()`, `profiled_steps` and `reset_profile()` split a step's time
        by op (bench/decode_profile.py)."""
        return self._stack

    def applies(self, embeds: torch.Tensor, cos: torch.Tensor, meta, kv_caches, visual_index) -> bool:
        """Whether this step can run natively (see the module docstring)."""
        d = self.decoder
        return (
            d.ops.backend == "torch"
            and embeds.device.type == "cpu"
            and embeds.dtype in _DTYPES
            and meta.num_prefill_tokens == 0
            and meta.num_decode_tokens == embeds.shape[0]
            and (visual_index is None or visual_index.numel() == 0)
            and cos.dtype == torch.float32
            and kv_caches[0][0].dtype == embeds.dtype
            and enabled()
            and _kernels_native()
            and not torch.is_grad_enabled()
            and not any(a._forward_hooks or a._forward_pre_hooks for a in self._attns)
            and self._stack_for(kv_caches) is not None
        )

    def __call__(self, embeds, cos, sin, kv_caches, meta) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) after the last layer, as the eager loop leaves them. Only after
        `applies` said yes for this step: it built (or kept) the stack for these caches."""
        return self._stack.forward(embeds, cos, sin, meta.slot_mapping, meta.decode_block_tables.to(torch.int32),
                                   meta.context_lens.to(torch.int32), self._routes(embeds))

    def _routes(self, embeds: torch.Tensor) -> list[bool]:
        """Per product (qkv, o, gate_up, down): the native GEMM or torch's, as ops.linear routes
        a product of this many rows (every layer has the same shapes)."""
        rows, layer = embeds.shape[0], self.decoder.layers[0]
        attn, mlp = layer.self_attn, layer.mlp
        mods = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        xs = self._placeholders.get(rows)
        if xs is None or xs[0].dtype != embeds.dtype:
            xs = tuple(torch.empty(rows, m.in_features, dtype=embeds.dtype) for m in mods)
            self._placeholders[rows] = xs
        return [linear_kernels.uses_skinny(x, m.weight, m.bias) for x, m in zip(xs, mods)]

    def _stack_for(self, kv_caches):
        """The stack over these caches and weights (rebuilt when either is replaced), or None
        when the model does not fit it (a warning says why, once; decode then runs per op)."""
        layers = self.decoder.layers
        key = (kv_caches[0][0].data_ptr(), len(kv_caches), layers[0].self_attn.qkv_proj.weight.data_ptr(),
               layers[-1].mlp.down_proj.weight.data_ptr())
        if self._key != key:
            self._key = key
            try:
                self._stack = _native.DecodeStack(
                    [_layer_tensors(layer, kv) for layer, kv in zip(layers, kv_caches)],
                    layers[0].self_attn.num_heads, layers[0].self_attn.num_kv_heads, layers[0].self_attn.head_dim,
                    float(layers[0].input_layernorm.eps), float(layers[0].self_attn.attn.scale))
            except ValueError as e:
                self._stack = None
                logger.warning("native decode stack off for this model (%s); decode runs per op", e)
        return self._stack


def _layer_tensors(layer, kv) -> list:
    a, m = layer.self_attn, layer.mlp
    return [layer.input_layernorm.weight, a.qkv_proj.weight, a.qkv_proj.bias, a.q_norm.weight, a.k_norm.weight,
            a.o_proj.weight, a.o_proj.bias, layer.post_attention_layernorm.weight, m.gate_up_proj.weight,
            m.down_proj.weight, kv[0], kv[1]]
