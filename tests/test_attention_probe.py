"""The engine's attention probe vs transformers' eager attention weights (last layer)."""
import torch

from baton import SamplingParams
from baton.engine.demo import make_demo_image
from tests.parity_utils import hf_inputs


def test_probe_matches_transformers_eager_attention(tiny_llm_factory, tiny_checkpoint):
    from transformers import Qwen3VLForConditionalGeneration

    llm = tiny_llm_factory(max_num_batched_tokens=24)  # chunked: the probe spans several steps
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    prompt = {"prompt": f"<|im_start|>user\n{pad}Think about the boxes and their colours.<|im_end|>\n"
                        "<|im_start|>assistant\nThe red one is big. Answer: red",
              "images": [make_demo_image(48, 48, seed=2)]}
    processed = llm.processor.process(prompt["prompt"], prompt["images"])
    n = len(processed.token_ids)
    probe = (n - 4, n - 20, n - 6)
    llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2))  # warm the prefix cache
    rid = llm.add_request(prompt, SamplingParams(temperature=0, max_tokens=1), attention_probe=probe)
    out = None
    while out is None:
        out = next((o for o in llm.step() if o.request_id == rid), None)
    assert out.num_cached_tokens <= probe[0]

    ref = Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_checkpoint), dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    with torch.no_grad():
        attn = ref(**hf_inputs(processed, llm.model_cfg.image_token_id), output_attentions=True).attentions[-1][0]
    want = attn[:, probe[0]:, probe[1]:probe[2]].sum(dim=(0, 1))
    torch.testing.assert_close(out.attention_scores, want, rtol=1e-4, atol=1e-5)
