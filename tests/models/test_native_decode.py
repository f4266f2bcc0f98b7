"""The native decode stack (csrc/decode_stack.cpp, models/native_decode.py) against the eager
per-layer path: the same greedy tokens and bit-identical logprobs in float32 and bfloat16, at
batch 1 and 3, across block boundaries, with attention biases, with products routed to either
GEMM, and on the static-buffer path's padding rows; it steps aside for prefill, for attention
hooks and when turned off; bad arguments raise before anything is written."""
import pytest
import torch

from baton import LLM, SamplingParams
from baton.models import native_decode
from baton.models.native_decode import NativeDecode
from baton.models.synthetic import build_synthetic_checkpoint

pytestmark = pytest.mark.skipif(not native_decode.AVAILABLE, reason="native extension not built")

PROMPTS = ["<|im_start|>user\nwhy is the sky blue<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\ncount<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\n" + "tell me more " * 9 + "<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def bias_checkpoint(tmp_path_factory):
    """Attention biases on (as Qwen2-style checkpoints have), GQA 4:1, head_dim 32."""
    cfg = {"text_config": {"attention_bias": True, "num_attention_heads": 4, "num_key_value_heads": 1,
                           "head_dim": 32, "num_hidden_layers": 3}}
    return build_synthetic_checkpoint(tmp_path_factory.mktemp("bias"), cfg, seed=3)


def make_llm(path, **kwargs):
    # no prefix cache: the second run must prefill as the first did (a cache hit rounds differently)
    return LLM(str(path), device="cpu", attention_backend="torch", enable_prefix_caching=False, **kwargs)


def generate(llm, prompts, monkeypatch, native: bool, tokens: int = 40):
    """(token ids, logprobs) per prompt, and the batch size of each step the native stack ran."""
    monkeypatch.setenv(native_decode.ENV, "1" if native else "0")
    calls = []
    original = NativeDecode.__call__

    def counted(self, *args):
        calls.append(args[0].shape[0])
        return original(self, *args)

    monkeypatch.setattr(NativeDecode, "__call__", counted)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, logprobs=2))
    monkeypatch.setattr(NativeDecode, "__call__", original)
    return [(o.token_ids, o.logprobs) for o in outs], calls


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3])
def test_native_stack_equals_the_eager_path(tiny_checkpoint, monkeypatch, dtype, batch):
    llm = make_llm(tiny_checkpoint, dtype=dtype)
    eager, eager_calls = generate(llm, PROMPTS[:batch], monkeypatch, native=False)
    native, native_calls = generate(llm, PROMPTS[:batch], monkeypatch, native=True)
    assert eager_calls == [] and len(native_calls) >= 39  # every decode step, none of the prefills
    assert native == eager  # 40 tokens cross two 16-token blocks


def test_status_in_stats_and_info(tiny_llm_factory, monkeypatch):
    from baton.engine.info_command import collect

    llm = tiny_llm_factory()
    assert llm.stats()["cpu_kernels"]["decode_stack"] == "native"
    monkeypatch.setenv(native_decode.ENV, "0")
    assert llm.stats()["cpu_kernels"]["decode_stack"] == "off (BATON_NATIVE_DECODE=0)"
    assert collect()["decode_stack"] == "off (BATON_NATIVE_DECODE=0)"


def test_native_stack_with_attention_biases(bias_checkpoint, monkeypatch):
    llm = make_llm(bias_checkpoint, dtype="float32")
    assert llm.runner.model.language_model.layers[0].self_attn.qkv_proj.bias is not None
    eager, _ = generate(llm, PROMPTS, monkeypatch, native=False, tokens=20)
    native, calls = generate(llm, PROMPTS, monkeypatch, native=True, tokens=20)
    assert calls and native == eager


@pytest.mark.parametrize("route", ["torch", "native"])
def test_native_stack_follows_the_linear_routing(tiny_checkpoint, monkeypatch, route):
    from baton.kernels import cpu_routing

    monkeypatch.setenv(cpu_routing.ENV_MODE, route)
    cpu_routing.reset()
    try:
        llm = make_llm(tiny_checkpoint, dtype="float32")
        nd = llm.runner.model.language_model.native_decode
        with torch.inference_mode():
            assert nd._routes(torch.zeros(2, 64)) == [route == "native"] * 4
        eager, _ = generate(llm, PROMPTS, monkeypatch, native=False, tokens=12)
        native, calls = generate(llm, PROMPTS, monkeypatch, native=True, tokens=12)
        assert calls and native == eager
    finally:
        monkeypatch.delenv(cpu_routing.ENV_MODE)
        cpu_routing.reset()


def test_static_buffers_with_padding_rows(tiny_checkpoint, monkeypatch):
    """Three sequences in the bucket of 4: the padding row stores nothing and attends to nothing."""
    llm = make_llm(tiny_checkpoint, dtype="float32", use_cuda_graphs=True)
    eager, _ = generate(llm, PROMPTS, monkeypatch, native=False, tokens=20)
    native, calls = generate(llm, PROMPTS, monkeypatch, native=True, tokens=20)
    assert 4 in calls and native == eager
    s = llm.stats()
    assert s["kv_blocks_free"] == s["kv_blocks_total"]


def test_an_attention_hook_keeps_the_eager_path(tiny_llm_factory, monkeypatch):
    llm = tiny_llm_factory()
    seen = []
    attn = llm.runner.model.language_model.layers[-1].self_attn.attn
    handle = attn.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        _, calls = generate(llm, PROMPTS[:1], monkeypatch, native=True, tokens=5)
    finally:
        handle.remove()
    assert calls == [] and seen.count(1) == 4  # the hook saw each of the 4 decode steps


def _stack_args(llm):
    dec = llm.runner.model.language_model
    layers = [native_decode._layer_tensors(layer, kv) for layer, kv in zip(dec.layers, llm.runner.kv_caches)]
    a = dec.layers[0].self_attn
    return dec, layers, (a.num_heads, a.num_kv_heads, a.head_dim, 1e-6, a.attn.scale)


def test_a_model_the_stack_refuses_decodes_per_op(tiny_checkpoint, monkeypatch, caplog):
    llm = make_llm(tiny_checkpoint, dtype="float32")
    eager, _ = generate(llm, PROMPTS[:2], monkeypatch, native=False, tokens=6)

    def refuse(*args):
        raise ValueError("DecodeStack: layer 0 qkv must be ...")

    monkeypatch.setattr(native_decode._native, "DecodeStack", refuse)
    with caplog.at_level("WARNING", logger="baton"):
        got, calls = generate(llm, PROMPTS[:2], monkeypatch, native=True, tokens=6)
    assert calls == [] and got == eager
    assert sum("native decode stack off" in r.message for r in caplog.records) == 1  # warned once


def test_construction_checks_name_the_bad_tensor(tiny_llm_factory):
    dec, layers, cfg = _stack_args(tiny_llm_factory())
    bad = [list(layer) for layer in layers]
    bad[1][8] = bad[1][8][:, :-1].contiguous()  # gate_up of layer 1 one column short
    with pytest.raises(ValueError, match="layer 1 gate_up"):
        native_decode._native.DecodeStack(bad, *cfg)
    bad = [list(layer) for layer in layers]
    bad[0][1] = bad[0][1].to(torch.bfloat16)
    with pytest.raises(ValueError, match="layer 0 qkv"):
        native_decode._native.DecodeStack(bad, *cfg)
    with pytest.raises(ValueError, match="head_dim"):
        native_decode._native.DecodeStack(layers, cfg[0], cfg[1], 12, *cfg[3:])


def test_bad_step_arguments_raise_before_the_cache_is_written(tiny_llm_factory):
    llm = tiny_llm_factory()
    dec, layers, cfg = _stack_args(llm)
    stack = native_decode._native.DecodeStack(layers, *cfg)
    k_cache = llm.runner.kv_caches[0][0]
    before = k_cache.clone()
    hidden, half = dec.cfg.hidden_size, cfg[2] // 2
    x, cos, sin = torch.randn(1, hidden), torch.ones(1, half), torch.zeros(1, half)
    tables, lens = torch.zeros(1, 2, dtype=torch.int32), torch.tensor([3], dtype=torch.int32)
    num_blocks = k_cache.shape[0]
    with pytest.raises(ValueError, match="block_tables"):
        stack.forward(x, cos, sin, torch.tensor([0]), torch.full((1, 2), num_blocks, dtype=torch.int32), lens,
                      [True] * 4)
    with pytest.raises(ValueError, match="slot_mapping"):
        stack.forward(x, cos, sin, torch.tensor([num_blocks * k_cache.shape[1]]), tables, lens, [True] * 4)
    with pytest.raises(ValueError, match="x must be"):
        stack.forward(x.to(torch.bfloat16), cos, sin, torch.tensor([0]), tables, lens, [True] * 4)
    with pytest.raises(ValueError, match="cos and sin"):
        stack.forward(x, cos[:, :-1], sin, torch.tensor([0]), tables, lens, [True] * 4)
    assert torch.equal(k_cache, before)
    out, residual = stack.forward(x, cos, sin, torch.tensor([0]), tables, lens, [True] * 4)
    assert out.shape == residual.shape == (1, hidden) and not torch.equal(k_cache, before)


def test_a_strided_input_gives_the_contiguous_result(tiny_llm_factory):
    llm = tiny_llm_factory()
    dec, layers, cfg = _stack_args(llm)
    stack = native_decode._native.DecodeStack(layers, *cfg)
    hidden, half = dec.cfg.hidden_size, cfg[2] // 2
    x = torch.randn(hidden, 2).t()  # [2, hidden], strided
    cos, sin = torch.rand(2, half), torch.rand(2, half)
    step = (torch.tensor([0, 1]), torch.zeros(2, 1, dtype=torch.int32), torch.tensor([1, 2], dtype=torch.int32))
    caches = [t for kv in llm.runner.kv_caches for t in kv]
    saved = [t.clone() for t in caches]
    want = stack.forward(x.contiguous(), cos, sin, *step, [True] * 4)
    for t, s in zip(caches, saved):
        t.copy_(s)
    got = stack.forward(x, cos, sin, *step, [True] * 4)
    assert not x.is_contiguous() and all(torch.equal(a, b) for a, b in zip(got, want))


def test_profile_splits_a_step_by_op_and_is_off_by_default(tiny_llm_factory):
    import time

    llm = tiny_llm_factory()
    dec, layers, cfg = _stack_args(llm)
    stack = native_decode._native.DecodeStack(layers, *cfg)
    hidden, half = dec.cfg.hidden_size, cfg[2] // 2
    args = (torch.randn(1, hidden), torch.rand(1, half), torch.rand(1, half), torch.tensor([0]),
            torch.zeros(1, 1, dtype=torch.int32), torch.tensor([1], dtype=torch.int32), [True] * 4)
    names = ["input_norm", "qkv", "qk_norm", "rotary", "kv_store", "attention", "o", "post_norm", "gate_up",
             "silu_mul", "down"]
    stack.forward(*args)
    assert not stack.profiling and stack.profiled_steps == 0
    assert stack.profile() == [(n, 0.0) for n in names]  # off: no clock read, nothing charged
    stack.profiling = True
    t0 = time.perf_counter()
    for _ in range(3):
        stack.forward(*args)
    wall = time.perf_counter() - t0
    prof = dict(stack.profile())
    assert list(prof) == names and stack.profiled_steps == 3
    assert all(s > 0 for s in prof.values())  # every op charged on every layer
    assert sum(prof.values()) <= wall  # laps partition the calls' time, never double-count it
    stack.reset_profile()
    assert stack.profiled_steps == 0 and all(s == 0.0 for _, s in stack.profile())


def test_decode_profile_bench_runs_on_a_tiny_model():
    import pathlib
    import subprocess
    import sys

    bench = pathlib.Path(__file__).resolve().parents[2] / "bench" / "decode_profile.py"
    out = subprocess.run([sys.executable, str(bench), "--preset", "tiny", "--dtype", "float32", "--repeats", "1",
                          "--new-tokens", "4", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert {"qkv", "attention", "silu_mul", "down", "outside"} <= rows
    assert "CPU flags:" in out.stdout
