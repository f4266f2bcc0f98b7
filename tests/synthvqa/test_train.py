"""The training script: a few steps on tiny settings give a checkpoint both loaders read."""
import json
import math

import pytest
import torch

from baton.engine import synthvqa_train


def test_a_few_steps_lower_the_loss_and_save_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "small"
    log = synthvqa_train.train("small", out, steps=4, batch_size=3, lr=3e-3, seed=1, progress=False)
    losses = log["loss"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < losses[0]  # from ~ln(vocab) at random init
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "loss_curve.png", "train_log.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_log.json").read_text())["loss"] == losses

    from baton import LLM, SamplingParams
    from baton.models.synthvqa_task import generate
    from transformers import Qwen3VLForConditionalGeneration

    ref = Qwen3VLForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32)
    llm = LLM(str(out), device="cpu", dtype="float32", attention_backend="torch")
    ours = dict(llm.model.named_parameters())
    assert ref.model.language_model.embed_tokens.weight.dtype == torch.float32
    assert llm.model_cfg.text.hidden_size == ref.config.text_config.hidden_size
    assert len(ours) > 0
    out_text = llm.chat(generate("heldout", 1)[0].messages(), SamplingParams(temperature=0, max_tokens=3))[0]
    assert len(out_text.token_ids) >= 1


def test_training_sequences_use_the_engine_prompts(tmp_path):
    """The large model's transfer example is the brief prompt + <think> + selected reasoning +
    </think> + answer, exactly what PromptBuilder.transfer builds at inference."""
    import random

    from baton.engine.agent_prompts import AgentPrompts
    from baton.models.synthvqa_task import generate

    init = synthvqa_train.init_checkpoint(tmp_path / "init", "small", seed=0)
    ex = synthvqa_train.Examples(init)
    item = generate("train", 1)[0]
    tok = ex.processor.tokenizer
    p = AgentPrompts()
    rendered, _ = ex.processor.render_chat([{"role": "user", "content": [
        {"type": "image", "image": item.image},
        {"type": "text", "text": item.question + " " + p.brief_instruction}]}])
    ids, labels, _ = ex.sequence(item, "transfer", random.Random(0))
    head = list(ex.processor.process(rendered, [item.image]).token_ids) + tok.encode(p.think_open)
    assert ids[:len(head)] == head
    assert tok.decode(ids, skip_special_tokens=False).endswith(p.think_close + item.answer + "<|im_end|>")
    target = [t for t in labels if t != -100]
    assert tok.decode(target, skip_special_tokens=False) == item.answer + "<|im_end|>"
    ids, labels, _ = ex.sequence(item, "reason", random.Random(0))
    assert tok.decode([t for t in labels if t != -100], skip_special_tokens=False) == item.reasoning + "</think>"


def test_mix_sets_the_formats_trained_and_bad_mixes_are_refused(tmp_path):
    log = synthvqa_train.train("small", tmp_path / "s", steps=3, batch_size=2, seed=2, progress=False,
                               mix={"reason": 1.0, "brief": 0.0})
    assert log["format"] == ["reason"] * 3 and log["mix"] == {"reason": 1.0, "brief": 0.0}
    for bad in ({"transfer": 1.0}, {}, {"brief": -1.0, "reason": 2.0}):  # transfer is the large model's only
        with pytest.raises(ValueError, match="mix for small"):
            synthvqa_train.train("small", tmp_path / "x", steps=1, mix=bad, progress=False)
    assert synthvqa_train._parse_mix("brief=0.25, reason=0.75") == {"brief": 0.25, "reason": 0.75}
