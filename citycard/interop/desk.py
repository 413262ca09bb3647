"""The acquirer's side of the region: the gateway's router hands it every tap of a card
another registered city issued (``claims``/``submit``). It asks the issuer over the link,
journals the answer (remote_taps) and only then answers the terminal; when the issuer cannot
answer in time it stands in under the issuer's floor limit, records the approval durably
(standin_taps) before answering OK, and advises the issuer once the link is back."""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..domain.issuers import IssuerRegistry
from ..domain.results import DECIDED, Result
from ..domain.standin import StandIn, StandInCode, TapKey, terminal_result
from ..domain.taps import Outcome, Tap
from ..protocols import interop as ix
from ..tasks import cancel_and_wait
from . import store
from .client import LinkClient

log = logging.getLogger(__name__)

_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
ADVICE_TIMEOUT_S = 10.0
ADVICE_CHECK_S = 1.0  # while the link is up, how often owed advice is looked for


class LinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.standin_taps = Counter("citycard_standin_taps", "Visitors' taps approved in stand-in, by issuer",
                                    ["issuer"], registry=r)
        self.standin_risk = Gauge("citycard_standin_risk_fen", "Stand-in approvals the issuer has not decided yet"
                                  " (fen), by issuer", ["issuer"], registry=r)
        self.standin_declined = Counter("citycard_standin_declined_fen", "Stand-in approvals the issuer declined:"
                                        " the acquirer's loss (fen), by issuer", ["issuer"], registry=r)
        self.link_up = Gauge("citycard_link_up", "1 while the link to the issuer is authenticated", ["issuer"],
                             registry=r)
        self.remote_latency = Histogram("citycard_remote_tap_seconds", "Visitor's tap: sent to the issuer to its"
                                        " answer journaled here", buckets=_BUCKETS_S, registry=r)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class RemoteDesk:
    def __init__(self, registry: IssuerRegistry, key: Ed25519PrivateKey, pool: Any, metrics: LinkMetrics, *,
                 price: Callable[[Tap, int], int], hotlisted: Callable[[int], bool], tap_timeout_ms: int,
                 connect_timeout_ms: int, max_inflight: int, standin_window_ms: int, backoff_min_ms: int,
                 backoff_max_ms: int, wall_ms: Callable[[], int] = _wall_ms) -> None:
        self.registry = registry
        self.own = registry.own.code
        self._pool = pool
        self.metrics = metrics
        self._price = price
        self._hotlisted = hotlisted
        self.tap_timeout_s = tap_timeout_ms / 1000.0
        self._wall_ms = wall_ms
        self._issuers = {i.card_prefix: i for i in registry.others()}
        self.standin = StandIn({i.code: i.floor_limit_fen for i in registry.others()}, standin_window_ms)
        self.clients = {i.code: LinkClient(self.own, key, i, connect_timeout_s=connect_timeout_ms / 1000.0,
                                           max_inflight=max_inflight, backoff_min_s=backoff_min_ms / 1000.0,
                                           backoff_max_s=backoff_max_ms / 1000.0, on_up=self._on_up)
                        for i in registry.others()}
        for code in self.clients:
            metrics.link_up.labels(code).set(0)
        self._advice_due = {code: asyncio.Event() for code in self.clients}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._advisers: list[asyncio.Task[None]] = []
        self._stood_in: set[tuple[int, int]] = set()  # (terminal_id, seq) approved in stand-in, advice owed
        self.suspended: frozenset[str] = frozenset()  # issuers the clearing house suspended: no stand-in
        self._writing: dict[tuple[int, int], asyncio.Future[bool]] = {}  # stand-in rows being written: durable?

    def set_suspended(self, codes: Iterable[str]) -> frozenset[str]:
        """The clearing house's GET /suspended, as last polled: those issuers' cards are refused
        stand-in here (StandInCode.ISSUER_SUSPENDED) until a later poll lifts them. Codes of cities
        this desk does not know are kept out (they have no cards here); returns what is kept."""
        self.suspended = frozenset(c for c in codes if c in self.clients)
        return self.suspended

    # -- the gateway's hook: one division and one dict probe per tap -------------------------
    def claims(self, card_no: int) -> bool:
        return card_no // 10**11 in self._issuers

    def submit(self, tap: Tap, pending: Any, index: int) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(tap, pending, index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, tap: Tap, pending: Any, index: int) -> None:
        try:
            outcome = await self.decide(tap)
        except Exception as exc:  # noqa: BLE001 - the store failed: nothing promised, the terminal retries
            log.warning("visitor's tap %s/%s failed: %r", tap.terminal_id, tap.seq, exc)
            outcome = Outcome(int(Result.RETRY), 0, -1, False)
        pending.settle(index, outcome)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Advice still owed from before a restart: reload it, and open those links."""
        for code, client in self.clients.items():
            owed = await store.pending_advice(self._pool, code, 1_000_000)
            for t in owed:
                self.standin.decide(TapKey(self.own, t.terminal_id, t.seq), t.card_no, t.amount_fen, code,
                                    self._wall_ms())
                self._stood_in.add((t.terminal_id, t.seq))
            if owed:
                client.start()
                self._advice_due[code].set()
            self._publish_risk(code)
        self._advisers = [asyncio.get_running_loop().create_task(self._adviser(code)) for code in self.clients]

    async def stop(self) -> None:
        await cancel_and_wait(self._advisers + list(self._tasks))
        for client in self.clients.values():
            await client.stop()

    def _on_up(self, code: str, up: bool) -> None:
        self.metrics.link_up.labels(code).set(1 if up else 0)
        if up:
            self._advice_due[code].set()

    # -- one visitor's tap -------------------------------------------------------------------
    async def decide(self, tap: Tap) -> Outcome:
        issuer = self._issuers[tap.card_no // 10**11]
        key = TapKey(self.own, tap.terminal_id, tap.seq)
        amount_fen = self._price(tap, issuer.card_prefix)
        t = store.LinkTap(issuer.code, tap.terminal_id, tap.seq, tap.card_no, tap.kind, tap.route, tap.time_ms,
                          amount_fen, tap.bill_class)
        if (tap.terminal_id, tap.seq) in self._stood_in:
            return Outcome(int(Result.OK), amount_fen, -1, True)  # a retry of a stand-in approval
        client = self.clients[issuer.code]
        started = time.perf_counter()
        if tap.terminal_id > store.MAX_REMOTE_TERMINAL_ID:  # outside the issuers' key space (store.py)
            log.warning("terminal %s cannot take visitors' cards: ids above %s have no link key", tap.terminal_id,
                        store.MAX_REMOTE_TERMINAL_ID)
            return Outcome(int(Result.ISSUER_NOT_ACCEPTED), 0, -1, False)
        answer = await client.decide(ix.RemoteTap(
            acquirer=self.own, terminal_id=tap.terminal_id, seq=tap.seq, card=tap.card_no, time_ms=tap.time_ms,
            kind=tap.kind, amount_fen=amount_fen, route=tap.route, bill_class=tap.bill_class), self.tap_timeout_s)
        if answer is not None and answer.code not in DECIDED:
            return Outcome(answer.code, 0, -1, False)  # the issuer is busy: nothing decided, the terminal retries
        if answer is not None:
            await store.log_remote_tap(self._pool, t, answer.code, answer.fare_fen, answer.balance_fen,
                                       answer.replay, self._wall_ms())
            self.metrics.remote_latency.observe(time.perf_counter() - started)
            return Outcome(answer.code, answer.fare_fen, answer.balance_fen, answer.replay)
        return await self._stand_in(t, key)

    async def _stand_in(self, t: store.LinkTap, key: TapKey) -> Outcome:
        d = self.standin.decide(key, t.card_no, t.amount_fen, t.issuer, self._wall_ms(), suspended=self.suspended,
                                hotlisted=self._hotlisted)
        if d.code is not StandInCode.APPROVED:
            return Outcome(int(terminal_result(d.code)), 0, -1, False)
        if d.replay:  # OK only once the first approval is durable; its write failed: RETRY too
            write = self._writing.get((t.terminal_id, t.seq))
            if write is not None and not await asyncio.shield(write):
                return Outcome(int(Result.RETRY), 0, -1, False)
        else:
            write = self._writing[(t.terminal_id, t.seq)] = asyncio.get_running_loop().create_future()
            try:
                await store.record_standin(self._pool, t, self._wall_ms())  # durable before the terminal hears OK
            except BaseException:
                self.standin.forget(key)  # never durable: the retry is decided anew
                write.set_result(False)
                raise
            finally:
                del self._writing[(t.terminal_id, t.seq)]
            write.set_result(True)
            self._stood_in.add((t.terminal_id, t.seq))
            self.metrics.standin_taps.labels(t.issuer).inc()
            self._publish_risk(t.issuer)
            self._advice_due[t.issuer].set()
        return Outcome(int(Result.OK), t.amount_fen, -1, d.replay)

    def _publish_risk(self, code: str) -> None:
        self.metrics.standin_risk.labels(code).set(self.standin.risk(code).pending_fen)

    # -- advice ------------------------------------------------------------------------------
    async def _adviser(self, code: str) -> None:
        due, client = self._advice_due[code], self.clients[code]
        while True:
            try:
                await asyncio.wait_for(due.wait(), ADVICE_CHECK_S)
            except TimeoutError:
                continue
            if not client.up:
                client.start()
                await asyncio.sleep(ADVICE_CHECK_S)  # the link's own backoff brings it back; on_up sets due
                continue
            due.clear()
            try:
                while await self._advise_once(code, client):
                    pass
            except Exception as exc:  # noqa: BLE001 - try again on the next check
                log.warning("advice to %s: %r", code, exc)
                due.set()
                await asyncio.sleep(ADVICE_CHECK_S)

    async def _advise_once(self, code: str, client: LinkClient) -> bool:
        """One advice message of the oldest owed; True if there may be more."""
        owed = await store.pending_advice(self._pool, code, ix.MAX_ADVICE_ITEMS)
        if not owed:
            return False
        items = [ix.AdviceItem(terminal_id=t.terminal_id, seq=t.seq, card=t.card_no, amount_fen=t.amount_fen,
                               time_ms=t.time_ms, kind=t.kind, route=t.route) for t in owed]
        ack = await client.advise(items, ADVICE_TIMEOUT_S)
        if ack is None:
            self._advice_due[code].set()
            await asyncio.sleep(ADVICE_CHECK_S)
            return False
        sent = {(t.terminal_id, t.seq) for t in owed}  # an ack settles only what this advice carried
        decided = [(i.terminal_id, i.seq, i.decision == ix.AdviceDecision.ACCEPTED, i.code) for i in ack.items
                   if (i.terminal_id, i.seq) in sent]
        if len(decided) < len(ack.items):
            log.warning("advice to %s: %d ack items name taps not in the advice", code, len(ack.items) - len(decided))
        await store.settle_standin(self._pool, code, decided, self._wall_ms())
        self._stood_in.difference_update((tid, seq) for tid, seq, _, _ in decided)
        self.standin.confirm(TapKey(self.own, tid, seq) for tid, seq, ok, _ in decided if ok)
        declined = [TapKey(self.own, tid, seq) for tid, seq, ok, _ in decided if not ok]
        declined_set = set(declined)
        lost = sum(t.amount_fen for t in owed if TapKey(self.own, t.terminal_id, t.seq) in declined_set)
        self.standin.decline(declined)
        if lost:
            self.metrics.standin_declined.labels(code).inc(lost)
        self._publish_risk(code)
        return len(owed) == ix.MAX_ADVICE_ITEMS


__all__ = ["LinkMetrics", "RemoteDesk"]
