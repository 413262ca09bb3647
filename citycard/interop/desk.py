"""The acquirer's side of the region: the gateway's router hands it every tap of a card
another registered city issued (``claims``/``submit``). It asks the issuer over the link,
journals the answer (remote_taps) and only then answers the terminal; when the issuer cannot
answer in time it stands in under the issuer's floor limit, records the approval durably
(standin_taps) before answering OK, and advises the issuer once the link is back (advice.py).
A tap the issuer may have decided (sent, unanswered) that stand-in refuses is recorded as a
void, advice too: the issuer holds the key refused and credits back what it charged. A key
is decided here once: a retry is answered from what the store holds (``store.prior``)."""

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
from ..tasks import cancel_and_wait, log_failure
from . import journal, store
from .advice import Adviser
from .client import LinkClient, NoAnswer

log = logging.getLogger(__name__)

_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
DEFAULT_MAX_VISITOR_TAPS = 10_000  # visitors' taps in flight on this desk; more: BUSY at once
_BUSY = Outcome(int(Result.BUSY), 0, -1, False)
_RETRY = Outcome(int(Result.RETRY), 0, -1, False)
_FINAL_VOID = {"voided", "reversed", "expired"}


class LinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.standin_taps = Counter("citycard_standin_taps", "Visitors' taps approved in stand-in, by issuer",
                                    ["issuer"], registry=r)
        self.standin_risk = Gauge("citycard_standin_risk_fen", "Stand-in approvals the issuer has not decided yet"
                                  " (fen), by issuer", ["issuer"], registry=r)
        self.standin_declined = Counter("citycard_standin_declined_fen", "Stand-in approvals the issuer declined"
                                        " or that expired undecided: the acquirer's loss (fen), by issuer",
                                        ["issuer"], registry=r)
        self.advice_expired = Counter("citycard_advice_expired_fen", "Advice items given up undecided (fen), by"
                                      " issuer: approvals lost, voids the issuer may still hold a charge for",
                                      ["issuer"], registry=r)
        self.voids = Counter("citycard_link_voids", "Taps sent unanswered then refused here: recorded, and how"
                             " the issuer resolved them (voided, reversed, expired)", ["issuer", "state"], registry=r)
        self.visitor_busy = Counter("citycard_visitor_taps_busy", "Visitors' taps answered BUSY: too many in flight",
                                    registry=r)
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
                 backoff_max_ms: int, wall_ms: Callable[[], int] = _wall_ms,
                 max_visitor_taps: int = DEFAULT_MAX_VISITOR_TAPS) -> None:
        self.registry = registry
        self.own = registry.own.code
        self._pool = pool
        self.metrics = metrics
        self._price = price
        self._hotlisted = hotlisted
        self.tap_timeout_s = tap_timeout_ms / 1000.0
        self.max_visitor_taps = max_visitor_taps
        self._wall_ms = wall_ms
        self._issuers = {i.card_prefix: i for i in registry.others()}
        self.standin = StandIn({i.code: i.floor_limit_fen for i in registry.others()}, standin_window_ms)
        self.clients = {i.code: LinkClient(self.own, key, i, connect_timeout_s=connect_timeout_ms / 1000.0,
                                           max_inflight=max_inflight, backoff_min_s=backoff_min_ms / 1000.0,
                                           backoff_max_s=backoff_max_ms / 1000.0, on_up=self._on_up)
                        for i in registry.others()}
        for code in self.clients:
            metrics.link_up.labels(code).set(0)
        self.adviser = Adviser(self.own, pool, self.clients, self.standin, metrics, wall_ms)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.suspended: frozenset[str] = frozenset()  # issuers the clearing house suspended: no stand-in
        self._writing: dict[tuple[int, int], asyncio.Future[bool]] = {}  # stand-in rows being written: durable?
        self._voiding: set[tuple[int, int]] = set()  # voids being written: a retry meanwhile hears BUSY
        # keys being decided: a retry meanwhile waits for the first's outcome (never a second ask)
        self._deciding: dict[tuple[int, int], asyncio.Future[Outcome]] = {}

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
        if len(self._tasks) >= self.max_visitor_taps:  # bounded like a shard lane: BUSY, the terminal retries
            self.metrics.visitor_busy.inc()
            pending.settle(index, _BUSY)
            return
        task = asyncio.get_running_loop().create_task(self._settle(tap, pending, index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure(log, f"visitor's tap {tap.terminal_id}/{tap.seq}"))

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
                if t.refused_code is None:  # approvals count in the floor limits and the risk
                    self.standin.decide(TapKey(self.own, t.terminal_id, t.seq), t.card_no, t.amount_fen, code,
                                        self._wall_ms())
            if owed:
                client.start()
                self.adviser.due[code].set()
            self._publish_risk(code)
        self.adviser.start()

    async def stop(self) -> None:
        await cancel_and_wait(self.adviser.tasks + list(self._tasks))
        for client in self.clients.values():
            await client.stop()

    def _on_up(self, code: str, up: bool) -> None:
        self.metrics.link_up.labels(code).set(1 if up else 0)
        if up:
            self.adviser.due[code].set()

    # -- one visitor's tap -------------------------------------------------------------------
    async def decide(self, tap: Tap) -> Outcome:
        """One key at a time: a retry that arrives while its first try is still being decided
        (e.g. the terminal's timer ran out first) gets that try's outcome. Asked again in
        between, the issuer would replay its charge as OK while the first try voids it."""
        k = (tap.terminal_id, tap.seq)
        first = self._deciding.get(k)
        if first is not None:
            return await asyncio.shield(first)
        fut = self._deciding[k] = asyncio.get_running_loop().create_future()
        try:
            out = await self._decide_once(tap)
        except BaseException:
            fut.set_result(_RETRY)  # nothing promised by the first: the waiters' terminals retry
            raise
        else:
            fut.set_result(out)
            return out
        finally:
            del self._deciding[k]

    async def _decide_once(self, tap: Tap) -> Outcome:
        issuer = self._issuers[tap.card_no // 10**11]
        key = TapKey(self.own, tap.terminal_id, tap.seq)
        amount_fen = self._price(tap, issuer.card_prefix)
        t = store.LinkTap(issuer.code, tap.terminal_id, tap.seq, tap.card_no, tap.kind, tap.route, tap.time_ms,
                          amount_fen, tap.bill_class)
        if (tap.terminal_id, tap.seq) in self._writing or self.standin.is_pending(key):
            return await self._stand_in(t, key, NoAnswer.NOT_SENT)  # a retry of a stand-in approval: replay
        if (tap.terminal_id, tap.seq) in self._voiding:  # not asked online while its void is not yet durable
            return _BUSY
        if tap.terminal_id > store.MAX_REMOTE_TERMINAL_ID:  # outside the issuers' key space (store.py)
            log.warning("terminal %s cannot take visitors' cards: ids above %s have no link key", tap.terminal_id,
                        store.MAX_REMOTE_TERMINAL_ID)
            return Outcome(int(Result.ISSUER_NOT_ACCEPTED), 0, -1, False)
        prior = await store.prior(self._pool, tap.terminal_id, tap.seq)
        if prior is not None:  # decided here before: that outcome again, never a second ask
            return _replay(prior)
        client = self.clients[issuer.code]
        started = time.perf_counter()
        answer = await client.decide(ix.RemoteTap(
            acquirer=self.own, terminal_id=tap.terminal_id, seq=tap.seq, card=tap.card_no, time_ms=tap.time_ms,
            kind=tap.kind, amount_fen=amount_fen, route=tap.route, bill_class=tap.bill_class), self.tap_timeout_s)
        if isinstance(answer, NoAnswer):
            return await self._stand_in(t, key, answer)
        if answer.code not in DECIDED:
            return Outcome(answer.code, 0, -1, False)  # the issuer is busy: nothing decided, the terminal retries
        await journal.log_remote_tap(self._pool, t, answer.code, answer.fare_fen, answer.balance_fen,
                                     answer.replay, self._wall_ms())
        self.metrics.remote_latency.observe(time.perf_counter() - started)
        return Outcome(answer.code, answer.fare_fen, answer.balance_fen, answer.replay)

    async def _stand_in(self, t: store.LinkTap, key: TapKey, why: NoAnswer = NoAnswer.NOT_SENT) -> Outcome:
        d = self.standin.decide(key, t.card_no, t.amount_fen, t.issuer, self._wall_ms(), suspended=self.suspended,
                                hotlisted=self._hotlisted)
        if d.code is not StandInCode.APPROVED:
            refusal = int(terminal_result(d.code))
            if why is NoAnswer.UNKNOWN:  # the issuer may have charged what the terminal is refused
                self._voiding.add((t.terminal_id, t.seq))
                try:
                    recorded = await store.record_void(self._pool, t, refusal, self._wall_ms())  # before the answer
                finally:
                    self._voiding.discard((t.terminal_id, t.seq))
                if recorded:
                    self.metrics.voids.labels(t.issuer, "recorded").inc()
                    self.adviser.due[t.issuer].set()
            return Outcome(refusal, 0, -1, False)
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
            self.metrics.standin_taps.labels(t.issuer).inc()
            self._publish_risk(t.issuer)
            self.adviser.due[t.issuer].set()
        return Outcome(int(Result.OK), t.amount_fen, -1, d.replay)

    def _publish_risk(self, code: str) -> None:
        self.metrics.standin_risk.labels(code).set(self.standin.risk(code).pending_fen)


def _replay(p: store.Prior) -> Outcome:
    """A retry's answer from the key's row: the issuer's answer, a stand-in approval (OK, what
    ever the issuer said of it since), or a void: its refusal while the issuer has not resolved
    it, then the code the issuer holds the key at (CARD_BLOCKED if it had to reverse a charge)."""
    if p.table == "remote":
        return Outcome(p.result, p.fare_fen, p.balance_fen, True)
    if p.refused_code is None:
        return Outcome(int(Result.OK), p.fare_fen, -1, True)
    if p.state not in _FINAL_VOID or p.refused_code in DECIDED:
        return Outcome(p.refused_code, 0, -1, p.refused_code in DECIDED)  # BUSY until resolved: retried later
    held = p.result if p.state == "voided" and p.result in DECIDED and p.result != Result.OK else Result.CARD_BLOCKED
    return Outcome(int(held), 0, -1, True)


__all__ = ["LinkMetrics", "RemoteDesk"]
