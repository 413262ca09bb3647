"""TerminalSession actors: the product's TerminalSessionCore (authentication with its nonce
memory and the enabled flag, running totals) over an in-memory terminals table, in processes
that can die like the shards (ray.py). The gateway's SessionReporter reports to them."""

import asyncio
from typing import Any

from citycard.actors.terminal_session import TerminalSessionCore
from citycard.domain.taps import JournalRow
from citycard.errors import StoreError

from .network import Link
from .ray import Method, SimRayActor
from .scenario import Faults, Scenario
from .world import World

IO_MS = (1, 10)


class TerminalsTable:
    """The terminals table: terminal_id -> [enabled, last_seq, taps, charged_fen, seq_gaps]."""

    def __init__(self, terminal_ids: list[int]) -> None:
        self.rows: dict[int, list[Any]] = {t: [True, 0, 0, 0, 0] for t in terminal_ids}


class SimSessionStore:
    """The product's SessionStore over the table; its reads can fail while faults are on."""

    def __init__(self, world: World, faults: Faults, table: TerminalsTable) -> None:
        self.world = world
        self.faults = faults
        self.table = table

    async def _io(self) -> None:
        await asyncio.sleep(self.world.rng.randint(*IO_MS) / 1000.0)
        if self.world.chance(self.faults.p_load_fail):
            raise StoreError("store unavailable")

    async def open(self) -> None:
        await self._io()

    async def load(self, n_shards: int, shard_id: int) -> list[tuple[int, bool, int, int, int, int]]:
        await self._io()
        return [(t, *row) for t, row in self.table.rows.items() if t % n_shards == shard_id]  # type: ignore[misc]

    async def enabled(self, terminal_id: int) -> bool | None:
        await self._io()
        row = self.table.rows.get(terminal_id)
        return None if row is None else bool(row[0])

    async def save_totals(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        await self._io()
        for terminal_id, *totals in rows:
            self.table.rows[terminal_id][1:] = totals


class SimSession(SimRayActor):
    duplicate_calls = False  # a report adds to counters: Ray delivers it at most once
    def __init__(self, world: World, sc: Scenario, link: Link, shard_id: int, table: TerminalsTable,
                 settings: dict[str, Any]) -> None:
        self.shard_id = shard_id
        self.table = table
        self.settings = settings
        self.authenticate = Method(self._authenticate_remote)
        self.report = Method(self._report_remote)
        super().__init__(world, sc, link, f"session{shard_id}")

    def _new_core(self) -> TerminalSessionCore:
        return TerminalSessionCore(self.shard_id, self.settings,
                                   store=SimSessionStore(self.world, self.sc.faults, self.table))

    async def _authenticate_remote(self, *args: Any) -> tuple[int, str, int]:
        return await self._remote(lambda core, *a: core.authenticate(*a), *args)  # type: ignore[no-any-return]

    async def _report_remote(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        await self._remote(lambda core, r: core.report(r), rows)


def check_totals(world: World, sessions: list[SimSession], table: TerminalsTable, rows: list[JournalRow]) -> None:
    """Running totals may miss what a dead process had not flushed or reported, but never count
    a tap twice: at most the journal's rows and fen of each terminal, live or flushed."""
    journal: dict[int, list[int]] = {}
    for r in rows:
        if r.op_key is None:
            j = journal.setdefault(r.terminal_id, [0, 0])
            j[0] += 1
            j[1] += r.amount_fen if r.result == 0 else 0
    seen: list[tuple[str, int, int, int]] = [("table", t, row[2], row[3]) for t, row in table.rows.items()]
    for s in sessions:
        if s.core is not None:
            seen += [(s.name, t.terminal_id, t.taps, t.charged_fen) for t in s.core.terminals.values()]
    for where, terminal_id, taps, charged_fen in seen:
        n, fen = journal.get(terminal_id, [0, 0])
        if taps > n or charged_fen > fen:
            world.fail("totals-never-overcount", f"{where}: terminal {terminal_id} counts {taps} taps, "
                       f"{charged_fen} fen; the journal has {n} taps, {fen} fen")
