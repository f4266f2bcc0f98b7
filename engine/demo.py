"""`baton demo`: the main job on an embedded default. Builds a small synthetic Qwen3-VL pair
(random weights, local tokenizer) if absent, generates an image, and runs the engine on it.

The weights are random, so the answers are meaningless; the mechanics and timings are real.
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


def run_demo(cache_dir: str | None = None, max_tokens: int = 24) -> None:
    from engine import LLM, SamplingParams
    from models.synthetic import ensure_checkpoint

    print("Baton demo: synthetic random-weight Qwen3-VL checkpoints (answers are meaningless;")
    print("the mechanics and timings are real).")
    t0 = time.perf_counter()
    small = ensure_checkpoint(DEMO_SMALL, cache_dir)
    large = ensure_checkpoint(DEMO_LARGE, cache_dir)
    print(f"checkpoints : {small}\n              {large}  ({time.perf_counter() - t0:.1f} s)")
    image = make_demo_image()
    messages = [{"role": "user", "content": [
        {"type": "image", "image": image},
        {"type": "text", "text": "What is in this picture? Answer briefly."},
    ]}]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for name, path in (("small", small), ("large", large)):
        t0 = time.perf_counter()
        llm = LLM(str(path))
        print(f"\n[{name}] loaded in {time.perf_counter() - t0:.2f} s "
              f"({llm.device}, {str(llm.dtype).replace('torch.', '')}, backend {llm.backend})")
        print_output(f"{name}: cold", llm.chat(messages, params)[0])
        print_output(f"{name}: same request again (prefix + encoder cache)", llm.chat(messages, params)[0])
        s = llm.stats()
        print(f"cache       : prefix hit {s['prefix_cache_hit_tokens']}/{s['prefix_cache_queried_tokens']} tokens, "
              f"encoder hits {s['encoder_cache_hits']}, vision encoder calls {s['vision_encoder_calls']}, "
              f"KV blocks free {s['kv_blocks_free']}/{s['kv_blocks_total']}")
