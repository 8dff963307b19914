"""KV-block index in Redis or Valkey, shared by several kvmanager replicas.

Key layout (``P`` is the prefix, default ``llmd:kv``; ``{M}`` is the model name as a Redis Cluster
hash tag, so that all keys of one model live in one slot and one script may touch them):

- ``P:{M}:b:<key as 16 hex digits>``  SET of holders ``"<endpoint>|<medium>|<rank>"``
- ``P:{M}:r:<holder>``                SET of the block keys (hex) that holder has: purges
- ``P:{M}:holders``                   SET of holders with at least one block
- ``P:{M}:stats``                     HASH ``keys``, ``entries`` kept by the write scripts
- ``P:models``                        SET of model names

Writes run as Lua scripts (atomic per event, counters exact), pipelined per batch: one round trip
per engine batch. A prefix lookup is one script call over up to 512 block keys: it walks the keys
in order on the server, stops at the first empty one, and sends a key's members only when they
differ from the previous key's (``SINTERCARD`` on Redis/Valkey >= 7, so a shared prefix held by
64 engines costs one member list, not 512). Capacity is the server's business: give Redis a
``maxmemory`` and an eviction policy; a dropped block key simply stops matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from llmd_sdk.kvcache.index.base import (
    ClearEndpoint,
    Holder,
    HolderSet,
    IndexOp,
    IndexStats,
    KVBlockIndex,
    RemoveBlocks,
    StoreBlocks,
)

DEFAULT_PREFIX = "llmd:kv"
_CLEAR_CHUNK = 1000

# KEYS: holders, rev, stats, block keys...; ARGV: holder, hex keys...
_STORE = """
local holder = ARGV[1]
local entries, nkeys = 0, 0
for i = 4, #KEYS do
  if redis.call('SADD', KEYS[i], holder) == 1 then
    entries = entries + 1
    if redis.call('SCARD', KEYS[i]) == 1 then nkeys = nkeys + 1 end
  end
end
for i = 2, #ARGV, 4000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
redis.call('SADD', KEYS[1], holder)
if entries > 0 then redis.call('HINCRBY', KEYS[3], 'entries', entries) end
if nkeys > 0 then redis.call('HINCRBY', KEYS[3], 'keys', nkeys) end
return entries
"""

# KEYS: holders, rev, stats, block keys...; ARGV: holder, hex keys...
_REMOVE = """
local holder = ARGV[1]
local entries, nkeys = 0, 0
for i = 4, #KEYS do
  if redis.call('SREM', KEYS[i], holder) == 1 then
    entries = entries + 1
    if redis.call('EXISTS', KEYS[i]) == 0 then nkeys = nkeys + 1 end
  end
end
for i = 2, #ARGV, 4000 do
  redis.call('SREM', KEYS[2], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[1], holder) end
if entries > 0 then redis.call('HINCRBY', KEYS[3], 'entries', -entries) end
if nkeys > 0 then redis.call('HINCRBY', KEYS[3], 'keys', -nkeys) end
return entries
"""

# KEYS: block keys in prefix order. Returns one item per leading non-empty key: 0 when its
# members equal the previous key's, else the member list.
_LOOKUP_INTERCARD = """
local out = {}
local prev, prevn = nil, 0
for i = 1, #KEYS do
  local n = redis.call('SCARD', KEYS[i])
  if n == 0 then break end
  if prev and n == prevn and redis.call('SINTERCARD', 2, prev, KEYS[i]) == n then
    out[i] = 0
  else
    out[i] = redis.call('SMEMBERS', KEYS[i])
  end
  prev, prevn = KEYS[i], n
end
return out
"""

# Servers before 7.0 have no SINTERCARD: send every member list.
_LOOKUP_PLAIN = """
local out = {}
for i = 1, #KEYS do
  local m = redis.call('SMEMBERS', KEYS[i])
  if #m == 0 then break end
  out[i] = m
end
return out
"""


def holder_to_wire(h: Holder) -> str:
    return f"{h.endpoint}|{h.medium}|{h.rank}"


def holder_from_wire(raw: bytes | str) -> Holder:
    s = raw.decode() if isinstance(raw, bytes) else raw
    endpoint, medium, rank = s.rsplit("|", 2)
    return Holder(endpoint, medium, int(rank))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisIndex(KVBlockIndex):
    """The index in a Redis/Valkey server at `url` (``redis://host:port/db``)."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, **client_kwargs: Any) -> None:
        self.url = url
        self.prefix = prefix
        self._r: aioredis.Redis = aioredis.Redis.from_url(url, **client_kwargs)
        self._store = self._r.register_script(_STORE)
        self._remove = self._r.register_script(_REMOVE)
        self._lookup_script: Any = None
        self._holders: dict[bytes, Holder] = {}
        self._model_tags: dict[str, str] = {}

    async def connect(self) -> RedisIndex:
        """Check the server answers and pick the lookup script for its version."""
        info = await self._r.info("server")
        major = int(str(info.get("redis_version", "0")).split(".")[0])
        # Valkey reports redis_version 7.2.x for compatibility, so this covers it too.
        self._lookup_script = self._r.register_script(
            _LOOKUP_INTERCARD if major >= 7 else _LOOKUP_PLAIN
        )
        return self

    # -- key names ----------------------------------------------------------------------------

    def _tag(self, model: str) -> str:
        tag = self._model_tags.get(model)
        if tag is None:
            tag = self._model_tags[model] = f"{self.prefix}:{{{model}}}"
        return tag

    def _holder(self, raw: bytes | str) -> Holder:
        b = raw if isinstance(raw, bytes) else raw.encode()
        h = self._holders.get(b)
        if h is None:
            h = self._holders[b] = holder_from_wire(b)
        return h

    # -- writes -------------------------------------------------------------------------------

    async def apply(self, ops: Sequence[IndexOp]) -> None:
        pipe = self._r.pipeline(transaction=False)
        queued = 0
        for op in ops:
            if isinstance(op, ClearEndpoint):
                if queued:
                    await pipe.execute()
                    queued = 0
                await self._clear(op)
                continue
            if not op.keys:
                continue
            tag = self._tag(op.model)
            holder = holder_to_wire(op.holder)
            hexes = [f"{k:016x}" for k in op.keys]
            keys = [f"{tag}:holders", f"{tag}:r:{holder}", f"{tag}:stats"]
            keys += [f"{tag}:b:{x}" for x in hexes]
            if isinstance(op, StoreBlocks):
                pipe.sadd(f"{self.prefix}:models", op.model)
                await self._store(keys=keys, args=[holder, *hexes], client=pipe)
            elif isinstance(op, RemoveBlocks):
                await self._remove(keys=keys, args=[holder, *hexes], client=pipe)
            else:
                raise TypeError(f"unknown index op {type(op).__name__}")
            queued += 1
        if queued:
            await pipe.execute()

    async def _clear(self, op: ClearEndpoint) -> None:
        models = [op.model] if op.model is not None else await self._models()
        for model in models:
            tag = self._tag(model)
            for raw in await self._r.smembers(f"{tag}:holders"):
                holder = self._holder(raw)
                if holder.endpoint != op.endpoint or op.rank not in (None, holder.rank):
                    continue
                wire = holder_to_wire(holder)
                rev = f"{tag}:r:{wire}"
                while True:
                    members: list[bytes] = await self._r.srandmember(rev, _CLEAR_CHUNK)  # type: ignore[assignment]
                    chunk = [_text(m) for m in members]
                    if not chunk:
                        break
                    keys = [f"{tag}:holders", rev, f"{tag}:stats"]
                    keys += [f"{tag}:b:{x}" for x in chunk]
                    await self._remove(keys=keys, args=[wire, *chunk])
                await self._r.srem(f"{tag}:holders", wire)

    # -- reads --------------------------------------------------------------------------------

    async def lookup(self, model: str, keys: Sequence[int]) -> list[HolderSet]:
        if not keys:
            return []
        if self._lookup_script is None:
            await self.connect()
        tag = self._tag(model)
        raw = await self._lookup_script(keys=[f"{tag}:b:{k:016x}" for k in keys])
        out: list[HolderSet] = []
        prev: frozenset[Holder] = frozenset()
        holder = self._holder
        for item in raw:
            if isinstance(item, list):
                prev = frozenset([holder(m) for m in item])
            out.append(prev)
        return out

    async def _models(self) -> list[str]:
        return sorted(_text(m) for m in await self._r.smembers(f"{self.prefix}:models"))

    async def endpoints(self, model: str | None = None) -> list[str]:
        models = [model] if model is not None else await self._models()
        found: set[str] = set()
        for m in models:
            found.update(
                self._holder(raw).endpoint
                for raw in await self._r.smembers(f"{self._tag(m)}:holders")
            )
        return sorted(found)

    async def blocks_of(self, model: str, endpoint: str) -> dict[Holder, set[int]]:
        tag = self._tag(model)
        out: dict[Holder, set[int]] = {}
        for raw in await self._r.smembers(f"{tag}:holders"):
            holder = self._holder(raw)
            if holder.endpoint != endpoint:
                continue
            members = await self._r.smembers(f"{tag}:r:{holder_to_wire(holder)}")
            if members:
                out[holder] = {int(m, 16) for m in members}
        return out

    async def counts_of(self, model: str, endpoint: str) -> dict[Holder, int]:
        tag = self._tag(model)
        holders = [
            h
            for h in (self._holder(raw) for raw in await self._r.smembers(f"{tag}:holders"))
            if h.endpoint == endpoint
        ]
        pipe = self._r.pipeline(transaction=False)
        for h in holders:
            pipe.scard(f"{tag}:r:{holder_to_wire(h)}")
        counts = await pipe.execute() if holders else []
        return {h: int(n) for h, n in zip(holders, counts, strict=True) if n}

    async def stats(self) -> IndexStats:
        keys = entries = 0
        for m in await self._models():
            h = await self._r.hgetall(f"{self._tag(m)}:stats")
            keys += int(h.get(b"keys", 0))
            entries += int(h.get(b"entries", 0))
        return IndexStats(keys=keys, entries=entries)

    async def aclose(self) -> None:
        await self._r.aclose()
