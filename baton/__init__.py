"""Baton: a small and a large vision-language model in one engine.

`from baton import LLM, SamplingParams, MultiAgent`. The subpackages `baton.engine`,
`baton.models` and `baton.kernels` live in the repo's engine/, models/ and kernels/ folders
and are mapped under this package at install time. Heavy modules import lazily, so
`import baton` (and `baton.errors`) stays cheap.
"""
import importlib

from baton.errors import BatonError, CheckpointError, InvalidRequestError

_EXPORTS = {
    "LLM": "baton.engine.llm",
    "SamplingParams": "baton.engine.sampling_params",
    "RequestOutput": "baton.engine.outputs",
    "RequestMetrics": "baton.engine.outputs",
    "MultiAgent": "baton.engine.multi_agent",
    "MultiAgentResult": "baton.engine.multi_agent",
    "AsyncEngine": "baton.engine.async_engine",
}

__all__ = ["BatonError", "CheckpointError", "InvalidRequestError", *_EXPORTS]
__version__ = "0.1.0"


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'baton' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
