"""The streaming engine step: per-step outputs with text deltas, `LLM.stream`, and outputs
that always reach the caller that submitted the request."""
import pytest

from baton import InvalidRequestError, SamplingParams
from tests.helpers import PAD, assert_pool_clean, chat_prompt


def greedy(n=10, **kw):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def llm(tiny_llm_factory):
    return tiny_llm_factory(max_model_len=256)


def test_stream_deltas_join_to_the_final_text_of_generate(llm):
    ref = llm.generate(chat_prompt("tell me"), greedy(12))[0]
    outs = list(llm.stream(chat_prompt("tell me"), greedy(12)))
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    assert "".join(o.delta for o in outs) == outs[-1].text == ref.text
    assert outs[-1].token_ids == ref.token_ids and outs[-1].finish_reason == "length"
    for o in outs[:-1]:
        assert ref.text.startswith(o.text)


def test_first_output_arrives_with_the_first_token(llm):
    stream = llm.stream(chat_prompt("quick"), greedy(8))
    first = next(stream)
    assert len(first.token_ids) == 1 and not first.finished
    assert first.metrics.first_token_time is not None
    second = next(stream)
    assert len(second.token_ids) == 2
    stream.close()  # closing early aborts the request and frees its blocks
    assert_pool_clean(llm)


def test_stream_rejects_a_bad_request_before_iteration(llm):
    with pytest.raises(InvalidRequestError):
        llm.stream({"prompt": PAD + "x", "images": []}, greedy())
    assert_pool_clean(llm)


def test_step_returns_one_output_per_request_that_got_a_token(llm):
    a = llm.add_request(chat_prompt("a"), greedy(4))
    b = llm.add_request(chat_prompt("bb"), greedy(6))
    counts = {a: [], b: []}
    while llm.has_unfinished():
        outs = llm.step()
        assert len({o.request_id for o in outs}) == len(outs)
        for o in outs:
            counts[o.request_id].append(len(o.token_ids))
    assert counts[a] == [1, 2, 3, 4] and counts[b] == [1, 2, 3, 4, 5, 6]
    assert_pool_clean(llm)


def test_stop_string_ends_the_stream_and_is_cut(llm):
    ref = llm.generate(chat_prompt("hello"), greedy(12))[0]
    stop = ref.text[len(ref.text) // 2:len(ref.text) // 2 + 2]
    outs = list(llm.stream(chat_prompt("hello"), greedy(12, stop=[stop])))
    want = ref.text[:ref.text.find(stop)]
    assert outs[-1].finish_reason == "stop" and outs[-1].text == want
    assert "".join(o.delta for o in outs) == want


def test_generate_keeps_outputs_of_requests_it_did_not_submit(llm):
    solo = {p: llm.generate(chat_prompt(p), greedy(n))[0] for p, n in (("x", 9), ("yy", 5), ("zz z", 7))}
    rx = llm.add_request(chat_prompt("x"), greedy(9))
    llm.step()  # rx prefills and gets its first token before generate starts
    stream = llm.stream(chat_prompt("zz z"), greedy(7))
    first_z = next(stream)
    got = llm.generate(chat_prompt("yy"), greedy(5))[0]  # runs rx and the stream's request too
    assert got.token_ids == solo["yy"].token_ids
    rest_z = list(stream)
    z_outs = [first_z, *rest_z]
    assert z_outs[-1].token_ids == solo["zz z"].token_ids
    assert "".join(o.delta for o in z_outs) == solo["zz z"].text
    x_outs = []
    for _ in range(50):  # bounded: a lost output must fail, not hang
        x_outs += [o for o in llm.step() if o.request_id == rx]
        if x_outs and x_outs[-1].finished:
            break
    assert x_outs[-1].token_ids == solo["x"].token_ids
    # outputs taken while others stepped were merged, so the deltas still join up
    assert solo["x"].text.endswith("".join(o.delta for o in x_outs))
    assert_pool_clean(llm)


def test_caller_ids_never_collide_with_automatic_ones(llm):
    mine = llm.add_request(chat_prompt("a"), greedy(2), request_id="req-999999")
    taken = [llm.add_request(chat_prompt("a"), greedy(2)) for _ in range(3)]
    assert mine not in taken and len(set(taken)) == 3
    llm._counter = iter(range(999999, 1000010))  # the next automatic id would be req-999999
    auto = llm.add_request(chat_prompt("a"), greedy(2))
    assert auto != mine
    while llm.has_unfinished():
        llm.step()
    assert_pool_clean(llm)


def test_abort_reaches_the_owner_of_a_generate_call(llm):
    # a request aborted by another caller ends the owner's wait with finish_reason "abort"
    rid_holder = {}
    orig = llm._engine_step

    def step_then_abort():
        orig()
        for rid in list(llm._seqs):
            if rid not in rid_holder:
                rid_holder[rid] = llm.abort(rid)

    llm._engine_step = step_then_abort
    try:
        out = llm.generate([chat_prompt("abort"), chat_prompt("me")], greedy(20))
    finally:
        llm._engine_step = orig
    assert [o.finish_reason for o in out] == ["abort", "abort"]
    assert_pool_clean(llm)


def test_requests_record_the_batch_their_decode_steps_ran_in(llm):
    """Three requests decoded side by side: 5 decode steps each, 3 sequences in every one; a
    request alone: 5 steps of 1."""
    p = greedy(6)
    together = llm.generate([chat_prompt(f"hi {i}") for i in range(3)], p)
    assert [o.metrics.decode_steps for o in together] == [5, 5, 5]
    assert [o.metrics.mean_decode_batch for o in together] == [3.0, 3.0, 3.0]
    (alone,) = llm.generate([chat_prompt("hi")], p)
    assert alone.metrics.decode_batch_total == 5 and alone.metrics.mean_decode_batch == 1.0
