"""TerminalSession: terminals of one session shard: authentication, seq tracking, totals.

Kept off the per-tap path: the gateway calls it once per connection (authenticate) and sends
it per-terminal summaries of answered taps in the background (report).
"""

import asyncio
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

from ..config.settings import settings_from_dict
from ..persistence.terminals import PgSessionStore, TerminalRow
from ..protocols.auth import terminal_key, verify_mac
from ..protocols.codes import ErrorCode

log = logging.getLogger(__name__)
NONCE_MEMORY = 64  # recent terminal nonces kept per terminal to refuse a replayed hello
FLUSH_INTERVAL_S = 1.0


@dataclass
class TerminalState:
    terminal_id: int
    enabled: bool
    last_seq: int = 0
    taps: int = 0
    charged_fen: int = 0
    seq_gaps: int = 0
    sessions: int = 0
    nonces: deque[bytes] = field(default_factory=lambda: deque(maxlen=NONCE_MEMORY))
    dirty: bool = False


class SessionStore(Protocol):
    async def open(self) -> None: ...
    async def load(self, n_shards: int, shard_id: int) -> list[TerminalRow]: ...
    async def enabled(self, terminal_id: int) -> bool | None: ...
    async def save_totals(self, rows: list[tuple[int, int, int, int, int]]) -> None: ...


class TerminalSessionCore:
    """Everything but the Ray decorator; ``store`` is Postgres unless given (tests/sim)."""

    def __init__(self, shard_id: int, settings: dict[str, Any], db_url: str = "", *,
                 store: SessionStore | None = None) -> None:
        self.shard_id = shard_id
        self.settings = settings_from_dict(settings)
        self.db_url = db_url
        self.master_key = self.settings.city.master_key
        self.n_shards = self.settings.city.session_shards
        self.terminals: dict[int, TerminalState] = {}
        self.store: SessionStore = store or PgSessionStore(db_url, self.settings.database.schema)
        self._loaded = asyncio.Event()
        self._loading: asyncio.Task[Any] | None = None
        self._flusher: asyncio.Task[Any] | None = None

    async def ensure_loaded(self) -> None:
        if self._loaded.is_set():
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        await self.store.open()
        await self.reload()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        self._loaded.set()

    async def reload(self) -> int:
        """(Re)read this shard's terminals from Postgres; keeps in-memory counters."""
        for terminal_id, enabled, last_seq, taps, charged_fen, seq_gaps in await self.store.load(
                self.n_shards, self.shard_id):
            t = self.terminals.get(terminal_id)
            if t is None:
                self.terminals[terminal_id] = TerminalState(terminal_id, enabled, last_seq, taps, charged_fen, seq_gaps)
            else:
                t.enabled = enabled
        return len(self.terminals)

    async def authenticate(
        self, terminal_id: int, terminal_nonce: bytes, server_nonce: bytes, mac: bytes
    ) -> tuple[int, str, int]:
        """(0 or an ErrorCode, message, last_seq). The MAC key is derived, never stored."""
        await self.ensure_loaded()
        t = self.terminals.get(terminal_id)
        if t is None:
            await self.reload()  # registered since we loaded?
            t = self.terminals.get(terminal_id)
        if t is None:
            return int(ErrorCode.UNKNOWN_TERMINAL), f"terminal {terminal_id} is not registered", 0
        enabled = await self.store.enabled(terminal_id)
        if enabled is not None:  # the operator may have disabled (or re-enabled) it since we loaded
            t.enabled = enabled
        if not t.enabled:
            return int(ErrorCode.TERMINAL_DISABLED), f"terminal {terminal_id} is disabled", 0
        if terminal_nonce in t.nonces:
            return int(ErrorCode.AUTH_REPLAY), "terminal nonce already used", 0
        key = terminal_key(self.master_key, terminal_id)
        if not verify_mac(key, terminal_id, terminal_nonce, server_nonce, mac):
            return int(ErrorCode.AUTH_FAILED), "MAC does not verify", 0
        t.nonces.append(terminal_nonce)
        t.sessions += 1
        return 0, "ok", t.last_seq

    async def report(self, summaries: list[tuple[int, list[tuple[int, int]], int, int]]) -> None:
        """(terminal_id, runs of seqs, taps, charged_fen) of answered, first-time taps. A gap
        is a jump past the highest seq so far (from the first): seqs 1, 3 -> one gap; 1, 5 ->
        one; a seq that fills it later does not take it back (docs/protocol.md 7.2)."""
        await self.ensure_loaded()
        for terminal_id, runs, taps, charged_fen in summaries:
            t = self.terminals.get(terminal_id)
            if t is None:
                continue
            for lo, hi in runs:
                if t.last_seq and lo > t.last_seq + 1:
                    t.seq_gaps += 1
                if hi > t.last_seq:
                    t.last_seq = hi
            t.taps += taps
            t.charged_fen += charged_fen
            t.dirty = True

    async def totals(self, terminal_id: int) -> dict[str, int] | None:
        await self.ensure_loaded()
        t = self.terminals.get(terminal_id)
        if t is None:
            return None
        return {
            "terminal_id": t.terminal_id, "last_seq": t.last_seq, "taps": t.taps,
            "charged_fen": t.charged_fen, "seq_gaps": t.seq_gaps, "sessions": t.sessions,
        }

    async def flush(self) -> int:
        dirty = [t for t in self.terminals.values() if t.dirty]
        if not dirty:
            return 0
        await self.store.save_totals([(t.terminal_id, t.last_seq, t.taps, t.charged_fen, t.seq_gaps) for t in dirty])
        for t in dirty:
            t.dirty = False
        return len(dirty)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - totals are advisory; the next flush writes them
                log.warning("session %s: flushing totals failed: %r", self.shard_id, exc)

    def pid(self) -> int:
        return os.getpid()


# No task events: Ray kept one per tap batch in the GCS (its memory grew ~45 MB a minute at
# 10,000 taps/s) and spent CPU on both ends recording them; errors are still logged.
@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=10_000, enable_task_events=False)
class TerminalSession(TerminalSessionCore):
    pass
