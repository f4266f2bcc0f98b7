"""Baton engine: paged KV cache, prefix cache, scheduler, runner and the public API.

Users import the public names from `baton` (`from baton import LLM`); this package holds
their modules. Nothing here imports eagerly, so `baton.engine.sequence` and friends load
without pulling in the model code.
"""
