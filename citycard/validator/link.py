"""The validator's link to its gateway: connect when it can, take the fare table and hotlist
deltas, upload kept records; back off when the gateway is down, and never hold up a sale."""

import asyncio
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config.fare_table import fare_tables_from_text
from ..domain.offline import OfflineRecord
from ..domain.sam import SoftSam
from ..domain.tables import FareTables
from ..errors import CityCardError, ConfigError
from ..protocols import messages as m
from ..terminal.client import TerminalClient
from .store import Store
from .uploader import upload_one

if TYPE_CHECKING:
    from .run import ValidatorSettings

log = logging.getLogger(__name__)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0  # docs/protocol.md, section 1
MAX_HOTLIST_ROUNDS = 100  # params answers followed per refresh (each up to MAX_HOTLIST_ITEMS)


class GatewayLink:
    def __init__(self, cfg: "ValidatorSettings", store: Store, sam: SoftSam,
                 on_tables: Callable[[FareTables], None], out: Callable[[str], None]) -> None:
        self.cfg, self.store, self.sam, self.on_tables, self.out = cfg, store, sam, on_tables, out
        self.connected = False
        self._wake = asyncio.Event()
        self._stopping = False
        self.client: TerminalClient | None = None

    def kick(self) -> None:
        """A sale was kept: upload soon."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        backoff_s = BACKOFF_FIRST_S
        while not self._stopping:
            try:
                await self._session()
                backoff_s = BACKOFF_FIRST_S
            except (OSError, CityCardError, TimeoutError) as exc:
                if self.connected:
                    self.out(f"gateway lost ({exc}); selling offline, {self.store.waiting()} records kept")
                else:
                    log.info("gateway unreachable: %s", exc)
            finally:
                self.connected = False
                if self.client is not None:
                    await self.client.close()
                    self.client = None
            if self._stopping:
                return
            await self._sleep(backoff_s * (0.5 + random.random()))
            backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)

    async def _session(self) -> None:
        assert self.cfg.gateway is not None
        host, port = self.cfg.gateway
        self.client = client = TerminalClient(self.cfg.terminal_id, self.cfg.terminal_key_master)
        await client.connect(host, port, os.urandom(m.NONCE_BYTES))
        self.connected = True
        self.out(f"gateway {host}:{port} connected; {self.store.waiting()} records to upload")
        while not self._stopping:
            await self._refresh(client)
            while (done := await upload_one(self.store, self.sam, self._sender(client), self.cfg.upload_batch)):
                self.out(f"uploaded batch {done.batch_seq}: {done.kept} kept, {done.refused} refused")
            await self._sleep(self.cfg.upload_interval_s)

    def _sender(self, client: TerminalClient):  # type: ignore[no-untyped-def]
        async def send(batch_seq: int, records: Sequence[OfflineRecord], mac: bytes) -> Sequence[int]:
            ack = await client.upload(batch_seq, records, mac)
            return ack.codes
        return send

    async def _refresh(self, client: TerminalClient) -> None:
        """The fare table if another is in force (11.2), then the hotlist's changes since the
        version held (11.1)."""
        held = self.store.get("fare_version", 0)
        version = self.store.get("hotlist_version", 0)
        assert isinstance(held, int) and isinstance(version, int)
        p = await client.params(fare_version=held, hotlist_version=version, fares=True)
        if p.fare_table:
            try:
                tables = fare_tables_from_text(p.fare_table, "the gateway's fare table")
            except ConfigError as exc:
                self.out(f"fare table refused, keeping version {held}: {exc}")
            else:
                self.store.put_fares(p.fare_version, p.fare_table)
                self.on_tables(tables)
                self.out(f"fare table version {p.fare_version} from the gateway")
        for _ in range(MAX_HOTLIST_ROUNDS):
            p = await client.params(hotlist_version=version)
            if p.hotlist_to == 0 and not p.hotlist_reset:
                return
            self.store.hotlist_apply(p.hotlist_reset, p.hotlist_added, p.hotlist_removed, p.hotlist_to)
            version = p.hotlist_to
            if not p.hotlist_more:
                return

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
