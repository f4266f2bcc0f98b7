"""Prometheus metrics of `baton serve` (prometheus-client), one CollectorRegistry per app so
several servers in one process never share counters.

Counted as they happen: HTTP requests by endpoint and status, engine requests by model and
finish reason (aborts included), time to first token and time per output token histograms,
prompt / cached / generated tokens, multi-agent requests by the path taken. Read from the
engines at scrape time: queue depth, requests in flight, KV blocks (total, in use, cached),
prefix-cache and encoder-cache hits and hit rates, preemptions, running / waiting sequences.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _rate(hits: int, total: int) -> float:
    return hits / total if total else 0.0


class _EngineCollector:
    """Gauges and counters read from AsyncEngine / LLM stats at each scrape."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats()
        yield GaugeMetricFamily("baton_queue_depth", "Requests waiting for their first token (bounded by max_queue)",
                                value=stats["waiting"])
        yield GaugeMetricFamily("baton_requests_in_flight", "Plain requests admitted and not finished",
                                value=stats["in_flight"])
        yield GaugeMetricFamily("baton_multi_agent_in_flight", "Multi-agent requests running",
                                value=stats["multi_agent_in_flight"])
        gauges = {
            "kv_blocks_total": ("KV cache blocks in the pool", lambda s: s["kv_blocks_total"]),
            "kv_blocks_in_use": ("KV blocks held by sequences", lambda s: s["kv_blocks_total"] - s["kv_blocks_free"]),
            "kv_blocks_cached": ("KV blocks in the prefix cache", lambda s: s["kv_blocks_cached"]),
            "prefix_cache_hit_rate": ("Prompt tokens served from the prefix cache / tokens queried",
                                      lambda s: _rate(s["prefix_cache_hit_tokens"], s["prefix_cache_queried_tokens"])),
            "encoder_cache_hit_rate": ("Encoder cache hits / lookups", lambda s: _rate(
                s["encoder_cache_hits"], s["encoder_cache_hits"] + s["encoder_cache_misses"])),
            "running": ("Sequences running in the scheduler", lambda s: s["running"]),
            "waiting": ("Sequences waiting in the scheduler", lambda s: s["waiting"]),
        }
        counters = {
            "prefix_cache_queried_tokens": "Prompt tokens looked up in the prefix cache",
            "prefix_cache_hit_tokens": "Prompt tokens served from the prefix cache",
            "encoder_cache_hits": "Images whose embeddings came from the encoder cache",
            "encoder_cache_misses": "Images the vision encoder had to run on",
            "num_preemptions": "Sequences preempted for lack of KV blocks",
        }
        models = stats["models"]
        for key, (doc, read) in gauges.items():
            family = GaugeMetricFamily(f"baton_{key}", doc, labels=["model"])
            for name, s in models.items():
                family.add_metric([name], read(s))
            yield family
        for key, doc in counters.items():
            family = CounterMetricFamily(f"baton_{key.removeprefix('num_')}", doc, labels=["model"])
            for name, s in models.items():
                family.add_metric([name], s[key])
            yield family


class ServerMetrics:
    def __init__(self, engine):
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter("baton_http_requests", "HTTP requests by endpoint and status code",
                                     ["endpoint", "status"], registry=r)
        self.finished = Counter("baton_requests_finished", "Engine requests by model and finish reason",
                                ["model", "reason"], registry=r)
        self.ttft = Histogram("baton_time_to_first_token_seconds", "Arrival to first token, per request",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("baton_time_per_output_token_seconds", "Decode time per output token after the first",
                              ["model"], buckets=TPOT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("baton_prompt_tokens", "Prompt tokens of finished requests", ["model"], registry=r)
        self.cached_tokens = Counter("baton_cached_prompt_tokens", "Prompt tokens served from the prefix cache",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("baton_generation_tokens", "Generated tokens", ["model"], registry=r)
        self.multi_agent = Counter("baton_multi_agent_requests", "Multi-agent requests by the path taken",
                                   ["path"], registry=r)
        r.register(_EngineCollector(engine))
        engine.add_listener(self.observe_output)

    def observe_output(self, model: str, out) -> None:
        """A finished (or aborted) request of `model` (called from the step thread)."""
        self.finished.labels(model, out.finish_reason or "unknown").inc()
        self.prompt_tokens.labels(model).inc(len(out.prompt_token_ids))
        self.cached_tokens.labels(model).inc(out.num_cached_tokens)
        self.generation_tokens.labels(model).inc(len(out.token_ids))
        m = out.metrics
        if m.ttft is not None:
            self.ttft.labels(model).observe(m.ttft)
        n = len(out.token_ids)
        if n > 1 and m.first_token_time is not None and m.finished_time is not None:
            self.tpot.labels(model).observe((m.finished_time - m.first_token_time) / (n - 1))

    def observe_http(self, endpoint: str, status: int) -> None:
        self.http_requests.labels(endpoint, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
