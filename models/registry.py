"""Model classes by config.json `model_type`. An architecture registers itself with
@register_model in its own file and lists that file in _BUILTIN_MODULES; the engine and the
factory only ever look a class up here."""
from __future__ import annotations

import importlib

from baton.errors import CheckpointError

# imported on the first lookup, so each registers its classes
_BUILTIN_MODULES = ("baton.models.qwen3_vl",)

_MODELS: dict[str, type] = {}


def register_model(model_type: str):
    """Class decorator: `model_type` (as in config.json) is built with this class."""

    def wrap(cls: type) -> type:
        if _MODELS.get(model_type, cls) is not cls:
            raise ValueError(f"model_type {model_type!r} is already registered to {_MODELS[model_type].__name__}")
        _MODELS[model_type] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    for name in _BUILTIN_MODULES:
        importlib.import_module(name)


def supported_model_types() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_MODELS))


def model_class(model_type: str) -> type:
    """The class registered for `model_type`; CheckpointError naming it when there is none."""
    _load_builtins()
    cls = _MODELS.get(model_type)
    if cls is None:
        raise CheckpointError(
            f"unsupported model_type {model_type!r}; Baton runs {', '.join(supported_model_types())}")
    return cls
