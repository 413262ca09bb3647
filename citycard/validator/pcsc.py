"""The validator's card reader: one PC/SC reader through ``reader_pool``. A card is offered
once per presentation: after a sale the validator waits for the card to leave."""

import asyncio
import contextlib
from types import TracebackType

from ..reader_pool import ReaderPool
from ..reader_pool import events as ev
from ..reader_pool.errors import ReaderPoolError
from .run import Presented


class PcscCardReader:
    def __init__(self, reader: str, apdu_timeout_ms: int) -> None:
        self.reader = reader
        self.pool = ReaderPool(lambda name: name == reader, apdu_timeout_ms=apdu_timeout_ms)
        self._present = asyncio.Event()
        self._absent = asyncio.Event()
        self._absent.set()
        self._watch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "PcscCardReader":
        await self.pool.start()
        self._watch = asyncio.get_running_loop().create_task(self._follow())
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.pool.close()

    async def _follow(self) -> None:
        async for event in self.pool.events():
            if event.reader != self.reader:
                continue
            if isinstance(event, ev.CardInserted):
                self._absent.clear()
                self._present.set()
            elif isinstance(event, ev.CardRemoved | ev.ReaderRemoved):
                self._present.clear()
                self._absent.set()

    async def next_card(self, timeout_s: float) -> Presented | None:
        try:
            await asyncio.wait_for(self._present.wait(), timeout_s)
        except TimeoutError:
            return None
        try:
            return await self.pool.card(self.reader, timeout_ms=int(timeout_s * 1000) or 1)
        except ReaderPoolError:
            self._present.clear()  # gone again before we could talk to it
            return None

    async def card_gone(self, timeout_s: float) -> bool:
        """Wait for the card to leave; False if it is still there after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._absent.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
