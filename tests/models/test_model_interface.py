"""The engine-facing model contracts (models/interface.py): opaque visual features in the
encoder cache, per-image features from encode_images, positions delegated to the prompt."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from baton.engine.encoder_cache import EncoderCache
from baton.engine.sampling_params import SamplingParams
from baton.engine.sequence import Sequence
from baton.kernels.registry import get_ops
from baton.models.config import load_config
from baton.models.factory import random_model
from baton.models.interface import TokenPositions, VisualFeatures
from baton.models.processor import Processor


def _image(w, h, seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def proc(tiny_checkpoint):
    return Processor(tiny_checkpoint)


@pytest.fixture(scope="module")
def prompt(proc):
    images = [_image(100, 70, 0), _image(90, 200, 1)]
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "and"},
                                             {"type": "image", "image": images[1]}, {"type": "text", "text": "?"}]}]
    return proc.process_chat(messages)


def test_sequence_positions_of_generated_tokens_match_a_longer_prompt(proc, prompt):
    assert isinstance(prompt.positions, TokenPositions)
    generated = proc.tokenizer.encode(" the second one is taller", add_special_tokens=False)
    # reference: the prompt with the generated tokens as text, positions from scratch
    longer = proc.process_ids(prompt.token_ids + generated, prompt.images)
    seq = Sequence("r", prompt, SamplingParams(), block_size=16)
    seq.token_ids.extend(generated)
    n, total = len(prompt.token_ids), len(seq)
    for start, end in [(0, total), (0, n), (n - 3, n + 2), (n, total), (n + 2, n + 3), (5, 6)]:
        got = seq.positions(start, end)
        assert got.dtype == torch.long
        assert torch.equal(got, longer.mrope_positions[:, start:end]), (start, end)


def test_encode_images_returns_one_slice_of_the_tower_output_per_image(tiny_checkpoint, prompt):
    model = random_model(load_config(tiny_checkpoint), get_ops("torch"), torch.float32, "cpu")
    images = prompt.images
    pixels = torch.cat([im.pixel_values for im in images])
    grids = [im.grid_thw for im in images]
    feats = model.encode_images(pixels, grids)
    with torch.no_grad():
        embeds, deepstack = model.visual(pixels, grids)
    assert len(feats) == len(images) and deepstack
    offset = 0
    for f, im in zip(feats, images):
        assert isinstance(f, VisualFeatures) and f.num_tokens == im.num_tokens
        rows = slice(offset, offset + im.num_tokens)
        assert torch.equal(f.embeds, embeds[rows])
        assert all(torch.equal(a, b[rows]) for a, b in zip(f.deepstack, deepstack, strict=True))
        assert f.nbytes == (1 + len(deepstack)) * im.num_tokens * embeds.shape[1] * 4
        part = f.rows(1, 3)
        assert part.num_tokens == 2 and torch.equal(part.embeds, embeds[offset + 1:offset + 3])
        assert torch.equal(part.deepstack[-1], deepstack[-1][offset + 1:offset + 3])
        offset += im.num_tokens


@dataclass
class Opaque:
    nbytes: int


def test_encoder_cache_budgets_opaque_features_by_nbytes():
    cache = EncoderCache(max_bytes=100)
    cache.put("a", Opaque(40))
    cache.put("b", Opaque(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", Opaque(40))  # evicts b
    assert cache.bytes == 80 and cache.get("b") is None and cache.get("c").nbytes == 40
    cache.put("huge", Opaque(101))  # over the whole budget: not cached
    assert cache.get("huge") is None and len(cache) == 2


def test_every_linear_layer_routes_through_the_kernel_registry(tiny_checkpoint):
    """Each product goes where kernels.cpu_routing measured it faster: a plain nn.Linear would
    bypass it (the vision tower's patch embedding and mergers once ran torch's emulated bfloat16
    GEMM on AVX2 that way, a quarter of a bfloat16 TTFT)."""
    from torch import nn

    from baton.models.ops_linear import OpsLinear

    model = random_model(load_config(tiny_checkpoint), get_ops("torch"), torch.float32, "cpu")
    linears = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert any(name.startswith("visual.") for name in linears) and any("merger" in name for name in linears)
    assert sorted(name for name, kind in linears.items() if not issubclass(kind, OpsLinear)) == []
