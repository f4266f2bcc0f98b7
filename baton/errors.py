"""Typed errors. Everything Baton raises on purpose derives from BatonError."""


class BatonError(Exception):
    """Base of every error Baton raises on purpose."""


class CheckpointError(BatonError):
    """A checkpoint directory is missing, corrupt or unsupported (the message names the file)."""


class InvalidRequestError(BatonError, ValueError):
    """A request is malformed: prompt, messages, images, length or sampling values."""


class QueueFullError(BatonError):
    """The engine's bounded waiting queue is full: the request was refused, not queued."""
