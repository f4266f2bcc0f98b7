"""CPU weights on transparent huge pages (models/huge_pages.py)."""
import mmap

import pytest
import torch
from torch import nn

from baton.models import huge_pages
from baton.models.huge_pages import huge_page_arena, huge_page_share, move_parameters_to_huge_pages

THP_ADVISABLE = huge_pages.huge_pages_enabled() and huge_pages.thp_mode() in ("always", "madvise")


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(300, 64)
        self.proj = nn.Linear(64, 77)  # odd sizes: offsets between tensors must stay aligned
        self.head = nn.Linear(64, 300, bias=False)
        self.head.weight = self.embed.weight


def test_parameters_keep_values_and_ties_in_one_arena():
    m = Tied()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    params = list(m.parameters())
    nbytes = move_parameters_to_huge_pages(m)
    assert list(m.parameters()) == params  # the same Parameter objects, rebound
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n
    assert m.head.weight is m.embed.weight
    for p in m.parameters():  # a storage each: torch.save and safetensors see separate tensors
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    ptrs = sorted(p.data_ptr() for p in m.parameters())
    assert all(p % 256 == 0 for p in ptrs)
    assert ptrs[-1] - ptrs[0] < nbytes
    assert nbytes >= sum(p.numel() * p.element_size() for p in m.parameters())


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv(huge_pages.ENV, "0")
    m = Tied()
    ptrs = [p.data_ptr() for p in m.parameters()]
    assert move_parameters_to_huge_pages(m) == 0
    assert [p.data_ptr() for p in m.parameters()] == ptrs


@pytest.mark.skipif(not THP_ADVISABLE, reason="the kernel gives no transparent huge pages here")
def test_the_arena_is_backed_by_huge_pages_where_heap_memory_is_not():
    arena = huge_page_arena(3 << 20).view(torch.float32)
    arena.fill_(1.0)
    assert huge_page_share(arena) > 0.5
    if huge_pages.thp_mode() == "madvise":  # the same kind of mapping, not advised: 4 KiB pages
        mm = mmap.mmap(-1, 6 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        plain = torch.frombuffer(mm, dtype=torch.uint8)
        plain.fill_(1)
        assert huge_page_share(plain) == 0.0


def test_engine_weights_follow_the_setting(tiny_llm_factory, monkeypatch):
    from baton import SamplingParams
    from baton.engine.info_command import collect

    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    on = tiny_llm_factory()
    monkeypatch.setenv(huge_pages.ENV, "0")
    off = tiny_llm_factory()
    assert collect()["huge_pages"]["weights"] is False
    assert off.stats()["cpu_kernels"]["weights_on_huge_pages"] == 0.0
    if THP_ADVISABLE:
        assert on.stats()["cpu_kernels"]["weights_on_huge_pages"] > 0.5
    assert on.generate("a b c", params)[0].token_ids == off.generate("a b c", params)[0].token_ids
