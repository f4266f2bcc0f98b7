"""Baton's op library: Triton kernels, their plain-torch references, and native scoring ops.

Submodules import lazily so that `import baton.kernels` stays cheap and a missing native
extension only matters to the code that needs it.
"""
import importlib

_EXPORTS = {
    "token_stats": "baton.kernels.scoring",
    "attention_scores": "baton.kernels.scoring",
    "select_tokens": "baton.kernels.scoring",
    "TokenStats": "baton.kernels.scoring",
    "get_ops": "baton.kernels.registry",
    "resolve_backend": "baton.kernels.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'baton.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
