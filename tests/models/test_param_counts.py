"""Parameter counts read off our model on the meta device, against transformers' own Qwen3-VL
built on the meta device from the same config.json."""
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from baton.engine.analysis import cost_model as cm
from baton.models import synthetic, tokenizer_builder
from baton.models.config import parse_config
from baton.models.param_counts import parameter_counts

CONFIGS = Path(__file__).resolve().parents[2] / "models" / "configs"


def _numel(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def hf_counts(hf_config: dict) -> dict:
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**copy.deepcopy(hf_config)))
    lm = model.model.language_model
    return {
        "total": _numel(model.parameters()),
        "vision": _numel(model.model.visual.parameters()),
        "embedding": lm.embed_tokens.weight.numel(),
        "layers": _numel(lm.layers.parameters()),
        "layers_linear": _numel(p for m in lm.layers.modules() if isinstance(m, nn.Linear) for p in m.parameters()),
        "final_norm": _numel(lm.norm.parameters()),
        "lm_head": model.lm_head.weight.numel(),
        "tied": model.lm_head.weight is lm.embed_tokens.weight,
    }


def _synthetic(spec) -> dict:
    ids = tokenizer_builder.special_token_ids(tokenizer_builder.build_tokenizer())
    return synthetic.make_hf_config(synthetic.resolve_spec(spec), ids, 2048)


CASES = {
    **{p: (lambda p=p: _synthetic(p)) for p in ("tiny", "tiny-gqa4", "tiny-hd32", "tiny-mqa", "demo-large")},
    "attention-bias": lambda: _synthetic({"text_config": {"attention_bias": True}, "tie_word_embeddings": False}),
    "2b": lambda: json.loads((CONFIGS / "qwen3-vl-2b.config.json").read_text()),
    "8b": lambda: json.loads((CONFIGS / "qwen3-vl-8b.config.json").read_text()),
}


@pytest.mark.parametrize("case", CASES)
def test_meta_counts_match_transformers(case):
    hf_config = CASES[case]()
    cfg = parse_config(hf_config)
    ours, ref = parameter_counts(cfg), hf_counts(hf_config)
    assert ours.lm_head_tied == ref["tied"] == cfg.tie_word_embeddings
    for field in ("vision", "embedding", "layers", "layers_linear", "final_norm", "lm_head"):
        assert getattr(ours, field) == ref[field], field
    assert ours.total == ref["total"]
    assert ours.text_total == ref["total"] - ref["vision"]
    # the cost model reads these
    assert cm.total_params(cfg) == ref["total"] and cm.vision_params(cfg) == ref["vision"]
    assert cm.text_step_weight_params(cfg) == ref["layers"] + ref["final_norm"] + ref["lm_head"]


def test_synthetic_count_parameters_match_transformers():
    ids = tokenizer_builder.special_token_ids(tokenizer_builder.build_tokenizer())
    vocab = synthetic._padded_vocab(tokenizer_builder.DEFAULT_VOCAB_SIZE)
    ref = hf_counts(synthetic.make_hf_config(synthetic.resolve_spec("tiny-gqa4"), ids, vocab))
    assert synthetic.count_parameters("tiny-gqa4") == {
        "text": ref["total"] - ref["vision"], "vision": ref["vision"], "total": ref["total"]}
