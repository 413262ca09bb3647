"""The acquirer's advice to its issuers (docs/interop.md, 3 and 5.5): the stand-in approvals
and the voids it owes, sent once the link is up, oldest first, 500 an ``advice``. The issuer's
ack decides each item or leaves it undecided; a decided item ends (one transaction), an
undecided one is sent again later, with backoff, and expires after ``MAX_ADVICE_ATTEMPTS``
undecided answers (not by age: after a long outage the issuer must have its say first): an
approval then becomes the acquirer's loss
(``declined``, with the reason), a void ``expired`` (the issuer may hold a charge for it)."""

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..domain.results import Result
from ..domain.standin import StandIn, TapKey
from ..protocols import interop as ix
from ..tasks import log_failure
from . import store
from .client import LinkClient

log = logging.getLogger(__name__)

ADVICE_TIMEOUT_S = 10.0
ADVICE_CHECK_S = 1.0  # while the link is up, how often owed advice is looked for
MAX_ADVICE_ATTEMPTS = 30  # undecided answers before an item expires (~2 h of backoff)
RETRY_MIN_MS, RETRY_MAX_MS = 1_000, 300_000  # an undecided item waits 1 s, doubling to 5 min

_D = ix.AdviceDecision
# (void?, decision) -> the row's end state; a pair not here is undecided (sent again)
_ENDS = {(False, _D.ACCEPTED): "confirmed", (False, _D.DECLINED): "declined", (True, _D.VOIDED): "voided",
         (True, _D.REVERSED): "reversed", (True, _D.DECLINED): "voided"}


def retry_after_ms(attempts: int) -> int:
    """The wait before an item answered undecided ``attempts + 1`` times is sent again."""
    return min(RETRY_MAX_MS, RETRY_MIN_MS << min(attempts, 20))


def expires(t: store.LinkTap, now_ms: int) -> bool:
    """Whether an item the issuer just left undecided is given up for good."""
    return t.attempts + 1 >= MAX_ADVICE_ATTEMPTS


def settle(owed: list[store.LinkTap], ack: ix.StandInAdviceAck, now_ms: int
           ) -> tuple[list[store.Settled], list[tuple[int, int, int]]]:
    """The rows this ack ends, and those it leaves for later (terminal_id, seq, next_try_ms).
    An ack settles only what its advice carried; an item it does not name is undecided."""
    answers = {(i.terminal_id, i.seq): i for i in ack.items}
    settled: list[store.Settled] = []
    later: list[tuple[int, int, int]] = []
    for t in owed:
        a = answers.get((t.terminal_id, t.seq))
        void = t.refused_code is not None
        end = _ENDS.get((void, _D(a.decision))) if a is not None else None
        if a is not None and end is not None:
            settled.append(store.Settled(t.terminal_id, t.seq, end, a.code))
        elif expires(t, now_ms):
            code = a.code if a is not None else int(Result.RETRY)
            why = (f"expired: undecided {t.attempts + 1} times, last {a.decision if a else 'unanswered'}/{code}"
                   f" ({'void' if void else 'approval'})")
            settled.append(store.Settled(t.terminal_id, t.seq, "expired" if void else "declined", code, why))
        else:
            later.append((t.terminal_id, t.seq, now_ms + retry_after_ms(t.attempts)))
    return settled, later


class Adviser:
    """One task per issuer sending what is owed to it while its link is up."""

    def __init__(self, own: str, pool: Any, clients: Mapping[str, LinkClient], standin: StandIn, metrics: Any,
                 wall_ms: Callable[[], int]) -> None:
        self.own = own
        self._pool = pool
        self.clients = clients
        self.standin = standin
        self.metrics = metrics
        self._wall_ms = wall_ms
        self.due = {code: asyncio.Event() for code in clients}
        self._retry_at: dict[str, int] = {}  # issuer -> the earliest next_try_ms it holds
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(code)) for code in self.clients]
        for code, task in zip(self.clients, self._tasks, strict=True):
            task.add_done_callback(log_failure(log, f"advice to {code}"))

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return self._tasks

    async def _run(self, code: str) -> None:
        due, client = self.due[code], self.clients[code]
        while True:
            try:
                await asyncio.wait_for(due.wait(), ADVICE_CHECK_S)
            except TimeoutError:
                at = self._retry_at.get(code)
                if at is None or self._wall_ms() < at:
                    continue
                del self._retry_at[code]
                due.set()  # items left undecided are due again
            if not client.up:
                client.start()
                await asyncio.sleep(ADVICE_CHECK_S)  # the link's own backoff brings it back; on_up sets due
                continue
            due.clear()
            try:
                while await self.advise_once(code, client):
                    pass
            except Exception as exc:  # noqa: BLE001 - try again on the next check
                log.warning("advice to %s: %r", code, exc)
                due.set()
                await asyncio.sleep(ADVICE_CHECK_S)

    async def advise_once(self, code: str, client: LinkClient) -> bool:
        """One advice message of the oldest due; True if there may be more due now."""
        now_ms = self._wall_ms()
        owed = await store.pending_advice(self._pool, code, ix.MAX_ADVICE_ITEMS, now_ms)
        if not owed:  # none due now; those waiting (after a restart too) are looked at when due
            self._wait_until(code, await store.next_advice_ms(self._pool, code))
            return False
        items = [ix.AdviceItem(terminal_id=t.terminal_id, seq=t.seq, card=t.card_no, amount_fen=t.amount_fen,
                               time_ms=t.time_ms, kind=t.kind, route=t.route, void=t.refused_code is not None)
                 for t in owed]
        ack = await client.advise(items, ADVICE_TIMEOUT_S)
        if ack is None:
            self.due[code].set()
            await asyncio.sleep(ADVICE_CHECK_S)
            return False
        sent = {(t.terminal_id, t.seq) for t in owed}
        stray = sum(1 for i in ack.items if (i.terminal_id, i.seq) not in sent)
        if stray:
            log.warning("advice to %s: %d ack items name taps not in the advice", code, stray)
        now_ms = self._wall_ms()
        settled, later = settle(owed, ack, now_ms)
        await store.settle_standin(self._pool, code, settled, later, now_ms)
        if later:
            self._wait_until(code, min(n for _, _, n in later))
        self._account(code, owed, settled)
        return len(owed) == ix.MAX_ADVICE_ITEMS and not later

    def _wait_until(self, code: str, at_ms: int | None) -> None:
        if at_ms is not None:
            self._retry_at[code] = min(at_ms, self._retry_at.get(code, at_ms))

    def _account(self, code: str, owed: list[store.LinkTap], settled: list[store.Settled]) -> None:
        """The settled rows in the stand-in's memory and the metrics."""
        rows = {(t.terminal_id, t.seq): t for t in owed}
        confirmed, declined, lost_fen, expired_fen = [], [], 0, 0
        for s in settled:
            t = rows[(s.terminal_id, s.seq)]
            key = TapKey(self.own, s.terminal_id, s.seq)
            if t.refused_code is None:  # an approval
                if s.state == "confirmed":
                    confirmed.append(key)
                else:
                    declined.append(key)
                    lost_fen += t.amount_fen
            else:
                self.metrics.voids.labels(code, s.state).inc()
            if s.reason is not None:
                expired_fen += t.amount_fen
                log.warning("advice to %s: %s/%s %s", code, s.terminal_id, s.seq, s.reason)
        self.standin.confirm(confirmed)
        self.standin.decline(declined)
        if lost_fen:
            self.metrics.standin_declined.labels(code).inc(lost_fen)
        if expired_fen:
            self.metrics.advice_expired.labels(code).inc(expired_fen)
        self.metrics.standin_risk.labels(code).set(self.standin.risk(code).pending_fen)


__all__ = ["ADVICE_CHECK_S", "ADVICE_TIMEOUT_S", "MAX_ADVICE_ATTEMPTS", "Adviser", "expires",
           "retry_after_ms", "settle"]
