"""The kvmanager domain: index backend, ingestion, pool membership and scoring, wired together.

`KVManager` owns no network server; `server.py` puts gRPC and HTTP in front of it. Tests and the
benchmark drive it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmd_sdk.contracts import KVINDEX_SERVICE
from llmd_sdk.health import HealthState
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sdk.kvcache.index import InMemoryIndex, KVBlockIndex
from llmd_sdk.kvcache.indexer import PrefixCacheIndexer
from llmd_sdk.kvcache.request_keys import RequestKeyer, Tokenizer
from llmd_sdk.kvcache.scorer import PrefixScorer
from llmd_sdk.kvcache.subscriber import EngineSource, KVEventSubscriber, SubscriberConfig

from llmd_kvmanager.config import EngineConfig, KVManagerConfig, ModelConfig
from llmd_kvmanager.metrics import Metrics, MetricsObserver

TokenizerLoader = Callable[[ModelConfig], Tokenizer | None]


def load_model_tokenizer(model: ModelConfig) -> Tokenizer | None:
    """The model's tokenizer through `llmd_sdk.tokenizer` (None when none is configured)."""
    if model.tokenizer is None and not model.builtin_tokenizer:
        return None
    try:
        from llmd_sdk.tokenizer import load_tokenizer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - depends on the SDK version
        raise ValueError(
            f"models.{model.name}.tokenizer: this llmd-sdk has no tokenizer module"
        ) from None
    try:
        tok: Tokenizer = load_tokenizer(model.tokenizer, chat_template=model.chat_template)
    except ValueError as exc:
        raise ValueError(f"models.{model.name}.{exc}") from None
    return tok


def build_keyer(model: ModelConfig, tokenizer: Tokenizer | None) -> RequestKeyer:
    hasher = BlockHasher(model.hash_algo, model.block_size, model.hash_seed, model.extra_key_style)
    return RequestKeyer(hasher, tokenizer, lora_paths=model.loras)


def engine_source(e: EngineConfig) -> EngineSource:
    return EngineSource(e.endpoint, e.zmq, e.model, e.replay, e.topic)


@dataclass(slots=True)
class EngineInfo:
    endpoint: str
    model: str
    blocks: int
    last_sequence: int
    events: int
    resyncs: int


class KVManager:
    """Index + subscriber + indexer for one configuration."""

    def __init__(
        self,
        config: KVManagerConfig,
        metrics: Metrics | None = None,
        tokenizer_loader: TokenizerLoader = load_model_tokenizer,
        index: KVBlockIndex | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.index = index or self._make_index()
        keyers = {m.name: build_keyer(m, tokenizer_loader(m)) for m in config.models}
        default = None
        if config.accept_unknown_models:
            default = self._default_keyer
        self.indexer = PrefixCacheIndexer(
            self.index, keyers, PrefixScorer(config.tier_weights), default_keyer=default
        )
        ing = config.ingest
        self.subscriber = KVEventSubscriber(
            self.index,
            SubscriberConfig(
                bind=ing.bind,
                bind_ranks=ing.bind_ranks,
                topic_filter=ing.topic_filter,
                topic_pattern=ing.topic_pattern,
                replay_addresses=dict(ing.replay),
                shards=ing.shards,
                queue_size=ing.queue_size,
                replay_timeout_s=ing.replay_timeout_s,
                rcvhwm=ing.rcvhwm,
                open_pool=ing.open_pool,
            ),
            observer=MetricsObserver(self.metrics),
        )
        self.health = HealthState([KVINDEX_SERVICE])

    @property
    def ready(self) -> bool:
        return self.health.ready

    def _make_index(self) -> KVBlockIndex:
        b = self.config.backend
        if b.kind == "memory":
            return InMemoryIndex(capacity=b.capacity)
        from llmd_sdk.kvcache.index.redis import RedisIndex

        return RedisIndex(b.redis_url, prefix=b.redis_prefix)

    @staticmethod
    def _default_keyer(model: str) -> RequestKeyer:
        return build_keyer(ModelConfig(name=model), None)

    async def start(self) -> None:
        connect = getattr(self.index, "connect", None)
        if connect is not None:
            try:
                await connect()
            except Exception as exc:  # redis' errors are not OSErrors: name the setting
                b = self.config.backend
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConnectionError(f"backend.redis_url {b.redis_url}: {reason}") from None
        await self.subscriber.start()
        for e in self.config.engines:
            await self.subscriber.add_engine(engine_source(e))
        self.metrics.engines.set(len(self.subscriber.engines))
        self.health.set_ready()

    async def check_backend(self) -> bool:
        """Readiness follows the backend: not ready while it does not answer."""
        try:
            await self.index.stats()
        except Exception:
            ok = False
        else:
            ok = True
        if not self.health.shutting_down:
            self.health.set_ready(ok)
        return ok

    async def stop(self) -> None:
        self.health.shutdown()
        await self.subscriber.stop()
        await self.index.aclose()

    # -- pool ---------------------------------------------------------------------------------

    async def add_engine(self, engine: EngineConfig) -> None:
        await self.subscriber.add_engine(engine_source(engine))
        self.metrics.engines.set(len(self.subscriber.engines))

    async def remove_engine(self, endpoint: str) -> bool:
        """Purge an engine that left the pool; False if nothing was known about it."""
        known = endpoint in {e.endpoint for e in self.subscriber.engines} or any(
            k.endpoint == endpoint for k in self.subscriber.applier.publishers
        )
        await self.subscriber.remove_engine(endpoint)
        self.metrics.engines.set(len(self.subscriber.engines))
        return known

    def admit(self, endpoint: str) -> None:
        self.subscriber.admit(endpoint)

    # -- stats --------------------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        self.metrics.set_index(await self.index.stats())
        self.metrics.publishers.set(len(self.subscriber.applier.publishers))

    async def engine_stats(self, model: str | None = None) -> list[EngineInfo]:
        out: list[EngineInfo] = []
        for key, st in sorted(
            self.subscriber.applier.publishers.items(), key=lambda kv: (kv[0].model, kv[0].endpoint)
        ):
            if model and key.model != model:
                continue
            counts = await self.index.counts_of(key.model, key.endpoint)
            out.append(
                EngineInfo(
                    endpoint=key.endpoint,
                    model=key.model,
                    blocks=sum(counts.values()),
                    last_sequence=max(st.last_seq, 0),
                    events=sum(v for k, v in st.events.items() if k != "skipped_group"),
                    resyncs=st.resyncs + st.restarts,
                )
            )
        return out
