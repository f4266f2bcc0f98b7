"""The real Qwen3-VL configs load, and the architecture built from them on the meta device has
exactly the published parameter counts (../shared/qwen3-vl/README.md)."""
import json
from pathlib import Path

import pytest
import torch

from baton.kernels.registry import get_ops
from baton.models.config import parse_config
from baton.models.qwen3_vl import Qwen3VL

CONFIGS = Path(__file__).resolve().parents[2] / "models" / "configs"
# size: (total, vision incl. mergers, text incl. the LM head when untied)
PUBLISHED = {
    "2b": (2_127_532_032, 406_957_056, 1_720_574_976),
    "4b": (4_437_815_808, 415_347_712, 4_022_468_096),
    "8b": (8_767_123_696, 576_388_336, 8_190_735_360),
    "32b": (33_357_390_064, 595_266_800, 32_762_123_264),
}


def unique_params(module: torch.nn.Module) -> int:
    seen = {}
    for p in module.parameters():  # parameters() already drops the tied LM head's duplicate
        seen[id(p)] = p.numel()
    return sum(seen.values())


@pytest.mark.parametrize("size", PUBLISHED)
def test_meta_model_has_published_parameter_count(size):
    cfg = parse_config(json.loads((CONFIGS / f"qwen3-vl-{size}.config.json").read_text()))
    with torch.device("meta"):
        model = Qwen3VL(cfg, get_ops("torch"))
    total, vision, text = PUBLISHED[size]
    assert unique_params(model.visual) == vision
    assert unique_params(model) - unique_params(model.visual) == text
    assert unique_params(model) == total
    assert model.lm_head.weight is model.language_model.embed_tokens.weight or not cfg.tie_word_embeddings
