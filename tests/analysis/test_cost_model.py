"""The cost model against FLOP / byte counts worked out by hand for a tiny config, the
published Qwen3-VL parameter counts, and the time-model fit on synthetic data."""
import json
from pathlib import Path

import pytest

from baton.engine.analysis import cost_model as cm
from baton.engine.analysis.calibration import TimeModel, fit_time_model
from baton.engine.analysis.devices import PRESETS, parse_device
from baton.models.config import parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "models" / "configs"


def tiny_config(tie: bool = True):
    """hidden 16, 4 query heads / 2 KV heads of 8, MLP 32, 2 layers, vocab 100; vision width 8,
    2 heads, MLP 16, depth 2, 2x2 patches (x2 frames, 3 channels), merge 2, one deepstack level."""
    return parse_config({
        "model_type": "qwen3_vl",
        "tie_word_embeddings": tie,
        "text_config": {
            "vocab_size": 100, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 10000,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
        },
        "vision_config": {
            "depth": 2, "hidden_size": 8, "intermediate_size": 16, "num_heads": 2, "in_channels": 3,
            "patch_size": 2, "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 16,
            "num_position_embeddings": 16, "deepstack_visual_indexes": [0],
        },
    })


# Hand counts for the tiny config (fp32, 4 bytes):
#   text layer matrices: qkv 16*(4*8 + 2*2*8) = 1024, o 32*16 = 512, mlp 3*16*32 = 1536 -> 3072
#   text layer: 3072 + RMSNorms 2*16 + q/k norms 2*8 = 3120; 2 layers = 6240
#   step weights: layers 6240 + final norm 16 + LM head 100*16 = 7856 params = 31424 bytes
#   KV per token: 2 (K, V) * 2 layers * 2 heads * 8 * 4 bytes = 256 bytes
#   attention per (query, key) pair: 4 * 8 (head_dim) * 4 heads * 2 layers = 256 FLOPs
STEP_WEIGHT_BYTES = 7856 * 4
KV = 256


def test_text_parameter_counts_by_hand():
    tied, untied = tiny_config(True), tiny_config(False)
    assert cm.text_linear_params(tied) == 2 * 3072
    assert cm.text_params(tied)["layers"] == 6240
    assert cm.text_params(tied)["total"] == 1600 + 6240 + 16          # embedding + layers + final norm
    assert cm.text_params(untied)["total"] == 1600 + 6240 + 16 + 1600  # + separate LM head
    assert cm.text_step_weight_params(tied) == cm.text_step_weight_params(untied) == 7856
    assert cm.kv_bytes_per_token(tied.text, 4) == KV


def test_vision_parameter_count_by_hand():
    # patch embed 24*8 + 8 = 200 (patch_dim 3*2*2*2 = 24); positions 16*8 = 128;
    # block: 2 LayerNorms 4*8 + qkv 8*24+24 + proj 8*8+8 + fc1 8*16+16 + fc2 16*8+8 = 600, x2 = 1200;
    # main merger (merged 32): norm 2*8 + 32*32+32 + 32*16+16 = 1600; deepstack: norm 2*32 -> 1648
    assert cm.vision_params(tiny_config()) == 200 + 128 + 1200 + 1600 + 1648


def test_vision_cost_by_hand():
    cfg = tiny_config()
    cost = cm.vision_cost(cfg, (4, 4), dtype_bytes=4)  # 16 patches -> 4 merged tokens
    patch = 2 * 16 * 24 * 8                                   # 6144
    block = 2 * 16 * (8 * 24 + 8 * 8 + 2 * 8 * 16) + 4 * 16 * 16 * 8  # linears 16384 + attention 8192
    mergers = 2 * (2 * 4 * (32 * 32 + 32 * 16))              # main + 1 deepstack: 24576
    assert cost.flops == patch + 2 * block + mergers == 79872
    assert cost.bytes == 4776 * 4


def test_prefill_cost_by_hand():
    cfg = tiny_config()
    fresh = cm.prefill_cost(cfg, 5, dtype_bytes=4)
    # linears 2*5 tokens*2 layers*3072 = 61440; causal pairs 1+2+3+4+5 = 15 -> 15*256 = 3840;
    # LM head on the last token 2*16*100 = 3200
    assert fresh.flops == 61440 + 3840 + 3200
    assert fresh.bytes == STEP_WEIGHT_BYTES + 5 * KV + 5 * KV  # weights, K/V read once, new K/V written
    extend = cm.prefill_cost(cfg, 3, prefix=4, dtype_bytes=4)
    # pairs: 3 new tokens see 4 cached keys each (12) plus 1+2+3 among themselves -> 18
    assert extend.flops == 2 * 3 * 2 * 3072 + 18 * 256 + 3200
    assert extend.bytes == STEP_WEIGHT_BYTES + 7 * KV + 3 * KV


def test_decode_step_cost_by_hand():
    cfg = tiny_config()
    step = cm.decode_step_cost(cfg, [6, 9], dtype_bytes=4)
    # 2 tokens through 2 layers of 3072 and the LM head (16*100): 2*2*(6144 + 1600) = 30976;
    # attention over 6 + 9 keys: 15 * 256 = 3840
    assert step.flops == 30976 + 3840
    assert step.bytes == STEP_WEIGHT_BYTES + 15 * KV + 2 * KV


def test_decode_cost_sums_its_steps():
    cfg = tiny_config()
    total = cm.decode_cost(cfg, prompt_len=5, num_output=4, dtype_bytes=4)
    # token 1 comes from the prefill; steps 1..3 attend to 6, 7, 8 keys
    assert total.flops == 3 * 2 * (6144 + 1600) + (6 + 7 + 8) * 256 == 51840
    assert total.bytes == 3 * (STEP_WEIGHT_BYTES + KV) + (6 + 7 + 8) * KV
    steps = [cm.decode_step_cost(cfg, [c, c], dtype_bytes=2) for c in (11, 12)]
    batched = cm.decode_cost(cfg, prompt_len=10, num_output=3, batch=2, dtype_bytes=2)
    assert batched.flops == pytest.approx(sum(s.flops for s in steps))
    assert batched.bytes == pytest.approx(sum(s.bytes for s in steps))
    assert cm.decode_cost(cfg, 10, 1, dtype_bytes=4) == cm.Cost()


@pytest.mark.parametrize("size,total,vision", [
    ("2b", 2_127_532_032, 406_957_056),
    ("4b", 4_437_815_808, 415_347_712),
    ("8b", 8_767_123_696, 576_388_336),
    ("32b", 33_357_390_064, 595_266_800),
])
def test_parameter_counts_match_published_qwen3_vl(size, total, vision):
    cfg = parse_config(json.loads((CONFIGS / f"qwen3-vl-{size}.config.json").read_text()))
    assert cm.vision_params(cfg) == vision
    assert cm.total_params(cfg) == total


def test_image_grid_is_merge_times_token_side():
    cfg = tiny_config()
    assert cm.image_grid(64, cfg.vision) == (16, 16)
    with pytest.raises(ValueError, match="square"):
        cm.image_grid(60, cfg.vision)


@pytest.mark.parametrize("overlap", [False, True])
def test_fit_recovers_known_constants(overlap):
    truth = TimeModel(flops=3e10, bandwidth=9e9, overlap=overlap)
    costs = [cm.Cost(f, b) for f in (1e9, 3e10, 4e11) for b in (2e8, 5e9, 3e10)]
    fitted = fit_time_model(costs, [truth.time(c) for c in costs], overlap=overlap)
    assert fitted.flops == pytest.approx(3e10, rel=1e-3)
    assert fitted.bandwidth == pytest.approx(9e9, rel=1e-3)


def test_time_model_sum_and_roofline():
    cost = cm.Cost(flops=2e9, bytes=1e9)
    assert TimeModel(1e9, 1e9, overlap=False).time(cost) == pytest.approx(3.0)
    assert TimeModel(1e9, 1e9, overlap=True).time(cost) == pytest.approx(2.0)


def test_device_presets_and_overrides():
    h100 = PRESETS["h100"]
    assert TimeModel.from_spec(h100).bandwidth == pytest.approx(3.35e12 * 0.8)
    custom = parse_device("h100:peak_flops=5e14,bandwidth_efficiency=0.5,overlap=0")
    assert (custom.peak_flops, custom.effective_bandwidth, custom.overlap) == (5e14, 3.35e12 * 0.5, False)
    with pytest.raises(ValueError, match="unknown device"):
        parse_device("tpu")
    with pytest.raises(ValueError, match="not a field"):
        parse_device("h200:speed=3")
