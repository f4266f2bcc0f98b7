"""The whole engine on the Triton backend (interpreted on CPU) vs the torch backend."""
import os

import pytest

from baton import SamplingParams
from baton.engine.demo import make_demo_image

PAD = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not __import__("torch").cuda.is_available(),
                    reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_backend_greedy_tokens_equal_torch_backend(tiny_llm_factory):
    prompts = [
        {"prompt": f"<|im_start|>user\n{PAD}What is shown?<|im_end|>\n<|im_start|>assistant\n",
         "images": [make_demo_image(48, 48, seed=1)]},
        "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    ]
    # a small token budget forces chunked prefill: extend steps with a cached prefix, mixed with decodes
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    want = [o.token_ids for o in tiny_llm_factory(max_num_batched_tokens=20).generate(prompts, params)]
    triton = tiny_llm_factory(attention_backend="triton", max_num_batched_tokens=20)
    assert triton.backend == "triton"
    got = [o.token_ids for o in triton.generate(prompts, params)]
    assert got == want
