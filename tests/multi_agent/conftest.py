import pytest

from baton import LLM
from baton.engine.demo import make_demo_image
from baton.models.synthetic import build_synthetic_checkpoint


def question(seed=1, text="What colour is the largest box?"):
    return [{"role": "user", "content": [{"type": "image", "image": make_demo_image(64, 48, seed=seed)},
                                         {"type": "text", "text": text}]}]


def engine(path, **kw):
    return LLM(str(path), device="cpu", dtype="float32", attention_backend="torch", **kw)


@pytest.fixture(scope="session")
def agent_pair(tmp_path_factory, tiny_checkpoint):
    """Paths of a tiny small / large pair that share one tokenizer (their briefs disagree)."""
    large = build_synthetic_checkpoint(tmp_path_factory.mktemp("pair-large"), "tiny-hd32", seed=5)
    return tiny_checkpoint, large
