"""Synthetic checkpoints: real Hugging Face layout, loadable by transformers, reproducible."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (AutoImageProcessor, AutoTokenizer, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)

from baton.models import synthetic, tokenizer_builder
from baton.models.synthetic import PRESETS, build_synthetic_checkpoint, ensure_checkpoint

TINY_PRESETS = [name for name in PRESETS if name.startswith("tiny")]


def _read_safetensors(path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_synthetic_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny")


def test_writes_the_hugging_face_file_layout(tiny):
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "preprocessor_config.json"} <= names
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl"
    assert cfg["architectures"] == ["Qwen3VLForConditionalGeneration"]


def test_config_token_ids_match_the_tokenizer(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok.convert_tokens_to_ids
    assert cfg["image_token_id"] == ids("<|image_pad|>")
    assert cfg["video_token_id"] == ids("<|video_pad|>")
    assert cfg["vision_start_token_id"] == ids("<|vision_start|>")
    assert cfg["vision_end_token_id"] == ids("<|vision_end|>")
    assert cfg["text_config"]["eos_token_id"] == tok.eos_token_id == ids("<|im_end|>")
    vocab = cfg["text_config"]["vocab_size"]
    assert vocab % 64 == 0 and len(tok) <= vocab < len(tok) + 64
    assert cfg["vision_config"]["out_hidden_size"] == cfg["text_config"]["hidden_size"]
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert ids("<|im_end|>") in gen["eos_token_id"]


def test_transformers_loads_every_weight_unchanged(tiny):
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(tiny, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    written = _read_safetensors(tiny)
    state = model.state_dict()
    for name, tensor in written.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    # tied: the head is the embedding, and is not stored twice
    assert "lm_head.weight" not in written
    torch.testing.assert_close(state["lm_head.weight"], written["model.language_model.embed_tokens.weight"])


def test_parameter_names_are_the_ones_save_pretrained_writes(tiny, tmp_path):
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny)
    model.save_pretrained(tmp_path)
    assert set(_read_safetensors(tmp_path)) == set(_read_safetensors(tiny))


def test_untied_checkpoint_stores_its_own_head(tmp_path):
    path = build_synthetic_checkpoint(tmp_path, "tiny-gqa4")
    written = _read_safetensors(path)
    assert "lm_head.weight" in written
    assert not torch.equal(written["lm_head.weight"], written["model.language_model.embed_tokens.weight"])
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False


def test_weights_are_non_trivial(tiny):
    for name, t in _read_safetensors(tiny).items():
        assert torch.isfinite(t).all(), name
        assert t.float().std() > 1e-3, f"{name} is (nearly) constant"
        if name.endswith(("q_norm.weight", "k_norm.weight")):  # sharpened attention
            assert 1.2 < t.float().mean() < 1.8, name
        elif t.dim() == 1 and name.endswith(".weight"):  # other norm scales sit near 1
            assert 0.5 < t.float().mean() < 1.5, name


def test_greedy_decoding_is_not_degenerate(tiny):
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok("Question: How many cats are in the picture? Answer:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert len(set(out[0, ids.shape[1]:].tolist())) >= 16


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = _read_safetensors(build_synthetic_checkpoint(tmp_path / "a", "tiny", seed=1))
    b = _read_safetensors(build_synthetic_checkpoint(tmp_path / "b", "tiny", seed=1))
    c = _read_safetensors(build_synthetic_checkpoint(tmp_path / "c", "tiny", seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)


def test_sharded_checkpoint_has_an_index_and_the_same_weights(tiny, tmp_path):
    path = build_synthetic_checkpoint(tmp_path, "tiny", max_shard_size="200KB")
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(shards) > 1 and "model.safetensors" not in shards
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((path / "model.safetensors.index.json").read_text())
    single = _read_safetensors(tiny)
    assert set(index["weight_map"]) == set(single)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = model.state_dict()
    for name, tensor in single.items():
        assert torch.equal(state[name], tensor), name


def test_bfloat16_checkpoint(tmp_path):
    path = build_synthetic_checkpoint(tmp_path, "tiny", dtype="bfloat16")
    written = _read_safetensors(path)
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"


def test_tokenizer_is_qwen_style_and_deterministic(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    raw = tokenizer_builder.build_tokenizer()
    text = "<|im_start|>user\nWhat is the red cat doing? 42<|vision_start|><|image_pad|><|vision_end|><|im_end|>"
    assert tok(text)["input_ids"] == raw.encode(text).ids
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>"):
        assert len(tok(special)["input_ids"]) == 1, special
    assert 1000 <= len(tok) <= 4096
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == "user\nWhat is the red cat doing? 42"
    assert tokenizer_builder._train(tokenizer_builder.DEFAULT_VOCAB_SIZE) == tokenizer_builder.tokenizer_json()


def test_chat_template_renders_text_and_images(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "image", "image": "a.png"},
            {"type": "text", "text": "Compare with"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]},
        {"role": "assistant", "content": "Same."},
        {"role": "user", "content": "Sure?"},
    ]
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{pad}Compare with{pad}<|im_end|>\n"
        "<|im_start|>assistant\nSame.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert no_prompt == rendered[: -len("<|im_start|>assistant\n")]


def test_image_processor_loads_without_torchvision(tiny):
    proc = AutoImageProcessor.from_pretrained(tiny)
    assert type(proc).__name__ == "Qwen2VLImageProcessorPil"
    assert (proc.patch_size, proc.merge_size, proc.temporal_patch_size) == (16, 2, 2)
    out = proc(images=[Image.new("RGB", (1000, 700), (10, 20, 30))], return_tensors="pt")
    t, h, w = out["image_grid_thw"][0].tolist()
    assert t * h * w * 16 * 16 <= 32 * 32 * 64  # max_pixels of the tiny preset


def test_pixel_bounds_are_configurable(tmp_path):
    path = build_synthetic_checkpoint(tmp_path, "tiny", min_pixels=64 * 64, max_pixels=128 * 128)
    size = json.loads((path / "preprocessor_config.json").read_text())["size"]
    assert size == {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_presets_run_in_transformers_with_an_image(preset, tmp_path):
    path = build_synthetic_checkpoint(tmp_path, preset)
    cfg = json.loads((path / "config.json").read_text())
    model = Qwen3VLForConditionalGeneration.from_pretrained(path).eval()
    proc = AutoImageProcessor.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    img = proc(images=[Image.new("RGB", (64, 96), (200, 30, 30))], return_tensors="pt")
    n = int(img["image_grid_thw"].prod()) // 4
    text = "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>Hi<|im_end|>\n"
    ids = tok(text, return_tensors="pt").input_ids
    mm = (ids == cfg["image_token_id"]).int()
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"],
                       mm_token_type_ids=mm).logits
    assert logits.shape == (1, ids.shape[1], cfg["text_config"]["vocab_size"])
    assert torch.isfinite(logits).all()


def test_presets_cover_the_architecture_variants():
    texts = [PRESETS[p]["text_config"] for p in TINY_PRESETS]
    assert {t["num_attention_heads"] // t["num_key_value_heads"] for t in texts} >= {1, 2, 4}
    assert {t["head_dim"] for t in texts} >= {16, 32}
    assert {PRESETS[p]["tie_word_embeddings"] for p in TINY_PRESETS} == {True, False}
    assert len({tuple(PRESETS[p]["vision_config"]["deepstack_visual_indexes"]) for p in TINY_PRESETS}) >= 3


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_is_a_valid_qwen3_vl_config(preset):
    ids = tokenizer_builder.special_token_ids(tokenizer_builder.build_tokenizer())
    cfg = synthetic.make_hf_config(synthetic.resolve_spec(preset), ids, 2048)
    hf = Qwen3VLConfig(**cfg)
    assert hf.text_config.rope_parameters["mrope_section"] == cfg["text_config"]["rope_scaling"]["mrope_section"]


def test_bench_presets_have_the_advertised_sizes():
    assert 0.4e9 < synthetic.count_parameters("bench-0.5b")["text"] < 0.6e9
    assert 0.25e9 < synthetic.count_parameters("pair-0.3b")["text"] < 0.35e9
    assert 1.4e9 < synthetic.count_parameters("pair-1.5b")["text"] < 1.6e9
    assert synthetic.count_parameters("bench-0.5b")["vision"] > 0.3e9  # a realistic (2B-sized) tower


def test_real_2b_preset_is_the_real_architecture_and_vocabulary():
    """real-2b against the Qwen3-VL-2B config.json shipped in models/configs: every architecture
    field of both towers, the vocabulary, and so the parameter count."""
    real = json.loads((Path(synthetic.__file__).parent / "configs" / "qwen3-vl-2b.config.json").read_text())
    ids = tokenizer_builder.special_token_ids(tokenizer_builder.build_tokenizer())
    spec = synthetic.resolve_spec("real-2b")
    ours = synthetic.make_hf_config(spec, ids, spec["vocab_size"])
    arch = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "rope_theta", "rms_norm_eps", "vocab_size", "tie_word_embeddings")
    assert {k: ours["text_config"][k] for k in arch} == {k: real["text_config"].get(k, real.get(k)) for k in arch}
    assert ours["text_config"]["rope_scaling"]["mrope_section"] == real["text_config"]["rope_scaling"]["mrope_section"]
    vision = ("depth", "hidden_size", "intermediate_size", "num_heads", "num_position_embeddings",
              "deepstack_visual_indexes", "out_hidden_size", "patch_size", "spatial_merge_size")
    assert {k: ours["vision_config"][k] for k in vision} == {k: real["vision_config"][k] for k in vision}
    counts = synthetic.count_parameters("real-2b")
    assert 1.6e9 < counts["text"] < 1.8e9 and 0.3e9 < counts["vision"] < 0.5e9


def test_dict_config_overrides_tiny(tmp_path):
    path = build_synthetic_checkpoint(tmp_path, {"text_config": {"num_key_value_heads": 1},
                                                 "tie_word_embeddings": False})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["text_config"]["num_key_value_heads"] == 1
    assert cfg["text_config"]["hidden_size"] == PRESETS["tiny"]["text_config"]["hidden_size"]
    assert cfg["tie_word_embeddings"] is False


def test_invalid_configs_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        build_synthetic_checkpoint(tmp_path, "nope")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        build_synthetic_checkpoint(tmp_path, {"text_config": {"num_key_value_heads": 3}})
    with pytest.raises(ValueError, match="deepstack"):
        build_synthetic_checkpoint(tmp_path, {"vision_config": {"deepstack_visual_indexes": [5]}})


def test_shared_tokenizer_dir(tiny, tmp_path):
    path = build_synthetic_checkpoint(tmp_path, "tiny-gqa4", tokenizer_dir=tiny)
    assert (path / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
    assert json.loads((path / "config.json").read_text())["image_token_id"] == \
        json.loads((tiny / "config.json").read_text())["image_token_id"]


def test_ensure_checkpoint_builds_once_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path))
    path = ensure_checkpoint("tiny")
    assert path == tmp_path / "checkpoints" / "tiny"
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert ensure_checkpoint("tiny") == path
    assert weights.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    other = ensure_checkpoint("tiny", cache_dir=tmp_path / "elsewhere")
    assert other == tmp_path / "elsewhere" / "tiny" and (other / "config.json").is_file()


def test_ensure_checkpoint_rebuilds_an_incomplete_dir(tmp_path):
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "config.json").write_text("{}")  # left over from an interrupted, non-atomic write
    path = ensure_checkpoint("tiny", cache_dir=tmp_path)
    assert path == target and (path / "model.safetensors").is_file()
    assert os.listdir(tmp_path) == ["tiny"]
