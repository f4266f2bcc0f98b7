"""config.json's model_type picks the model class; the factory builds only registered ones."""
import dataclasses

import pytest
import torch
from torch import nn

from baton.errors import CheckpointError
from baton.kernels.registry import get_ops
from baton.models import factory, registry
from baton.models.config import load_config
from baton.models.qwen3_vl import Qwen3VL


@pytest.fixture(scope="module")
def cfg(tiny_checkpoint):
    return load_config(tiny_checkpoint)


def test_qwen3_vl_is_registered(cfg):
    assert cfg.model_type == "qwen3_vl"
    assert registry.model_class("qwen3_vl") is Qwen3VL
    assert "qwen3_vl" in registry.supported_model_types()
    model = factory.build_empty(cfg, get_ops("torch"), torch.float32, "cpu")
    assert type(model) is Qwen3VL
    assert model.lm_head.weight is model.language_model.embed_tokens.weight  # tiny ties them


@pytest.mark.parametrize("build", ["build_empty", "random_model", "load_model", "lookup"])
def test_unknown_model_type_raises_checkpoint_error_naming_it(cfg, tiny_checkpoint, build):
    other = dataclasses.replace(cfg, model_type="llava_next")
    ops = get_ops("torch")
    calls = {
        "build_empty": lambda: factory.build_empty(other, ops, torch.float32, "cpu"),
        "random_model": lambda: factory.random_model(other, ops, torch.float32, "cpu"),
        "load_model": lambda: factory.load_model(tiny_checkpoint, other, ops, torch.float32, "cpu"),
        "lookup": lambda: registry.model_class("llava_next"),
    }
    with pytest.raises(CheckpointError, match="llava_next"):
        calls[build]()


def test_a_registered_architecture_is_built_by_the_factory(cfg, monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @registry.register_model("toy")
    class Toy(nn.Module):
        def __init__(self, cfg, ops):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = factory.random_model(dataclasses.replace(cfg, model_type="toy"), get_ops("torch"), torch.bfloat16, "cpu")
    assert type(model) is Toy and model.embed.weight.dtype == torch.bfloat16
    assert model.head.weight is model.embed.weight  # ties survive materialisation
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("toy")(type("Other", (nn.Module,), {}))
