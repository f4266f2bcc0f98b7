"""A checkpoint that would load and then fail (or answer garbage) at the first request is
refused at load with a CheckpointError naming the file and the field or tensor: config.json
field types and ranges, preprocessor vs vision config, NaN / inf weights."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from baton import LLM, CheckpointError, SamplingParams
from baton.kernels.registry import get_ops
from baton.models.config import load_config
from baton.models.factory import load_model
from baton.models.processor import Processor

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
OPTS = dict(device="cpu", dtype="float32", attention_backend="torch", max_model_len=128, kv_cache_bytes=1 << 20)


@pytest.fixture
def ckpt(tmp_path, tiny_checkpoint):
    """A private copy of the tiny checkpoint to break."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")


def edit_json(path, section, key, value):
    data = json.loads(path.read_text())
    (data if section is None else data[section])[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("section, key, value", [
    ("text_config", "hidden_size", "sixty-four"),
    (None, "text_config", None),
    (None, "vision_config", [1, 2]),
    ("text_config", "rms_norm_eps", -1),
    ("text_config", "rms_norm_eps", math.nan),
    ("text_config", "rms_norm_eps", "1e-6"),
    ("text_config", "vocab_size", 0),
    ("text_config", "num_hidden_layers", 2.5),
    ("text_config", "num_attention_heads", True),
    ("text_config", "head_dim", 15),
    ("text_config", "rope_theta", -5),
    ("text_config", "rope_scaling", "default"),
    ("text_config", "eos_token_id", -1),
    ("vision_config", "patch_size", 0),
    ("vision_config", "num_heads", 3),
    ("vision_config", "num_position_embeddings", 575),
    ("vision_config", "deepstack_visual_indexes", "0,1"),
    (None, "tie_word_embeddings", "yes"),
    (None, "image_token_id", -3),
])
def test_bad_config_field_names_config_json_and_the_field(ckpt, section, key, value):
    edit_json(ckpt / "config.json", section, key, value)
    for load in (lambda: LLM(str(ckpt), **OPTS), lambda: Processor(ckpt)):
        with pytest.raises(CheckpointError, match=f"config.json.*{key}") as info:
            load()
        assert "tokenizer.json" not in str(info.value)


@pytest.mark.parametrize("pre_key, value, cfg_key", [
    ("patch_size", 14, "patch_size"),
    ("merge_size", 1, "spatial_merge_size"),
    ("temporal_patch_size", 1, "temporal_patch_size"),
])
def test_preprocessor_disagreeing_with_the_vision_config_fails_at_load(ckpt, pre_key, value, cfg_key):
    edit_json(ckpt / "preprocessor_config.json", None, pre_key, value)
    expected = json.loads((ckpt / "config.json").read_text())["vision_config"][cfg_key]
    pattern = (rf"preprocessor_config\.json: {pre_key} {value} differs from "
               rf".*config\.json vision_config\.{cfg_key} {expected}")
    with pytest.raises(CheckpointError, match=pattern):
        LLM(str(ckpt), **OPTS)
    with pytest.raises(CheckpointError, match=pattern):
        Processor(ckpt)


def test_from_random_config_must_match_the_processor(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["vision_config"]["patch_size"] = 14
    with pytest.raises(CheckpointError, match="patch_size 16 differs from config.json vision_config.patch_size 14"):
        LLM.from_random(config, processor_dir=tiny_checkpoint, **OPTS)


def _poison(ckpt, value):
    weights = load_file(ckpt / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("mlp.down_proj.weight"))
    weights[name].view(-1)[7] = value
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_refused_naming_the_tensor(ckpt, value):
    name = _poison(ckpt, value)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor {name} holds NaN or inf.*check_weights"):
        LLM(str(ckpt), **OPTS)
    unchecked = LLM(str(ckpt), check_weights=False, **OPTS)  # the check can be turned off
    assert any(not torch.isfinite(p).all() for p in unchecked.model.parameters())


def test_weight_overflowing_the_target_dtype_is_refused(ckpt):
    name = _poison(ckpt, 1e30)
    cfg = load_config(ckpt)
    ok = load_model(ckpt, cfg, get_ops("torch"), torch.float32, "cpu")  # fits float32
    assert ok is not None
    with pytest.raises(CheckpointError, match=f"{name} overflows float16"):
        load_model(ckpt, cfg, get_ops("torch"), torch.float16, "cpu")


def test_clean_checkpoint_still_loads_and_serves(ckpt, tiny_checkpoint):
    llm = LLM(str(ckpt), **OPTS)
    out = llm.generate("hello", GREEDY)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4
