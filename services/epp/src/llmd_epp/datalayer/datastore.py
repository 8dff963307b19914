"""The pool's endpoints as the data layer knows them, and which of them may take traffic.

Sources (static list, Kubernetes, modelservice) set the membership; the scraper sets each
endpoint's metrics and health. Readers get a cached candidate list that is rebuilt only when
membership or health changes, so scheduling does not pay for it per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llmd_epp.scheduling.types import Endpoint, EndpointMetrics

Listener = Callable[[Endpoint], None]


class Datastore:
    def __init__(self, pool_name: str = "") -> None:
        self.pool_name = pool_name
        self._endpoints: dict[str, Endpoint] = {}
        self._owner: dict[str, str] = {}  # key -> source that added it
        self._unhealthy: set[str] = set()
        self._candidates: list[Endpoint] | None = None
        self.on_added: list[Listener] = []
        self.on_removed: list[Listener] = []
        self.on_change: list[Callable[[], None]] = []
        self.synced = False  # a source has delivered its first full view
        self.metrics_generation = 0  # bumped by every successful scrape

    # ----------------------------------------------------------------- membership
    def get(self, key: str) -> Endpoint | None:
        return self._endpoints.get(key)

    def all(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def __len__(self) -> int:
        return len(self._endpoints)

    def upsert(self, endpoint: Endpoint, source: str = "") -> None:
        """Add an endpoint, or update its labels/name (metrics are kept)."""
        old = self._endpoints.get(endpoint.key)
        if old is not None:
            old.labels = endpoint.labels
            old.name = endpoint.name or old.name
            old.rank = endpoint.rank
            self._owner[endpoint.key] = source
            self._changed()
            return
        self._endpoints[endpoint.key] = endpoint
        self._owner[endpoint.key] = source
        for cb in self.on_added:
            cb(endpoint)
        self._changed()

    def remove(self, key: str) -> None:
        ep = self._endpoints.pop(key, None)
        self._owner.pop(key, None)
        self._unhealthy.discard(key)
        if ep is None:
            return
        for cb in self.on_removed:
            cb(ep)
        self._changed()

    def replace(self, endpoints: Iterable[Endpoint], source: str = "") -> None:
        """The full set from one source: endpoints it no longer lists are removed."""
        fresh = {e.key: e for e in endpoints}
        for key in [k for k, s in self._owner.items() if s == source and k not in fresh]:
            self.remove(key)
        for ep in fresh.values():
            self.upsert(ep, source)
        self.synced = True

    # ------------------------------------------------------------- metrics / health
    def set_metrics(self, key: str, metrics: EndpointMetrics) -> None:
        ep = self._endpoints.get(key)
        if ep is None:
            return
        ep.metrics = metrics
        self.metrics_generation += 1
        if key in self._unhealthy:
            self._unhealthy.discard(key)
            self._changed()

    def set_unhealthy(self, key: str) -> None:
        if key in self._endpoints and key not in self._unhealthy:
            self._unhealthy.add(key)
            self._changed()

    def healthy(self, key: str) -> bool:
        return key in self._endpoints and key not in self._unhealthy

    def candidates(self) -> list[Endpoint]:
        """Endpoints that may take traffic (members not marked unhealthy), stable order."""
        if self._candidates is None:
            self._candidates = [e for k, e in self._endpoints.items() if k not in self._unhealthy]
        return self._candidates

    def _changed(self) -> None:
        self._candidates = None
        for cb in self.on_change:
            cb()
