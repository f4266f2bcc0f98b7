"""The static-buffer decode path (CUDA-graph ready; run uncaptured on the CPU) against the
eager path: identical greedy tokens at bucket and non-bucket batch sizes, under preemption and
with prefix-cache hits, no leaked blocks, and padding rows that touch nothing."""
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from baton import SamplingParams
from baton.engine.demo import make_demo_image
from baton.engine.static_decode import StaticDecode, bucket_sizes
from baton.errors import InvalidRequestError
from baton.kernels.registry import get_ops
from baton.models.config import load_config, rope_inv_freq
from baton.models.factory import build_empty

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE = make_demo_image(48, 48, seed=21)


def prompt(i: int):
    text = f"<|im_start|>user\n{PAD if i % 3 == 0 else ''}Question {i}: " + "why " * (i % 5) + \
        "<|im_end|>\n<|im_start|>assistant\n"
    return {"prompt": text, "images": [IMAGE]} if i % 3 == 0 else text


def params(i: int) -> SamplingParams:
    # different lengths: the decode batch shrinks through bucket and non-bucket sizes
    return SamplingParams(temperature=0, max_tokens=4 + 2 * (i % 4), ignore_eos=True)


def run(llm, n: int):
    outs = llm.generate([prompt(i) for i in range(n)], [params(i) for i in range(n)])
    return [o.token_ids for o in outs]


def assert_no_leaks(llm):
    s = llm.stats()
    assert s["kv_blocks_free"] == s["kv_blocks_total"]


def test_bucket_sizes_cover_every_batch_up_to_the_limit():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(3) == [1, 2, 4]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 24]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]


def test_option_auto_is_off_on_the_cpu_and_true_runs_static_buffers(tiny_llm_factory):
    assert tiny_llm_factory().runner.static_decode is None
    static = tiny_llm_factory(use_cuda_graphs=True).runner.static_decode
    assert static is not None and not static.capture  # nothing to capture on the CPU
    with pytest.raises(InvalidRequestError, match="use_cuda_graphs"):
        tiny_llm_factory(use_cuda_graphs="yes")


@pytest.mark.parametrize("batch", [1, 3, 5, 8])
def test_greedy_tokens_identical_to_the_eager_path(tiny_llm_factory, batch):
    want = run(tiny_llm_factory(use_cuda_graphs=False), batch)
    llm = tiny_llm_factory(use_cuda_graphs=True, max_num_seqs=8)
    assert run(llm, batch) == want
    assert llm.runner.static_decode.steps > 0, "decode steps were meant to take the static path"
    assert_no_leaks(llm)


def test_identical_under_preemption(tiny_llm_factory):
    eager = tiny_llm_factory(use_cuda_graphs=False)
    want = run(eager, 10)
    per_block = eager.runner.kv_bytes_per_block(eager.model_cfg, eager.block_size, eager.dtype)
    llm = tiny_llm_factory(use_cuda_graphs=True, kv_cache_bytes=16 * per_block, max_num_batched_tokens=128)
    assert run(llm, 10) == want
    assert llm.stats()["num_preemptions"] > 0, "the pool was meant to be too small to avoid preemption"
    assert llm.runner.static_decode.steps > 0
    assert_no_leaks(llm)


def test_identical_with_prefix_cache_hits(tiny_llm_factory):
    want = run(tiny_llm_factory(use_cuda_graphs=False, enable_prefix_caching=False), 6)
    llm = tiny_llm_factory(use_cuda_graphs=True)
    assert run(llm, 6) == want
    assert run(llm, 6) == want  # warm: prompts served from the prefix cache
    assert llm.stats()["prefix_cache_hit_tokens"] > 0
    assert_no_leaks(llm)


def test_mixed_steps_stay_eager(tiny_llm_factory):
    """A small token budget makes chunked prefills share steps with decodes."""
    want = run(tiny_llm_factory(use_cuda_graphs=False), 4)
    llm = tiny_llm_factory(use_cuda_graphs=True, max_num_batched_tokens=12)
    static = llm.runner.static_decode
    seen = []
    llm.fault_hook = lambda batch: seen.append(static.accepts(batch))
    assert run(llm, 4) == want
    assert True in seen and False in seen
    assert static.steps == seen.count(True)


def test_padding_rows_store_nothing(tiny_llm_factory):
    """Three decoding sequences run in bucket 4: only their three new slots change."""
    llm = tiny_llm_factory(use_cuda_graphs=True)
    static = llm.runner.static_decode
    for i in range(3):
        llm.add_request(prompt(i + 1), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    llm.step()  # the three prefills
    seqs = list(llm.scheduler.running)
    before = llm.runner.kv_cache.clone()
    llm.step()
    assert static.steps == 1 and static.bucket(len(seqs)) == 4
    changed = (llm.runner.kv_cache != before).flatten(4).any(-1).any(0).any(0)  # [blocks, slots]
    bs = llm.block_size
    written = {(s.block_table[t // bs], t % bs) for s in seqs for t in [s.num_computed_tokens - 1]}
    assert {tuple(ix) for ix in changed.nonzero().tolist()} == written


def test_rotary_frequencies_live_on_the_model_device(tiny_llm_factory):
    """A buffer (moved with the model, built once), not a CPU tensor copied every forward."""
    decoder = tiny_llm_factory().model.language_model
    assert "inv_freq" in dict(decoder.named_buffers())
    cfg = decoder.cfg
    torch.testing.assert_close(decoder.inv_freq, rope_inv_freq(cfg.head_dim, cfg.rope_theta), rtol=0, atol=0)


aten = torch.ops.aten
SYNCS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default}


class HostTensorUse(TorchDispatchMode):
    """Records ops that read device values on the host (.item(), nonzero, boolean-mask
    indexing) or take a host tensor: on a GPU a sync or a host->device copy, neither of which
    a captured CUDA graph can hold."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        if (func in SYNCS or (func in INDEXING and any(t.dtype == torch.bool for t in tensors))
                or any(t.device.type == "cpu" and t.dim() for t in tensors)):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_decode_forward_reads_nothing_from_the_host(tiny_checkpoint):
    """The static decode forward on the meta device: any host read or host tensor raises or is
    recorded. The paged-cache kernels are stand-ins (Triton cannot run on meta; the GPU
    acceptance run captures the real ones)."""
    ops = dataclasses.replace(get_ops("torch"), store_kv=lambda k, v, kc, vc, slots: None,
                              paged_decode_attention=lambda q, kc, vc, tables, lens, scale: torch.empty_like(q))
    cfg = load_config(tiny_checkpoint)
    model = build_empty(cfg, ops, torch.float32, "meta")
    t = cfg.text
    kv = torch.zeros(t.num_hidden_layers, 2, 8, 16, t.num_key_value_heads, t.head_dim, device="meta")
    static = StaticDecode(model, [(kv[i, 0], kv[i, 1]) for i in range(t.num_hidden_layers)], max_num_seqs=4,
                          max_blocks_per_seq=8, block_size=16, device=torch.device("meta"), capture=False)
    static.positions = torch.zeros(3, 4, dtype=torch.long, device="meta")
    with HostTensorUse() as seen:
        hidden = static._forward(4)
    assert hidden.shape == (4, t.hidden_size) and seen.ops == []


def test_score_of_a_one_token_step_runs_eagerly(tiny_llm_factory):
    """LLM.score reads attention through a forward hook, which a replayed CUDA graph never
    runs: its one-token step (the rest of the prompt cached) must not take the static path,
    and gives what the eager engine gives."""
    text = prompt(4)
    eager, llm = tiny_llm_factory(use_cuda_graphs=False), tiny_llm_factory(use_cuda_graphs=True)
    n = len(llm.processor.process(text, []).token_ids)
    llm.generate(text, SamplingParams(temperature=0, max_tokens=1))  # caches the prompt
    steps = llm.runner.static_decode.steps
    got = llm.score(text, n - 1, 0, 4)
    assert llm.runner.static_decode.steps == steps
    torch.testing.assert_close(got, eager.score(text, n - 1, 0, 4))
    assert_no_leaks(llm)
