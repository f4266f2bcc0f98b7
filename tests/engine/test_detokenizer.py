"""Incremental detokenisation against the tokenizer's full decode (the reference)."""
import pytest

from baton.engine.detokenizer import MAX_PENDING_TOKENS, IncrementalDetokenizer

MIXED = "The cat 猫 sat on the mat 🐈‍⬛ and said 你好世界! Ünïcödé ok 👍🏽 done."


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from baton.models.processor import Processor

    return Processor(tiny_checkpoint)


def encode(processor, text):
    return processor.tokenizer.encode(text, add_special_tokens=False)


def feed(detok, ids):
    deltas = []
    for t in ids:
        detok.add(t)
        deltas.append(detok.delta(finished=False))
    detok.flush()
    deltas.append(detok.delta(finished=True))
    return deltas


def test_multibyte_characters_are_split_across_tokens(processor):
    # the premise of the next test: CJK and emoji arrive a byte or two per token here
    ids = encode(processor, "猫🐈")
    assert len(ids) > 2
    assert any("\ufffd" in processor.decode(ids[:i]) for i in range(1, len(ids)))


def test_joined_deltas_equal_the_full_decode_and_never_hold_half_a_character(processor):
    ids = encode(processor, MIXED)
    detok = IncrementalDetokenizer(processor.decode)
    deltas = feed(detok, ids)
    assert "".join(deltas) == processor.decode(ids) == MIXED
    assert detok.text == MIXED
    for d in deltas:
        assert "\ufffd" not in d


def test_special_tokens_are_skipped_like_the_full_decode(processor):
    ids = encode(processor, "hello") + [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ids += encode(processor, " world")
    detok = IncrementalDetokenizer(processor.decode)
    assert "".join(feed(detok, ids)) == processor.decode(ids)


@pytest.mark.parametrize("stop", ["sat on", "猫 s", "🐈‍⬛ and", "t 猫", "done."])
def test_stop_string_spanning_tokens_is_cut_exactly(processor, stop):
    ids = encode(processor, MIXED)
    detok = IncrementalDetokenizer(processor.decode, [stop, "never appears"])
    deltas, stopped_at = [], None
    for i, t in enumerate(ids):
        if detok.add(t):
            stopped_at = i
            break
        deltas.append(detok.delta(finished=False))
    deltas.append(detok.delta(finished=True))
    cut = MIXED.find(stop)
    assert detok.stopped and detok.text == MIXED[:cut]
    assert "".join(deltas) == MIXED[:cut]
    # it stopped at the first token whose text completes the stop string, not later
    assert stop in processor.decode(ids[:stopped_at + 1])
    assert stop not in processor.decode(ids[:stopped_at])


def test_no_delta_shows_the_start_of_a_stop_string(processor):
    stop = "said 你好"
    cut = MIXED.find(stop)
    ids = encode(processor, MIXED)
    detok = IncrementalDetokenizer(processor.decode, [stop])
    shown = ""
    for t in ids:
        if detok.add(t):
            break
        shown += detok.delta(finished=False)
        assert len(shown) <= cut, f"{shown[cut:]!r} of the stop string was streamed"
    assert shown == MIXED[:len(shown)]


def test_each_token_decodes_a_bounded_window(processor):
    """The cost per token must not grow with the output: every decode call sees a short
    window, at token 2,000 as at token 10."""
    seen = []

    def decode(ids):
        seen.append(len(ids))
        return processor.decode(ids)

    ids = (encode(processor, MIXED) * 60)[:2000]
    detok = IncrementalDetokenizer(decode, ["zzz-not-there"])
    feed(detok, ids)
    assert len(ids) == 2000
    assert max(seen) <= 2 * MAX_PENDING_TOKENS
    assert detok.text == processor.decode(ids)


def test_invalid_bytes_do_not_grow_the_window_forever(processor):
    # a lone continuation byte never completes a character; the text must still advance
    byte_tok = encode(processor, "猫")[-1:]  # the last byte of a 3-byte character
    ids = byte_tok * 20 + encode(processor, " ok")
    detok = IncrementalDetokenizer(processor.decode)
    deltas = feed(detok, ids)
    assert "".join(deltas) == processor.decode(ids)
    assert sum(len(d) for d in deltas[:10]) > 0  # emitted before the end
