import os

# Triton kernels must see the interpreter flag before they are decorated; CPU machines have
# no GPU, so every Triton test runs interpreted there.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight Qwen3-VL checkpoint in the Hugging Face layout."""
    from baton.models.synthetic import build_synthetic_checkpoint

    return build_synthetic_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_llm_factory(tiny_checkpoint):
    """Builds engines over the shared tiny checkpoint (fp32, torch backend, CPU)."""
    from baton import LLM

    def make(**kwargs):
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("attention_backend", "torch")
        return LLM(str(tiny_checkpoint), **kwargs)

    return make
