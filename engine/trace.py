"""Stage records of multi-agent requests and their Chrome / Perfetto trace export."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StageRecord:
    name: str
    model: str  # "small" | "large"
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    seconds: float
    vision_encoder_calls: int
    start: float  # seconds since the batch started
    end: float
    text: str = ""
    ttft: float | None = None
    decode_seconds: float = 0.0
    prompt_token_ids: list[int] | None = None
    decode_batch: float = 1.0  # sequences per decode step, on average, on the stage's engine


def chrome_trace(results, first_pid: int = 0) -> dict:
    """{"traceEvents": [...]}: one process per request, one thread per model, one complete
    event ("ph": "X", microseconds) per stage with its token counts as args."""
    events = []
    for pid, res in enumerate(results, start=first_pid):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"request {pid} ({res.mode})"}})
        for tid, model in enumerate(("small", "large")):
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": model}})
        for st in res.stages:
            events.append({
                "name": st.name, "cat": st.model, "ph": "X", "pid": pid,
                "tid": 0 if st.model == "small" else 1,
                "ts": round(st.start * 1e6, 1), "dur": round((st.end - st.start) * 1e6, 1),
                "args": {"prompt_tokens": st.prompt_tokens, "cached_tokens": st.cached_tokens,
                         "output_tokens": st.output_tokens, "vision_encoder_calls": st.vision_encoder_calls},
            })
    return {"traceEvents": events, "displayTimeUnit": "ms"}
