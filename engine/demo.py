"""`baton demo`: the main job on an embedded default. The committed SynthVQA pair (two tiny
Qwen3-VL checkpoints trained on the synthetic visual task of models/synthvqa_task.py) answers
held-out questions in every multi-agent mode, beside the correct answers. Without that pair
(e.g. deleted) it falls back to a random-weight synthetic pair, whose answers are meaningless.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

DEMO_SMALL = "demo-small"
DEMO_LARGE = "demo-large"


def make_demo_image(width: int = 224, height: int = 160, seed: int = 0) -> Image.Image:
    """A deterministic test picture: colour gradients with a few solid rectangles."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (x + y) * 255 // max(width + height - 2, 1)], axis=-1).astype(np.uint8)
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        img[y0:y0 + rng.integers(10, 40), x0:x0 + rng.integers(10, 60)] = rng.integers(0, 256, 3)
    return Image.fromarray(img, "RGB")


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:8.1f} ms"


def print_output(title: str, out) -> None:
    m = out.metrics
    n = len(out.token_ids)
    print(f"--- {title}")
    print(f"answer      : {out.text!r}")
    print(f"tokens      : prompt {len(out.prompt_token_ids)}, cached {out.num_cached_tokens}, "
          f"generated {n} ({out.finish_reason})")
    print(f"vision      : {_fmt_ms(m.vision_encoder_time)}  ({out.num_vision_encoder_calls} encoder call(s))")
    print(f"prefill     : {_fmt_ms(m.prefill_time)}")
    per_tok = m.decode_time / max(n - 1, 1)
    print(f"decode      : {_fmt_ms(m.decode_time)}  ({per_tok * 1e3:.2f} ms/token)")
    print(f"TTFT / e2e  : {_fmt_ms(m.ttft)} / {_fmt_ms(m.e2e)}")


def print_stages(res) -> None:
    """One line per stage of a MultiAgent result."""
    print(f"  {'stage':<16}{'model':<7}{'prompt':>7}{'cached':>8}{'output':>8}{'vision':>8}{'TTFT s':>9}"
          f"{'decode s':>9}{'seconds':>9}")
    for st in res.stages:
        ttft = "-" if st.ttft is None else f"{st.ttft:.3f}"
        print(f"  {st.name:<16}{st.model:<7}{st.prompt_tokens:>7}{st.cached_tokens:>8}{st.output_tokens:>8}"
              f"{st.vision_encoder_calls:>8}{ttft:>9}{st.decode_seconds:>9.3f}{st.seconds:>9.3f}")


def print_cache_figures(name: str, llm) -> None:
    s = llm.stats()
    print(f"{name:<6}: prefix cache hit {s['prefix_cache_hit_tokens']}/{s['prefix_cache_queried_tokens']} "
          f"prompt tokens, encoder cache hits {s['encoder_cache_hits']}, vision encoder calls "
          f"{s['vision_encoder_calls']}, KV blocks free {s['kv_blocks_free']}/{s['kv_blocks_total']}")


DEMO_MODES = ("small", "large", "small-reason", "large-reason", "transfer", "auto")


def run_demo(cache_dir: str | None = None, max_tokens: int = 24) -> None:
    from baton.errors import CheckpointError
    from baton.models.synthvqa_task import trained_pair

    try:
        pair = trained_pair()
    except CheckpointError as e:
        print(f"({e}; using a random-weight pair instead)")
        return run_random_demo(cache_dir, max_tokens)
    run_trained_demo(*pair)


def run_trained_demo(small, large, per_tier: int = 1, seed: int = 7) -> None:
    from baton import MultiAgent, SamplingParams
    from baton.engine.answers import normalize_answer
    from baton.models.param_counts import parameter_counts
    from baton.models.config import load_config
    from baton.models.synthvqa_task import TIERS, generate

    sizes = [parameter_counts(load_config(p)).total / 1e6 for p in (small, large)]
    print(f"Baton demo: a Qwen3-VL pair trained on SynthVQA (coloured squares on a 4x4 grid), "
          f"small {sizes[0]:.1f}M and large {sizes[1]:.1f}M parameters, one tokenizer.")
    t0 = time.perf_counter()
    team = MultiAgent(str(small), str(large), kv_cache_bytes=64 << 20, reason_max_tokens=64,
                      brief_max_tokens=6, selector="entropy", budget=0.5)
    print(f"engines     : {small}\n              {large}  (loaded in {time.perf_counter() - t0:.2f} s)")
    items = generate("heldout", per_tier * len(TIERS), seed=seed)
    llm = team.engines["large"]
    params = SamplingParams(temperature=0, max_tokens=6)
    print_output("large model, LLM.chat, cold", llm.chat(items[0].messages(), params)[0])
    print_output("large model, same request again", llm.chat(items[0].messages(), params)[0])

    print("\nHeld-out questions (never seen in training); each cell: answer, ok / X, milliseconds.")
    print("transfer and auto send the small model's reasoning (entropy selector, 50% of its tokens).")
    width = 15
    print(f"\n{'tier':<9}{'correct':<9}" + "".join(f"{m:<{width}}" for m in DEMO_MODES))
    last = {}
    for item in items:
        cells = []
        for mode in DEMO_MODES:
            res = team.run(item.messages(), mode=mode)
            ok = "ok" if normalize_answer(res.answer) == normalize_answer(item.answer) else "X"
            cells.append(f"{res.answer[:6]} {ok} {res.seconds * 1e3:.0f}"[:width - 1].ljust(width))
            last[mode] = res
        print(f"{item.tier:<9}{item.answer:<9}" + "".join(cells))
        print(f"{'':<9}Q: {item.question}")
    print(f"\nPer-stage view of the last question ({items[-1].question!r}, correct {items[-1].answer!r}):")
    for mode in DEMO_MODES:
        res = last[mode]
        print(f"\n=== mode {mode}: path {res.mode}, {res.seconds * 1e3:.0f} ms, answer {res.answer!r}")
        if res.transferred_token_ids:
            print(f"  transferred {len(res.transferred_token_ids)} reasoning tokens: {res.transferred_text!r}")
        print_stages(res)
    print()
    for name, eng in team.engines.items():
        print_cache_figures(name, eng)
    print("\nThe full table over every selector and budget: `baton eval` (or `baton eval --quick`).")


def run_random_demo(cache_dir: str | None = None, max_tokens: int = 24) -> None:
    from baton import MultiAgent, SamplingParams
    from baton.models.synthetic import ensure_checkpoint

    print("Baton demo: synthetic random-weight Qwen3-VL pair (same tokenizer, different sizes).")
    print("The weights are random, so the answers are meaningless; the mechanics and timings are real.")
    t0 = time.perf_counter()
    small = ensure_checkpoint(DEMO_SMALL, cache_dir)
    large = ensure_checkpoint(DEMO_LARGE, cache_dir)
    print(f"checkpoints : {small}\n              {large}  ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    team = MultiAgent(str(small), str(large), kv_cache_bytes=256 << 20, reason_max_tokens=48,
                      brief_max_tokens=8, selector="entropy", budget=0.5)
    print(f"engines     : loaded in {time.perf_counter() - t0:.2f} s")
    image = make_demo_image()
    messages = [{"role": "user", "content": [
        {"type": "image", "image": image},
        {"type": "text", "text": "Which colour covers most of the picture?"},
    ]}]

    # One engine on its own: LLM.chat, cold then repeated (prefix + encoder cache).
    llm = team.engines["large"]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    print_output("large model, LLM.chat, cold", llm.chat(messages, params)[0])
    print_output("large model, same request again", llm.chat(messages, params)[0])

    for mode in DEMO_MODES:
        res = team.run(messages, mode=mode)
        print(f"\n=== mode {mode}: path {res.mode}, {res.seconds * 1e3:.0f} ms, answer {res.answer!r}")
        if res.transferred_token_ids:
            print(f"  transferred {len(res.transferred_token_ids)} reasoning tokens (entropy selector, budget 50%)")
        print_stages(res)
    print()
    for name, eng in team.engines.items():
        print_cache_figures(name, eng)
