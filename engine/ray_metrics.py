"""Per-replica Prometheus metrics of the Ray ingress's /metrics (beside ServerMetrics's)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baton.engine.ray_ingress import RemoteEngine


class ReplicaCollector:
    """Prometheus families per replica: prefix-cache and encoder-cache hit rates, up, load and
    failures (registered on the app's ServerMetrics registry)."""

    def __init__(self, client: RemoteEngine):
        self.client = client

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self.client
        snap = c.snapshot()
        rate = GaugeMetricFamily("baton_replica_prefix_cache_hit_rate",
                                 "Prompt tokens served from the replica's prefix cache / tokens queried",
                                 labels=["model", "replica"])
        hits = CounterMetricFamily("baton_replica_prefix_cache_hit_tokens",
                                   "Prompt tokens served from the replica's prefix cache", labels=["model", "replica"])
        queried = CounterMetricFamily("baton_replica_prefix_cache_queried_tokens",
                                      "Prompt tokens looked up in the replica's prefix cache",
                                      labels=["model", "replica"])
        enc = GaugeMetricFamily("baton_replica_encoder_cache_hit_rate", "Encoder cache hits / lookups on the replica",
                                labels=["model", "replica"])
        up = GaugeMetricFamily("baton_replica_up", "1 when the replica answered the last stats call",
                               labels=["model", "replica"])
        load = GaugeMetricFamily("baton_replica_load", "Calls in flight from this ingress to the replica",
                                 labels=["model", "replica"])
        failures = CounterMetricFamily("baton_replica_failures", "Calls the replica failed (died, timed out)",
                                       labels=["model", "replica"])
        for pool in c.pools.values():
            for name in pool.replicas:
                labels = [pool.name, name]
                s = snap.get(name)
                up.add_metric(labels, 0.0 if s is None else 1.0)
                load.add_metric(labels, c.router.load.get(name, 0))
                failures.add_metric(labels, c.failures.get(name, 0))
                if s is None:
                    continue
                m = next(iter(s["models"].values()))
                q, h = m["prefix_cache_queried_tokens"], m["prefix_cache_hit_tokens"]
                looked = m["encoder_cache_hits"] + m["encoder_cache_misses"]
                rate.add_metric(labels, h / q if q else 0.0)
                hits.add_metric(labels, h)
                queried.add_metric(labels, q)
                enc.add_metric(labels, m["encoder_cache_hits"] / looked if looked else 0.0)
        retries = CounterMetricFamily("baton_replica_retries", "Requests resumed on another replica after a failure")
        retries.add_metric([], c.retries)
        yield from (rate, hits, queried, enc, up, load, failures, retries)
