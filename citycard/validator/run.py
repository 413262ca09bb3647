"""``citycard validator run``: a bus validator in software, on a PC/SC reader.

Two loops share one store. The *sales* loop waits for a card in its reader, sells offline
(sale.py) and prints what the validator's display shows. The *link* loop keeps a terminal
connection to the gateway when it can: it fetches the fare table and hotlist deltas, and
uploads kept records in signed batches (uploader.py). Sales never wait for the link: with the
gateway down the validator keeps selling until its store is full.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

from ..config.fare_table import fare_tables_from_text
from ..domain.offline import batch_key
from ..domain.sam import SoftSam
from ..domain.tables import FareTables
from .link import GatewayLink
from .sale import Sale, Validator
from .store import Store

log = logging.getLogger(__name__)


class Presented(Protocol):
    """A card in the reader, for the length of one presentation."""

    async def transmit(self, apdu: bytes) -> bytes: ...


class CardReader(Protocol):
    async def next_card(self, timeout_s: float) -> Presented | None: ...

    async def card_gone(self, timeout_s: float) -> bool: ...


@dataclass(frozen=True)
class ValidatorSettings:
    terminal_id: int
    kind: int
    route: int
    state_dir: Path
    gateway: tuple[str, int] | None  # None: never connect (a validator kept offline)
    terminal_key_master: bytes  # the city master key the terminal's HELLO key derives from
    issuer_mpk: bytes
    batch_master_key: bytes
    max_records: int = 100_000
    upload_batch: int = 500
    upload_interval_s: float = 2.0
    for_s: float = 0.0  # 0: until interrupted
    max_sales: int = 0  # 0: no limit


class ValidatorApp:
    def __init__(self, cfg: ValidatorSettings, tables: FareTables, reader: CardReader,
                 out: Callable[[str], None] = print) -> None:
        self.cfg, self.reader, self.out = cfg, reader, out
        self.store = Store(cfg.state_dir / "store.sqlite3", cfg.terminal_id, cfg.max_records)
        self.sam = SoftSam(cfg.terminal_id, cfg.issuer_mpk, batch_key(cfg.batch_master_key, cfg.terminal_id),
                           self.store.next_seq())
        held = self.store.fare_table_text()
        if held is not None:  # the gateway's last table wins over the one configured here
            tables = fare_tables_from_text(held, f"{cfg.state_dir}/store.sqlite3 (fare table)")
        self.validator = Validator(self.sam, self.store, tables, cfg.kind, cfg.route)
        self.sales: list[Sale] = []
        self._stopping = False
        self.link = GatewayLink(cfg, self.store, self.sam, self._new_tables, out) if cfg.gateway else None

    def stop(self) -> None:
        """SIGINT/SIGTERM: finish the sale in hand, then stop."""
        self._stopping = True

    def _new_tables(self, tables: FareTables) -> None:
        self.validator.tables = tables

    async def run(self) -> int:
        deadline = time.monotonic() + self.cfg.for_s if self.cfg.for_s > 0 else None
        try:
            async with asyncio.TaskGroup() as tg:
                link = tg.create_task(self.link.run()) if self.link else None
                await self._sales(deadline)
                if link:
                    await self.link.stop()
        finally:
            self.store.close()
        return 0

    async def _sales(self, deadline: float | None) -> None:
        while not self._stopping and (deadline is None or time.monotonic() < deadline):
            if self.cfg.max_sales and len(self.sales) >= self.cfg.max_sales:
                return
            wait_s = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            card = await self.reader.next_card(wait_s)
            if card is None:
                continue
            now = time.time()
            started = time.perf_counter()
            sale = await self.validator.sell(card.transmit, int(now * 1000), _local_date(self.validator.tables, now))
            took_ms = (time.perf_counter() - started) * 1000
            self.sales.append(sale)
            self.out(f"{sale.display()}  [{sale.apdus} APDUs, {took_ms:.0f} ms]")
            if self.link:
                self.link.kick()
            await self.reader.card_gone(timeout_s=30.0)


def _local_date(tables: FareTables, now_s: float) -> date:
    ver = tables.at(int(now_s * 1000)) or tables.versions[0]
    return datetime.fromtimestamp(now_s, timezone(timedelta(milliseconds=ver.utc_offset_ms))).date()


def validator_state_dir(state_root: Path, terminal_id: int) -> Path:
    return state_root / "validators" / str(terminal_id)

