"""Baton engine: paged KV cache, prefix cache, scheduler, runner and the public API."""
from engine.errors import BatonError, CheckpointError, InvalidRequestError

__all__ = ["BatonError", "CheckpointError", "InvalidRequestError"]
