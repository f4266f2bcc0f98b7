"""Transformers parity on the trained SynthVQA checkpoints (fp32): last-position logits within
1e-4 and identical greedy tokens, on the brief and reasoning prompts the multi-agent layer builds."""
import pytest
import torch

from baton import LLM, SamplingParams
from baton.engine.agent_prompts import AgentPrompts, PromptBuilder
from baton.models.synthvqa_task import generate, trained_pair
from tests.parity_utils import LogitsRecorder, hf_greedy, hf_inputs, hf_model

NEW_TOKENS = 24


@pytest.mark.parametrize("which", [0, 1], ids=["small", "large"])
def test_trained_checkpoint_matches_transformers(which):
    path = trained_pair()[which]
    llm = LLM(str(path), device="cpu", dtype="float32", attention_backend="torch")
    ref = hf_model(path, torch.float32)
    builder = PromptBuilder(llm.processor, AgentPrompts())
    recorder = LogitsRecorder(llm.model)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    items = generate("heldout", 5, seed=11)
    for item, stage in zip(items, ("brief", "reason", "brief", "reason", "brief")):
        ids, images = getattr(builder, stage)(item.messages())
        prompt = {"prompt_token_ids": ids, "images": images}
        recorder.calls.clear()
        out = llm.generate(prompt, params)[0]
        want_tokens, want_logits = hf_greedy(ref, hf_inputs(llm.processor.process_ids(ids, images),
                                                             llm.model_cfg.image_token_id), NEW_TOKENS)
        got = recorder.calls[0][0]
        rel = ((got - want_logits).norm() / want_logits.norm()).item()
        assert rel <= 1e-4, f"{item.tier}/{stage}: logits rel err {rel:.2e}"
        assert out.token_ids == want_tokens, f"{item.tier}/{stage}: greedy tokens differ"
