"""Baton engine: paged KV cache, prefix cache, scheduler, runner and the public API.

`from engine import LLM, SamplingParams, MultiAgent`. Heavy modules import lazily so that
`engine.errors` stays importable on its own.
"""
import importlib

from engine.errors import BatonError, CheckpointError, InvalidRequestError

_EXPORTS = {
    "LLM": "engine.llm",
    "SamplingParams": "engine.sampling_params",
    "RequestOutput": "engine.outputs",
    "RequestMetrics": "engine.outputs",
    "MultiAgent": "engine.multi_agent",
}

__all__ = ["BatonError", "CheckpointError", "InvalidRequestError", *_EXPORTS]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
