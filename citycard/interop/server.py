"""The issuer's end of the link: listens, authenticates acquirers from the registry, and
decides their taps and advice through the router, the path local taps take to the account
shards (journaled, deduplicated, durable before the answer)."""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain.issuers import IssuerRegistry
from ..domain.ops import Credit
from ..domain.purses import Purse
from ..domain.results import Result
from ..domain.taps import Outcome, Tap, TapKind
from ..protocols import interop as ix
from ..protocols.interop_conn import AdviceIn, Closed, IssuerSide, PeerAuthenticated, TapIn
from ..tasks import cancel_and_wait, log_failure
from . import store

log = logging.getLogger(__name__)

READ_BYTES = 65536
MAX_INFLIGHT_PER_PEER = 10_000  # taps and advice messages being decided per connection; more: BUSY
# A remote tap is an amount the acquirer priced; the issuer debits that amount. On the
# shards it is an amount tap (the taxi rule: pay tap.amount_fen from the transport purses),
# under the acquirer's reserved terminal id. The original kind stays in the acquirer's log.
REMOTE_KIND = int(TapKind.TAXI)
_UNDECIDED = frozenset((int(Result.BUSY), int(Result.RETRY), int(Result.SEQ_TOO_OLD)))  # outcome unknown

Decide = Callable[[Sequence[Tap]], Awaitable[list[Outcome]]]
# Credit back a charge the acquirer voided: (idempotency key, card, fen) -> done? Once per key.
Reverse = Callable[[str, int, int], Awaitable[bool]]


def reversal_key(acquirer: str, terminal_id: int, seq: int) -> str:
    return f"linkrev:{acquirer}:{terminal_id}:{seq}"


def router_decide(router: Any) -> Decide:
    """Decide taps through the gateway's router (batched per shard, as terminals' taps are);
    the function's ``reverse`` credits a voided charge back through the router's shards."""
    from ..gateway.router import Pending

    async def decide(taps: Sequence[Tap]) -> list[Outcome]:
        fut: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()

        def reply(p: Any) -> None:
            if not fut.done():
                fut.set_result(list(p.outcomes))

        router.submit(Pending(reply, 0, len(taps) == 1, list(taps)))
        return await fut

    async def reverse(key: str, card_no: int, amount_fen: int) -> bool:
        # To the e-purse, the remote (taxi) debit's main purse; journaled once per key. A credit,
        # not a top-up: a card reported lost since the charge still gets its money back.
        out = await router.client.apply_op(Credit(key, card_no, int(Purse.EPURSE), amount_fen))
        return bool(out.result == Result.OK)

    decide.reverse = reverse  # type: ignore[attr-defined]
    return decide


def _wall_ms() -> int:
    return int(time.time() * 1000)


class LinkServer:
    def __init__(self, registry: IssuerRegistry, key: Ed25519PrivateKey, pool: Any, decide: Decide, *,
                 host: str, port: int, heartbeat_ms: int = 15_000, wall_ms: Callable[[], int] = _wall_ms,
                 reverse: Reverse | None = None) -> None:
        self.registry = registry
        self._key = key
        self._pool = pool
        self._decide = decide
        # None: a void the issuer had charged stays undecided (the acquirer retries, then expires it)
        self._reverse: Reverse | None = reverse if reverse is not None else getattr(decide, "reverse", None)
        self.host, self.port = host, port
        self.heartbeat_ms = heartbeat_ms
        self._wall_ms = wall_ms
        self._peers = {i.code: i.link_public_key for i in registry.others()}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._slots: dict[str, int] = {}

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None
        await cancel_and_wait(list(self._tasks))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure(log, "link: a tap or advice"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        own = self.registry.own
        conn = IssuerSide(own.code, self._key, self._peers, os.urandom(16), self.registry.is_own,
                          heartbeat_ms=self.heartbeat_ms)
        inflight = [0]
        try:
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    break
                step = conn.receive_data(data, self._wall_ms())
                if step.out:
                    writer.write(step.out)
                for ev in step.events:
                    if isinstance(ev, TapIn | AdviceIn) and inflight[0] >= MAX_INFLIGHT_PER_PEER:
                        self._refuse(conn, writer, ev)
                    elif isinstance(ev, TapIn):
                        inflight[0] += 1
                        self._spawn(self._counted(inflight, self._tap(conn, writer, ev.tap)))
                    elif isinstance(ev, AdviceIn):
                        inflight[0] += 1
                        self._spawn(self._counted(inflight, self._advice(conn, writer, ev.advice)))
                    elif isinstance(ev, PeerAuthenticated):
                        log.info("link: %s authenticated", ev.city)
                    elif isinstance(ev, Closed):
                        log.warning("link: closing %s: %s", conn.peer, ev.reason)
                if step.close:
                    await writer.drain()
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _counted(inflight: list[int], coro: Awaitable[None]) -> None:
        try:
            await coro
        finally:
            inflight[0] -= 1

    def _refuse(self, conn: IssuerSide, writer: asyncio.StreamWriter, ev: TapIn | AdviceIn) -> None:
        """Too much in flight from this peer: nothing decided, the acquirer retries."""
        if isinstance(ev, TapIn):
            t = ev.tap
            self._write(writer, conn.answer(ix.RemoteTapAnswer(acquirer=t.acquirer, terminal_id=t.terminal_id,
                                                               seq=t.seq, code=int(Result.BUSY), fare_fen=0,
                                                               balance_fen=-1)))
        else:
            self._write(writer, conn.ack(self._undecided(ev.advice, Result.BUSY)))

    async def _slot(self, acquirer: str) -> int:
        slot = self._slots.get(acquirer)
        if slot is None:
            slot = self._slots[acquirer] = await store.acquirer_slot(self._pool, acquirer, self._wall_ms())
        return slot

    def _shard_tap(self, slot: int, terminal_id: int, seq: int, card: int, time_ms: int, amount_fen: int,
                   route: int, bill_class: int = 0, *, void: bool = False) -> Tap:
        # void: the hotlist flag, refused without fare rules unless the key was decided before
        return Tap(store.remote_terminal_id(slot, terminal_id), seq, card, time_ms, REMOTE_KIND, route, amount_fen,
                   void, bill_class)

    async def _tap(self, conn: IssuerSide, writer: asyncio.StreamWriter, t: ix.RemoteTap) -> None:
        try:
            if t.terminal_id > store.MAX_REMOTE_TERMINAL_ID:
                o = Outcome(int(Result.BAD_TAP), 0, -1, False)
            else:
                slot = await self._slot(t.acquirer)
                [o] = await self._decide([self._shard_tap(slot, t.terminal_id, t.seq, t.card, t.time_ms,
                                                          t.amount_fen, t.route, t.bill_class)])
        except Exception as exc:  # noqa: BLE001 - nothing decided: the acquirer retries the key
            log.warning("link: tap %s/%s/%s failed: %r", t.acquirer, t.terminal_id, t.seq, exc)
            self._write(writer, conn.internal_error(f"tap {t.terminal_id}/{t.seq} not decided", t.terminal_id, t.seq))
            return
        balance = max(-(2**31), min(2**31 - 1, o.balance_fen))
        self._write(writer, conn.answer(ix.RemoteTapAnswer(
            acquirer=t.acquirer, terminal_id=t.terminal_id, seq=t.seq, code=o.result, fare_fen=o.fare_fen,
            balance_fen=balance, replay=o.replay)))

    async def _advice(self, conn: IssuerSide, writer: asyncio.StreamWriter, a: ix.StandInAdvice) -> None:
        """Each item is decided as the tap it stood in for (same key: a tap the issuer had in
        fact decided answers with that decision, replay). OK: accepted, the card is debited;
        anything else decided: declined with that code. A void is decided as a refused tap
        (the hotlist flag: never charged), so the key is held refused for good: VOIDED with the
        code it is held at, or, when the key had been charged, the charge is credited back:
        REVERSED. Undecided (BUSY/RETRY/SEQ_TOO_OLD, a failed credit): UNDECIDED, the acquirer
        sends that item again later; the others are acked now."""
        try:
            slot = await self._slot(a.acquirer)
            bad = [i for i in a.items if i.terminal_id > store.MAX_REMOTE_TERMINAL_ID]
            items = [i for i in a.items if i.terminal_id <= store.MAX_REMOTE_TERMINAL_ID]
            outcomes = await self._decide([self._shard_tap(slot, i.terminal_id, i.seq, i.card, i.time_ms,
                                                           i.amount_fen, i.route, void=i.void)
                                           for i in items]) if items else []
            acks = [await self._ack_item(a.acquirer, i, o) for i, o in zip(items, outcomes, strict=True)]
        except Exception as exc:  # noqa: BLE001 - nothing acked as decided: every item is sent again
            log.warning("link: advice %s/%s failed: %r", a.acquirer, a.req, exc)
            self._write(writer, conn.ack(self._undecided(a, Result.RETRY)))
            return
        acks += [ix.AdviceAckItem(terminal_id=i.terminal_id, seq=i.seq, decision=int(ix.AdviceDecision.DECLINED),
                                  code=int(Result.BAD_TAP)) for i in bad]
        order = {(i.terminal_id, i.seq): n for n, i in enumerate(a.items)}
        acks.sort(key=lambda x: order[(x.terminal_id, x.seq)])
        self._write(writer, conn.ack(ix.StandInAdviceAck(acquirer=a.acquirer, req=a.req, items=acks)))

    @staticmethod
    def _undecided(a: ix.StandInAdvice, code: Result) -> ix.StandInAdviceAck:
        """The ack of an advice not decided now (too much in flight, the issuer failed): its
        waiter hears at once, and the acquirer sends each item again later."""
        return ix.StandInAdviceAck(acquirer=a.acquirer, req=a.req, items=[
            ix.AdviceAckItem(terminal_id=i.terminal_id, seq=i.seq, decision=int(ix.AdviceDecision.UNDECIDED),
                             code=int(code)) for i in a.items])

    async def _ack_item(self, acquirer: str, i: ix.AdviceItem, o: Outcome) -> ix.AdviceAckItem:
        d = ix.AdviceDecision
        if o.result in _UNDECIDED:
            decision = d.UNDECIDED
        elif not i.void:
            decision = d.ACCEPTED if o.result == Result.OK else d.DECLINED
        elif o.result != Result.OK or o.fare_fen == 0:
            decision = d.VOIDED  # never charged, and now never will be
        elif self._reverse is not None and await self._reverse(reversal_key(acquirer, i.terminal_id, i.seq),
                                                               i.card, o.fare_fen):
            decision = d.REVERSED
        else:
            decision = d.UNDECIDED  # charged, not credited back yet
        return ix.AdviceAckItem(terminal_id=i.terminal_id, seq=i.seq, decision=int(decision), code=o.result,
                                replay=o.replay)

    @staticmethod
    def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        if data and not writer.is_closing():
            writer.write(data)


__all__ = ["REMOTE_KIND", "LinkServer", "Reverse", "reversal_key", "router_decide"]
