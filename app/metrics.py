"""Prometheus metrics (GET /metrics): one `Metrics` object, with its own registry, per app.

Events are observed where they happen (the middleware counts requests, the engine thread
times tokens, loads and transcriptions; prometheus_client objects are thread-safe). State
(queues, KV bytes, MLX memory) is read at scrape time from the `EngineState` the engine
thread publishes once per loop turn: a scrape never waits for the engine nor touches MLX.
No MLX and no app imports here, so every layer may observe.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

PREFIX = "mlxd"
# Route label of a request no route matched (404s): raw paths would be unbounded labels.
UNMATCHED_ROUTE = "unmatched"
HTTP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                        60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
RTF_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)


@dataclass(slots=True, frozen=True)
class KVState:
    """One model's KV store at a loop turn (app.kv StoreStats, copied)."""

    resident_bytes: int = 0
    reserved_bytes: int = 0
    budget_bytes: int = 0
    entries: int = 0
    lookups: int = 0
    hits: int = 0
    """Lookups that reused a cached prefix (whole or partial)."""


@dataclass(slots=True, frozen=True)
class EngineState:
    """What the engine thread publishes each loop turn (plain ints: cheap, immutable)."""

    waiting: dict[str, int] = field(default_factory=dict)
    """Chat sequences per model admitted but not decoding yet (queued or prefilling)."""
    running: dict[str, int] = field(default_factory=dict)
    """Chat sequences per model in the decode batch."""
    kv: dict[str, KVState] = field(default_factory=dict)
    transcription_jobs: int = 0
    embedding_requests: int = 0
    mlx_active_bytes: int = 0
    mlx_peak_bytes: int = 0
    mlx_cache_bytes: int = 0
    tp_ranks: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    """Per tensor-parallel model, each rank's figures as of its last exchange: (active,
    peak, cache KiB, batch rows, caches held, KV store KiB), index = rank."""
    taken_at: float = field(default_factory=time.monotonic)


class ModelMetrics:
    """One chat model's children of the token metrics (label lookups done once)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.ttft = metrics.ttft.labels(model)
        self.itl = metrics.itl.labels(model)
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.cached_tokens = metrics.cached_prompt_tokens.labels(model)
        self.completion_tokens = metrics.completion_tokens.labels(model)

    def finished(self, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.completion_tokens.inc(completion)
        self.cached_tokens.inc(cached)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.http_requests = Counter(
            f"{PREFIX}_http_requests", "HTTP requests by route template (\"unmatched\" when no "
            "route matched) and status code", ["route", "status"], registry=reg)
        self.http_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds", "Seconds from a request's arrival to "
            "the end of its response (streams included)", ["route"], registry=reg,
            buckets=HTTP_SECONDS_BUCKETS)
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "Seconds from handing a generation to "
            "the engine (after tokenizing) to its first token", ["model"], registry=reg,
            buckets=TTFT_BUCKETS)
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds", "Seconds between consecutive tokens of "
            "one sequence", ["model"], registry=reg, buckets=ITL_BUCKETS)
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of finished sequences (cached ones "
            "included)", ["model"], registry=reg)
        self.cached_prompt_tokens = Counter(
            f"{PREFIX}_cached_prompt_tokens", "Prompt tokens whose KV came from the cache "
            "instead of a prefill", ["model"], registry=reg)
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Tokens generated", ["model"], registry=reg)
        self.model_load_seconds = Gauge(
            f"{PREFIX}_model_load_seconds", "Seconds the last load of a model took (weights, "
            "set-up and warm-up)", ["model", "kind"], registry=reg)
        self.transcription_rtf = Histogram(
            f"{PREFIX}_transcription_realtime_factor", "Audio seconds / wall seconds from "
            "admission to result, per transcription (above 1: faster than real time)",
            ["model"], registry=reg, buckets=RTF_BUCKETS)
        self.transcription_audio_seconds = Counter(
            f"{PREFIX}_transcription_audio_seconds", "Seconds of audio transcribed",
            ["model"], registry=reg)
        self.embedding_inputs = Counter(
            f"{PREFIX}_embedding_inputs", "Texts received for embedding", ["model"],
            registry=reg)
        self.embedding_tokens = Counter(
            f"{PREFIX}_embedding_tokens", "Tokens of the texts received for embedding",
            ["model"], registry=reg)
        self._state = EngineState()
        self._models: dict[str, ModelMetrics] = {}
        reg.register(_StateCollector(self))

    # -- observed by the app ------------------------------------------------------------
    def request(self, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)

    def model(self, model_id: str) -> ModelMetrics:
        found = self._models.get(model_id)
        if found is None:  # a race here makes two equal wrappers of the same children
            found = self._models[model_id] = ModelMetrics(self, model_id)
        return found

    def loaded(self, model_id: str, kind: str, seconds: float) -> None:
        self.model_load_seconds.labels(model_id, kind).set(seconds)

    def transcribed(self, model_id: str, audio_seconds: float, wall_seconds: float) -> None:
        self.transcription_audio_seconds.labels(model_id).inc(audio_seconds)
        if wall_seconds > 0:
            self.transcription_rtf.labels(model_id).observe(audio_seconds / wall_seconds)

    def embedded(self, model_id: str, rows: Sequence[Sized]) -> None:
        self.embedding_inputs.labels(model_id).inc(len(rows))
        self.embedding_tokens.labels(model_id).inc(sum(len(r) for r in rows))

    def publish(self, state: EngineState) -> None:
        """The engine's state at this loop turn (a reference swap: any thread reads it)."""
        self._state = state

    @property
    def state(self) -> EngineState:
        return self._state

    # -- scraped ------------------------------------------------------------------------
    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) of every metric: the Prometheus text format, or
        OpenMetrics when the scraper's Accept header asks for it."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _StateCollector(Collector):
    """Gauges (and the KV store's counters) from the last published EngineState."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        s = self.metrics.state
        yield _per_model("waiting_sequences", "Chat sequences admitted and not decoding yet "
                         "(queued for or in prefill)", s.waiting)
        yield _per_model("running_sequences", "Chat sequences in the decode batch", s.running)
        yield _gauge("transcription_jobs", "Transcriptions queued or running",
                     s.transcription_jobs)
        yield _gauge("embedding_requests", "Embedding requests queued or running",
                     s.embedding_requests)
        kv = s.kv.items()
        yield _per_model("kv_resident_bytes", "Bytes of KV cache entries resident in memory",
                         {m: k.resident_bytes for m, k in kv})
        yield _per_model("kv_reserved_bytes", "KV bytes reserved by running requests",
                         {m: k.reserved_bytes for m, k in kv})
        yield _per_model("kv_budget_bytes", "KV cache byte budget (resident + reserved)",
                         {m: k.budget_bytes for m, k in kv})
        yield _per_model("kv_entries", "KV cache entries resident in memory",
                         {m: k.entries for m, k in kv})
        yield _per_model("kv_prefix_hit_ratio", "KV prefix lookups that reused a cached "
                         "prefix (whole or partial hits) / lookups, since start; the token-"
                         "weighted ratio is mlxd_cached_prompt_tokens / mlxd_prompt_tokens",
                         {m: k.hits / k.lookups if k.lookups else 0.0 for m, k in kv})
        lookups = CounterMetricFamily(f"{PREFIX}_kv_prefix_lookups", "KV prefix lookups "
                                      "(one per admitted chat sequence)", labels=["model"])
        hits = CounterMetricFamily(f"{PREFIX}_kv_prefix_hits", "KV prefix lookups that "
                                   "reused a cached prefix", labels=["model"])
        for m, k in kv:
            lookups.add_metric([m], k.lookups)
            hits.add_metric([m], k.hits)
        yield lookups
        yield hits
        yield _gauge("mlx_active_memory_bytes", "MLX memory held by live arrays "
                     "(mx.get_active_memory)", s.mlx_active_bytes)
        yield _gauge("mlx_peak_memory_bytes", "Highest MLX active memory since start "
                     "(mx.get_peak_memory)", s.mlx_peak_bytes)
        yield _gauge("mlx_cache_memory_bytes", "MLX memory freed but kept for reuse "
                     "(mx.get_cache_memory)", s.mlx_cache_bytes)
        yield from _per_rank(s.tp_ranks)
        yield _gauge("engine_state_age_seconds", "Seconds since the engine thread last "
                     "published these gauges (large while it loads a model)",
                     time.monotonic() - s.taken_at)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _per_model(name: str, doc: str, values: dict[str, int] | dict[str, float]
               ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["model"])
    for model, value in values.items():
        family.add_metric([model], value)
    return family


KIB = 1024


def _per_rank(ranks: dict[str, list[tuple[int, ...]]]) -> Iterator[Metric]:
    """Each tensor-parallel rank's memory, KV store and batch (rank 0's own included)."""
    memory = GaugeMetricFamily(f"{PREFIX}_rank_memory_bytes", "MLX memory of one "
                               "tensor-parallel rank (kind: active, peak, cache)",
                               labels=["model", "rank", "kind"])
    kv = GaugeMetricFamily(f"{PREFIX}_rank_kv_resident_bytes", "Bytes of this rank's shard "
                           "of the resident KV cache entries", labels=["model", "rank"])
    rows = GaugeMetricFamily(f"{PREFIX}_rank_batch_rows", "Sequences in this rank's decode "
                             "batch cache", labels=["model", "rank"])
    caches = GaugeMetricFamily(f"{PREFIX}_rank_caches", "Per-sequence and batch caches this "
                               "rank holds", labels=["model", "rank"])
    for model, figures in ranks.items():
        for rank, (active, peak, cache, batch, held, kv_kib) in enumerate(figures):
            r = str(rank)
            for kind, kib in (("active", active), ("peak", peak), ("cache", cache)):
                memory.add_metric([model, r, kind], kib * KIB)
            kv.add_metric([model, r], kv_kib * KIB)
            rows.add_metric([model, r], batch)
            caches.add_metric([model, r], held)
    yield from (memory, kv, rows, caches)
