"""A failure inside a step fails that step's requests only; the engine keeps serving, frees
every block, and later requests match a fresh engine. One engine is safe to share between
threads."""
import threading

import pytest
import torch

from baton import SamplingParams
from tests.helpers import assert_pool_clean, chat_prompt


GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(tiny_llm_factory):
    fresh = tiny_llm_factory(max_model_len=256)
    return lambda text: fresh.generate(chat_prompt(text), GREEDY)[0].token_ids


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(tiny_llm_factory, reference):
    llm = tiny_llm_factory(max_model_len=256)
    steps = []

    def explode_on_third(batch):
        steps.append([s.request_id for s in batch.seqs])
        if len(steps) == 3:
            raise RuntimeError("injected fault")

    llm.fault_hook = explode_on_third
    outs = llm.generate([chat_prompt("one"), chat_prompt("two")], GREEDY)
    llm.fault_hook = None
    assert [o.finish_reason for o in outs] == ["error", "error"]
    assert all("injected fault" in o.error for o in outs)
    assert all(len(o.token_ids) == 2 for o in outs)  # the two tokens of the steps before the fault
    assert_pool_clean(llm)
    after = llm.generate(chat_prompt("three"), GREEDY)[0]
    assert after.finish_reason == "length" and after.token_ids == reference("three")
    assert_pool_clean(llm)


def test_requests_outside_the_failed_step_are_untouched(tiny_llm_factory, reference):
    llm = tiny_llm_factory(max_model_len=256, max_num_seqs=1)  # one request per step
    first = {}

    def fail_first_request(batch):
        first.setdefault("rid", batch.seqs[0].request_id)
        if batch.seqs[0].request_id == first["rid"]:
            raise ValueError("bad step")

    llm.fault_hook = fail_first_request
    outs = llm.generate([chat_prompt("one"), chat_prompt("two")], GREEDY)
    assert outs[0].finish_reason == "error" and "ValueError: bad step" in outs[0].error
    assert outs[1].finish_reason == "length" and outs[1].token_ids == reference("two")
    assert_pool_clean(llm)


def test_non_finite_logits_fail_only_their_request(tiny_llm_factory, reference):
    llm = tiny_llm_factory(max_model_len=256)
    compute = llm.model.compute_logits
    poisoned = {}

    def nan_for_first_row(hidden):
        logits = compute(hidden)
        if not poisoned and logits.shape[0] == 2:
            poisoned["done"] = True
            logits[0] = float("nan")
        return logits

    llm.model.compute_logits = nan_for_first_row
    outs = llm.generate([chat_prompt("one"), chat_prompt("two")], GREEDY)
    assert outs[0].finish_reason == "error" and outs[0].error == "the model produced non-finite logits"
    assert outs[1].finish_reason == "length" and outs[1].token_ids == reference("two")
    assert_pool_clean(llm)
    again = llm.generate(chat_prompt("one"), GREEDY)[0]  # nothing of the failed step was cached
    assert again.token_ids == reference("one")


def test_nan_weights_give_errors_not_token_zero(tiny_llm_factory):
    llm = tiny_llm_factory(max_model_len=256)  # NaNs set after loading, past any load-time check
    with torch.no_grad():
        next(p for n, p in llm.model.named_parameters() if "layers.0" in n and p.dim() == 2).fill_(float("nan"))
    out = llm.generate([chat_prompt("x")], GREEDY)[0]
    assert out.finish_reason == "error" and "non-finite" in out.error and out.token_ids == []
    assert_pool_clean(llm)


def test_four_threads_share_one_engine(tiny_llm_factory, reference):
    """4 threads x 20 requests: generate, stream, batched chat-style generate, and one
    add_request/step loop with aborts. Every output equals its single-thread result (or is
    the abort that was asked for), and nothing leaks."""
    llm = tiny_llm_factory(max_model_len=256)
    texts = [f"question {i % 7}" for i in range(20)]
    want = {t: reference(t) for t in set(texts)}
    got, errors, aborted = [], [], []
    lock = threading.Lock()

    def record(text, out):
        with lock:
            got.append((text, out))

    def by_generate():
        for t in texts:
            record(t, llm.generate(chat_prompt(t), GREEDY)[0])

    def by_stream():
        for t in texts:
            record(t, list(llm.stream(chat_prompt(t), GREEDY))[-1])

    def by_batches():
        for i in range(0, 20, 5):
            for t, o in zip(texts[i:i + 5], llm.generate([chat_prompt(t) for t in texts[i:i + 5]], GREEDY)):
                record(t, o)

    def by_step_loop():
        rids = {llm.add_request(chat_prompt(t), GREEDY): t for t in texts}
        for rid in list(rids)[::5]:
            if llm.abort(rid) is not None:
                aborted.append(rid)
        pending = set(rids) - set(aborted)
        for _ in range(2000):
            if not pending:
                break
            for o in llm.step():
                if o.finished:
                    pending.discard(o.request_id)
                    record(rids[o.request_id], o)

    def guard(fn):
        def run():
            try:
                fn()
            except Exception as e:  # surfaced below
                errors.append(e)
        return run

    threads = [threading.Thread(target=guard(f)) for f in (by_generate, by_stream, by_batches, by_step_loop)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not errors, errors
    # an abort may find its request already finished by another thread's steps
    assert len(got) == 80 - len(aborted) and len(aborted) <= 4
    for text, out in got:
        assert out.finish_reason == "length", (text, out.finish_reason, out.error)
        assert out.token_ids == want[text], text
    assert_pool_clean(llm)
