"""Checks of constructor options (LLM, MultiAgent): each bad value raises InvalidRequestError
naming the option, before anything is loaded."""
from __future__ import annotations

from baton.errors import InvalidRequestError


def check_int(name: str, value, minimum: int = 1, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        none = " or None" if optional else ""
        raise InvalidRequestError(f"{name} must be an integer >= {minimum}{none}, got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be True or False, got {value!r}")


def check_llm_options(*, block_size, kv_cache_bytes, max_num_seqs, max_num_batched_tokens, max_model_len,
                      encoder_cache_bytes, enable_prefix_caching, check_weights, max_image_pixels) -> None:
    """The numeric and boolean options of LLM(); device, dtype and attention_backend are
    checked where they are resolved."""
    check_int("block_size", block_size)
    if block_size & (block_size - 1):
        raise InvalidRequestError(f"block_size must be a power of two, got {block_size}")
    check_int("kv_cache_bytes", kv_cache_bytes, optional=True)
    check_int("max_num_seqs", max_num_seqs)
    check_int("max_num_batched_tokens", max_num_batched_tokens)
    check_int("max_model_len", max_model_len, 2, optional=True)  # a 1-token prompt + 1 token
    check_int("encoder_cache_bytes", encoder_cache_bytes, 0)
    check_int("max_image_pixels", max_image_pixels, optional=True)
    check_bool("enable_prefix_caching", enable_prefix_caching)
    check_bool("check_weights", check_weights)
