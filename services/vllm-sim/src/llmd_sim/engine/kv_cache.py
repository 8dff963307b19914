"""vLLM v1's KV block manager: block pool, prefix cache, LRU eviction and KV events.

Semantics carried over from vLLM (``vllm/v1/core/block_pool.py``, ``kv_cache_manager.py``):

- ``num_gpu_blocks`` blocks of ``block_size`` tokens; block 0 is the reserved null block, so
  ``num_gpu_blocks - 1`` are usable and ``kv_cache_usage = 1 - free / (num_gpu_blocks - 1)``.
- Blocks are reference counted. A block whose count drops to 0 goes to the tail of the free
  queue but keeps its hash: it stays a prefix-cache hit until it is reallocated. New blocks come
  from the head of the queue (least recently freed first); taking a block that still has a hash
  evicts it from the prefix cache and emits ``BlockRemoved``.
- A request frees its blocks in reverse order, so the tail of a sequence is evicted before its
  head.
- A block is hashed and cached (``BlockStored``) in the scheduling step that fills it, whether the
  tokens come from the prompt or from decoding. A cache hit is capped so that at least one prompt
  token is always computed.
- ``reset`` clears the prefix cache only when no block is in use (``AllBlocksCleared``).
- Every ``BlockStored`` carries ``group_idx=0`` and ``kv_cache_spec_kind="full_attention"``, every
  ``BlockRemoved`` ``group_idx=0``: the one KV-cache group of a plain decoder model, as vLLM tags it.

Optional CPU tier: blocks evicted from the GPU are kept in a bounded LRU on the "CPU" medium
(``BlockStored``/``BlockRemoved`` with ``medium="CPU"``); a prefix that continues there is loaded
back instead of recomputed, and the engine charges the load time.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmd_sdk.kvcache.events import (
    MEDIUM_CPU,
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
)
from llmd_sdk.kvcache.hashing import to_external

from llmd_sim.engine.request import BlockHash, Request

KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
# vLLM (0.26 on) tags each event with its KV-cache group; a plain decoder model has one group,
# index 0, of full attention, and its events say so.
FULL_ATTENTION = "full_attention"


class Hasher(Protocol):
    """What the KV manager needs from a block hasher (`llmd_sdk.kvcache.hashing.BlockHasher`)."""

    block_size: int

    def hash_tokens(
        self,
        token_ids: Sequence[int],
        *,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
        parent: Any = None,
        start_block: int = 0,
    ) -> list[Any]: ...

    def extra_keys(
        self,
        block_index: int,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
    ) -> tuple[Any, ...] | None: ...


class FastBlockHasher:
    """A cheap deterministic hasher for discrete-event runs (not vLLM's hash).

    Chains Python's tuple hash over ints, which is stable across processes. Use
    `llmd_sdk.kvcache.hashing.BlockHasher` wherever hashes leave the process.
    """

    __slots__ = ("block_size",)

    def __init__(self, block_size: int = 16) -> None:
        self.block_size = block_size

    def hash_tokens(
        self,
        token_ids: Sequence[int],
        *,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
        parent: Any = None,
        start_block: int = 0,
    ) -> list[Any]:
        bs = self.block_size
        prev = parent if parent is not None else 0
        salt = hash((lora_name, cache_salt)) if (lora_name or cache_salt) else 0
        out: list[Any] = []
        for i in range(len(token_ids) // bs):
            keyed = salt if (lora_name or i + start_block == 0) else 0
            prev = hash((prev, keyed, *token_ids[i * bs : (i + 1) * bs]))
            out.append(prev)
        return out

    def hash_block_at(
        self,
        parent: Any,
        block_token_ids: Sequence[int],
        block_index: int,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> Any:
        """The hash of one full block: ``hash_tokens(block, parent=..., start_block=index)[0]``.

        The decode hot path hashes one block at a time; this skips the list and slicing.
        """
        if (lora_name or cache_salt) and (lora_name or block_index == 0):
            keyed = hash((lora_name, cache_salt))
        else:
            keyed = 0
        return hash((parent if parent is not None else 0, keyed, *block_token_ids))

    def extra_keys(
        self,
        block_index: int,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
    ) -> tuple[Any, ...] | None:
        return None


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters in tokens, as vLLM's `vllm:prefix_cache_queries` / `_hits` count them."""

    queries: int = 0
    hits: int = 0
    external_queries: int = 0
    external_hits: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0


@dataclass(slots=True)
class _CpuEntry:
    parent: BlockHash | None
    token_ids: list[int]
    lora_id: int | None
    lora_name: str | None
    extra: tuple[Any, ...] | None


@dataclass(slots=True)
class ComputedBlocks:
    """The result of a prefix lookup: GPU hits, then blocks to load from the CPU tier."""

    gpu_blocks: list[int] = field(default_factory=list)
    cpu_hashes: list[BlockHash] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.gpu_blocks) + len(self.cpu_hashes)


class KVCacheManager:
    """Blocks, reference counts, the prefix cache, the free LRU and the KV-event log."""

    def __init__(
        self,
        num_gpu_blocks: int,
        hasher: Hasher,
        *,
        enable_prefix_caching: bool = True,
        enable_events: bool = False,
        use_int_hashes: bool = False,
        cpu_blocks: int = 0,
        event_sink: Callable[[KVEvent], None] | None = None,
    ) -> None:
        if num_gpu_blocks < 2:
            raise ValueError(f"num_gpu_blocks: must be at least 2, got {num_gpu_blocks}")
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = hasher.block_size
        self.hasher = hasher
        self.enable_prefix_caching = enable_prefix_caching
        self.enable_events = enable_events
        self.use_int_hashes = use_int_hashes
        # Block 0 is vLLM's null block: never allocated.
        self.ref_cnt = [0] * num_gpu_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_gpu_blocks
        self.block_meta: dict[int, _CpuEntry] = {}
        # The free queue is [never-used blocks _virgin..N-1] followed by `_free_q` (blocks freed
        # at least once, least recently freed first). Never-used blocks are always at the head, so
        # they need no queue entries: a cluster of many large engines stays small.
        self._virgin = 1
        # `_free_q` is a deque with lazy deletion (an ordered dict costs several times more per
        # block): a prefix hit that takes a block out of the queue only marks it (its ref count
        # becomes > 0), and a block freed again is appended again. `_qcount[b]` counts b's
        # entries in the deque; an entry is live iff it is b's last one and ref_cnt[b] == 0,
        # which gives exactly the order of a queue with removal. `_n_free` counts live entries.
        self._free_q: deque[int] = deque()
        self._qcount = [0] * num_gpu_blocks
        self._n_free = 0
        # Compact once stale entries outnumber live ones by this much (tests lower it).
        self._compact_slack = 1024
        # Hashers that can hash one block directly (FastBlockHasher) speed up decode caching.
        self._hash_block: Callable[..., Any] | None = getattr(hasher, "hash_block_at", None)
        self.cached: dict[BlockHash, int] = {}
        self._dups: dict[BlockHash, list[int]] = {}
        self.cpu_capacity = cpu_blocks
        self.cpu: OrderedDict[BlockHash, _CpuEntry] = OrderedDict()
        self.events: list[KVEvent] = []
        self._sink = event_sink
        self.stats = PrefixCacheStats()

    # ----- accounting -------------------------------------------------------------------------
    @property
    def num_usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return self.num_gpu_blocks - self._virgin + self._n_free

    @property
    def free(self) -> list[int]:
        """The blocks freed at least once that are free now, least recently freed first.

        (The never-used blocks come before them in the free queue.) O(queue) per call: for
        tests and inspection, not for hot paths.
        """
        ref = self.ref_cnt
        seen = [0] * self.num_gpu_blocks
        out: list[int] = []
        for b in reversed(self._free_q):
            if not seen[b]:
                seen[b] = 1
                if not ref[b]:
                    out.append(b)
        out.reverse()
        return out

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / (self.num_gpu_blocks - 1)

    @property
    def num_duplicate_blocks(self) -> int:
        """Cached blocks whose hash another cached block already has."""
        return sum(len(v) for v in self._dups.values())

    def take_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events

    def _emit(self, event: KVEvent) -> None:
        if self._sink is not None:
            self._sink(event)
        else:
            self.events.append(event)

    def _ext(self, h: BlockHash) -> BlockHash:
        return to_external(h, self.use_int_hashes) if isinstance(h, bytes) else h

    # ----- hashing ----------------------------------------------------------------------------
    def ensure_hashes(self, req: Request, num_blocks: int) -> list[BlockHash]:
        """Hashes of the first `num_blocks` full blocks of `req`'s known tokens (memoised)."""
        have = len(req.block_hashes)
        if have < num_blocks:
            bs = self.block_size
            lora = req.lora
            req.block_hashes.extend(
                self.hasher.hash_tokens(
                    req.tokens[have * bs : num_blocks * bs],
                    lora_name=lora.name if lora else None,
                    lora_path=lora.path if lora else None,
                    cache_salt=req.cache_salt,
                    parent=req.block_hashes[-1] if have else None,
                    start_block=have,
                )
            )
        return req.block_hashes

    # ----- prefix lookup ----------------------------------------------------------------------
    def get_computed_blocks(self, req: Request, num_tokens: int) -> ComputedBlocks:
        """The longest cached prefix of `req` (GPU, then CPU), leaving one token to compute."""
        result = ComputedBlocks()
        if not self.enable_prefix_caching:
            return result
        max_blocks = (num_tokens - 1) // self.block_size
        if max_blocks <= 0:
            return result
        hashes = self.ensure_hashes(req, max_blocks)
        # Look every block up at C speed, then cut at the first miss.
        found: list[int | None] = list(
            map(self.cached.get, hashes[:max_blocks] if len(hashes) > max_blocks else hashes)
        )
        try:
            i = found.index(None)
        except ValueError:
            i = max_blocks
        else:
            del found[i:]
        result.gpu_blocks = found  # type: ignore[assignment]  # no None left before index i
        if self.cpu_capacity and i < max_blocks:
            cpu = self.cpu
            while i < max_blocks and hashes[i] in cpu:
                result.cpu_hashes.append(hashes[i])
                i += 1
        return result

    def record_query(self, req: Request, num_tokens: int, computed: ComputedBlocks) -> None:
        bs = self.block_size
        if req.num_preemptions:
            self.stats.preempted_queries += num_tokens
            self.stats.preempted_hits += len(computed.gpu_blocks) * bs
        self.stats.queries += num_tokens
        self.stats.hits += len(computed.gpu_blocks) * bs
        if self.cpu_capacity:
            self.stats.external_queries += num_tokens - len(computed.gpu_blocks) * bs
            self.stats.external_hits += len(computed.cpu_hashes) * bs

    # ----- allocation -------------------------------------------------------------------------
    def can_allocate(self, req: Request, num_tokens: int, computed: ComputedBlocks) -> bool:
        need = -(-num_tokens // self.block_size) - len(req.blocks) - len(computed.gpu_blocks)
        ref = self.ref_cnt
        touched_free = sum(1 for b in computed.gpu_blocks if ref[b] == 0)
        return need <= self.num_free_blocks - touched_free

    def allocate_slots(
        self,
        req: Request,
        num_new_tokens: int,
        computed: ComputedBlocks | None = None,
        *,
        cache: bool = True,
    ) -> bool:
        """Give `req` slots for `num_new_tokens` more tokens (after any `computed` prefix).

        Returns False, changing nothing, when the free blocks do not suffice.
        """
        bs = self.block_size
        blocks = req.blocks
        ref = self.ref_cnt
        n_free = self.num_gpu_blocks - self._virgin + self._n_free
        gpu: list[int] | None = None
        total = req.num_computed_tokens + num_new_tokens
        if computed is not None:
            gpu = computed.gpu_blocks
            total += (len(gpu) + len(computed.cpu_hashes)) * bs
            need = -(-total // bs) - len(blocks) - len(gpu)
        else:
            need = -(-total // bs) - len(blocks)
        if gpu:
            # Touching a hit block that sits in the free queue takes it out of the queue.
            if need > n_free - len(gpu):
                touched_free = sum(1 for b in gpu if ref[b] == 0)
                if need > n_free - touched_free:
                    return False
            touched = 0
            for b in gpu:
                c = ref[b]
                if not c:
                    touched += 1  # its queue entry goes stale (lazy deletion)
                ref[b] = c + 1
            self._n_free -= touched
            blocks.extend(gpu)
            req.num_cached_blocks = len(blocks)
        elif need > n_free:
            return False
        if computed and computed.cpu_hashes:
            cpu = self.cpu
            for h in computed.cpu_hashes:
                cpu.move_to_end(h)
        if need > 0:
            # Never-used blocks first (a contiguous range), then the head of the free queue.
            v = self._virgin
            nv = self.num_gpu_blocks - v
            if nv > need:
                nv = need
            if nv > 0:
                blocks.extend(range(v, v + nv))
                ref[v : v + nv] = [1] * nv
                self._virgin = v + nv
            for _ in range(need - nv):
                b = self._pop_queue()
                ref[b] = 1
                blocks.append(b)
        if cache:
            self.cache_blocks(req, min(total, len(req.tokens)))
        return True

    def _pop_queue(self) -> int:
        """The first live block of `_free_q` (evicting its cached hash); the caller checked
        that `_n_free` > 0."""
        q = self._free_q
        qcount = self._qcount
        ref = self.ref_cnt
        while True:
            b = q.popleft()
            c = qcount[b] - 1
            qcount[b] = c
            if not c and not ref[b]:
                break
        self._n_free -= 1
        if self.block_hash[b] is not None:
            self._evict(b)
        return b

    def allocate_one(self, req: Request) -> bool:
        """One more block for a decoding request (the hot path of `allocate_slots`)."""
        b = self._virgin
        if b < self.num_gpu_blocks:
            self._virgin = b + 1
        elif self._n_free:
            b = self._pop_queue()
        else:
            return False
        self.ref_cnt[b] = 1
        req.blocks.append(b)
        return True

    def cache_blocks(self, req: Request, num_tokens: int) -> None:
        """Hash and cache every block of `req` that `num_tokens` fills and is not cached yet."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(num_tokens // bs, len(req.blocks))
        start = req.num_cached_blocks
        if num_full <= start:
            return
        hashes = req.block_hashes
        if len(hashes) < num_full:
            hashes = self.ensure_hashes(req, num_full)
        blocks = req.blocks
        cached = self.cached
        block_hash = self.block_hash
        for i in range(start, num_full):
            b = blocks[i]
            h = hashes[i]
            block_hash[b] = h
            if cached.setdefault(h, b) != b:
                self._dups.setdefault(h, []).append(b)
        req.num_cached_blocks = num_full
        if self.cpu_capacity:
            self._remember_meta(req, start, num_full)
        if self.enable_events:
            self._emit_stored(req, start, num_full, MEDIUM_GPU)

    def cache_next_block(self, req: Request) -> None:
        """Cache the block a decoding request just filled (the hot path of `cache_blocks`)."""
        if not self.enable_prefix_caching:
            return
        i = req.num_cached_blocks
        hashes = req.block_hashes
        if len(hashes) <= i:
            hash_block = self._hash_block
            if hash_block is not None and len(hashes) == i:
                bs = self.block_size
                lora = req.lora
                hashes.append(
                    hash_block(
                        hashes[i - 1] if i else None,
                        req.tokens[i * bs : (i + 1) * bs],
                        i,
                        lora.name if lora else None,
                        req.cache_salt,
                    )
                )
            else:
                hashes = self.ensure_hashes(req, i + 1)
        if self.cpu_capacity or self.enable_events:
            self.cache_blocks(req, (i + 1) * self.block_size)
            return
        h = hashes[i]
        b = req.blocks[i]
        self.block_hash[b] = h
        # One lookup: b is fresh (unhashed), so it is never already the cached block of h.
        if self.cached.setdefault(h, b) != b:
            self._dups.setdefault(h, []).append(b)
        req.num_cached_blocks = i + 1

    def _remember_meta(self, req: Request, start: int, end: int) -> None:
        bs = self.block_size
        lora = req.lora
        for i in range(start, end):
            self.block_meta[req.blocks[i]] = _CpuEntry(
                parent=req.block_hashes[i - 1] if i else None,
                token_ids=req.tokens[i * bs : (i + 1) * bs],
                lora_id=lora.int_id if lora else None,
                lora_name=lora.name if lora else None,
                extra=self._extra(req, i),
            )

    def _extra(self, req: Request, index: int) -> tuple[Any, ...] | None:
        lora = req.lora
        if lora is None and req.cache_salt is None:
            return None
        return self.hasher.extra_keys(
            index,
            lora.name if lora else None,
            lora.path if lora else None,
            req.cache_salt,
        )

    def _emit_stored(self, req: Request, start: int, end: int, medium: str) -> None:
        bs = self.block_size
        hashes = req.block_hashes
        extras = [self._extra(req, i) for i in range(start, end)]
        lora = req.lora
        self._emit(
            BlockStored(
                block_hashes=[self._ext(h) for h in hashes[start:end]],
                parent_block_hash=self._ext(hashes[start - 1]) if start else None,
                token_ids=req.tokens[start * bs : end * bs],
                block_size=bs,
                lora_id=lora.int_id if lora else None,
                medium=medium,
                lora_name=lora.name if lora else None,
                extra_keys=extras if any(e is not None for e in extras) else None,
                group_idx=0,
                kv_cache_spec_kind=FULL_ATTENTION,
            )
        )

    def _evict(self, b: int) -> None:
        h = self.block_hash[b]
        assert h is not None
        self.block_hash[b] = None
        if self.cached.get(h) == b:
            dups = self._dups.get(h)
            if dups:
                self.cached[h] = dups.pop()
                if not dups:
                    del self._dups[h]
            else:
                del self.cached[h]
        else:
            dups = self._dups.get(h)
            if dups and b in dups:
                dups.remove(b)
                if not dups:
                    del self._dups[h]
        if self.enable_events:
            self._emit(BlockRemoved(block_hashes=[self._ext(h)], medium=MEDIUM_GPU, group_idx=0))
        meta = self.block_meta.pop(b, None) if self.cpu_capacity else None
        if meta is not None:
            self._offload(h, meta)

    def _offload(self, h: BlockHash, meta: _CpuEntry) -> None:
        cpu = self.cpu
        if h in cpu:
            cpu.move_to_end(h)
            return
        if len(cpu) >= self.cpu_capacity:
            old, _ = cpu.popitem(last=False)
            if self.enable_events:
                self._emit(
                    BlockRemoved(block_hashes=[self._ext(old)], medium=MEDIUM_CPU, group_idx=0)
                )
        cpu[h] = meta
        if self.enable_events:
            self._emit(
                BlockStored(
                    block_hashes=[self._ext(h)],
                    parent_block_hash=self._ext(meta.parent) if meta.parent is not None else None,
                    token_ids=meta.token_ids,
                    block_size=self.block_size,
                    lora_id=meta.lora_id,
                    medium=MEDIUM_CPU,
                    lora_name=meta.lora_name,
                    extra_keys=[meta.extra] if meta.extra is not None else None,
                    group_idx=0,
                    kv_cache_spec_kind=FULL_ATTENTION,
                )
            )

    def free_request(self, req: Request) -> None:
        """Release `req`'s blocks, tail first (cached blocks stay hits until reallocated)."""
        ref = self.ref_cnt
        qcount = self._qcount
        append = self._free_q.append
        n = 0
        for b in reversed(req.blocks):
            c = ref[b] - 1
            ref[b] = c
            if not c:
                append(b)
                qcount[b] += 1
                n += 1
        self._n_free += n
        req.blocks = []
        req.num_cached_blocks = 0
        if len(self._free_q) > 2 * self._n_free + self._compact_slack:
            self._compact_free_queue()

    def _compact_free_queue(self) -> None:
        """Drop stale entries of `_free_q` (amortised O(1): at least half of them are stale)."""
        ref = self.ref_cnt
        qcount = self._qcount
        live: list[int] = []
        # From the tail, a block's first entry is its last one: live iff its ref count is 0.
        for b in reversed(self._free_q):
            if qcount[b]:
                qcount[b] = 0
                if not ref[b]:
                    live.append(b)
        live.reverse()
        for b in live:
            qcount[b] = 1
        self._free_q = deque(live)

    def reset(self) -> bool:
        """Drop the whole prefix cache; refused (False) while any block is in use."""
        if self.num_free_blocks != self.num_gpu_blocks - 1:
            return False
        self.cached.clear()
        self._dups.clear()
        self.block_hash = [None] * self.num_gpu_blocks
        self.block_meta = {}
        self.cpu.clear()
        if self.enable_events:
            self._emit(AllBlocksCleared())
        return True

    # ----- queries used by routers and tests ---------------------------------------------------
    def cached_prefix_blocks(self, hashes: Sequence[BlockHash]) -> int:
        """How many leading `hashes` are cached on the GPU."""
        cached = self.cached
        n = 0
        for h in hashes:
            if h not in cached:
                break
            n += 1
        return n

    def cpu_prefix_blocks(self, hashes: Sequence[BlockHash], start: int) -> int:
        cpu = self.cpu
        n = 0
        for h in hashes[start:]:
            if h not in cpu:
                break
            n += 1
        return n
