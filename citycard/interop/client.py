"""The acquirer's end of the link to one issuer: one connection, opened on first use and
reopened with backoff; ``decide`` sends a tap and waits for the issuer's durable answer (a
``NoAnswer`` when the issuer cannot answer in time: the caller stands in); ``advise`` sends
stand-in advice."""

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain.issuers import Issuer
from ..protocols import interop as ix
from ..protocols.interop_conn import (
    AckIn,
    AcquirerSide,
    AnswerIn,
    Closed,
    ErrorIn,
    LinkState,
    PeerAuthenticated,
)
from ..tasks import cancel_and_wait, log_failure

log = logging.getLogger(__name__)

READ_BYTES = 65536


class NoAnswer(Enum):
    """Why ``decide`` has no answer, which says what the issuer may have done."""

    NOT_SENT = "not_sent"  # the tap never left: the issuer decided nothing
    UNKNOWN = "unknown"  # sent, unanswered (timeout, its error, the connection dropped): it may have charged


class LinkClient:
    def __init__(self, own: str, key: Ed25519PrivateKey, issuer: Issuer, *, connect_timeout_s: float,
                 max_inflight: int, backoff_min_s: float, backoff_max_s: float,
                 on_up: Callable[[str, bool], None] | None = None) -> None:
        self.own = own
        self.issuer = issuer
        self._key = key
        self.connect_timeout_s = connect_timeout_s
        self.max_inflight = max_inflight
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self._on_up = on_up
        self._conn: AcquirerSide | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._down = False  # the last attempt failed: answer None at once until it is back
        self._answers: dict[tuple[int, int], asyncio.Future[ix.RemoteTapAnswer | None]] = {}
        self._acks: dict[int, asyncio.Future[ix.StandInAdviceAck | None]] = {}
        self._req = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.late_answers = 0  # answers that came after their waiter gave up (the advice resolves them)

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        """Open the connection (and keep it open); idempotent."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(log_failure(log, f"link to {self.issuer.code}"))

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            await cancel_and_wait([self._task])
        self._drop("stopped")

    async def wait_up(self, timeout_s: float) -> bool:
        self.start()
        if not self._ready.is_set() and not self._down:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self._ready.is_set()

    async def decide(self, tap: ix.RemoteTap, timeout_s: float) -> ix.RemoteTapAnswer | NoAnswer:
        """The issuer's answer, or why there is none: NOT_SENT (unreachable, too many in flight:
        nothing decided there), UNKNOWN (sent, then no answer in ``timeout_s``, the issuer's
        error for this key, or the connection dropped: the issuer may have decided it; the
        caller's stand-in or void advice resolves it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if not await self.wait_up(timeout_s):
            return NoAnswer.NOT_SENT
        key = (tap.terminal_id, tap.seq)
        fut = self._answers.get(key)
        if fut is None:  # a retry of a key in flight waits for the same answer
            if len(self._answers) >= self.max_inflight:
                return NoAnswer.NOT_SENT
            if not self._send(tap):
                return NoAnswer.NOT_SENT
            fut = self._answers[key] = loop.create_future()
        try:
            answer = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
            return NoAnswer.UNKNOWN if answer is None else answer
        except TimeoutError:
            return NoAnswer.UNKNOWN
        finally:
            # Done, or no answer in time (the issuer may never send one, e.g. after its error):
            # free the slot, so a retry sends the key again; a late answer is then only counted
            # (the caller heard UNKNOWN: its stand-in approval or void advice resolves the key).
            if self._answers.get(key) is fut:
                del self._answers[key]
                if not fut.done():
                    fut.set_result(None)  # other waiters on this key: no answer either

    async def advise(self, items: list[ix.AdviceItem], timeout_s: float) -> ix.StandInAdviceAck | None:
        if not self._ready.is_set():
            return None
        self._req = (self._req + 1) & 0xFFFFFFFF
        req = self._req
        fut: asyncio.Future[ix.StandInAdviceAck | None] = asyncio.get_running_loop().create_future()
        self._acks[req] = fut
        try:
            if not self._send(ix.StandInAdvice(acquirer=self.own, req=req, items=items)):
                return None
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._acks.pop(req, None)

    def _send(self, msg: Any) -> bool:
        """False when there is no ready connection: nothing was sent."""
        conn, writer = self._conn, self._writer
        if conn is None or writer is None or conn.state is not LinkState.READY or writer.is_closing():
            return False
        writer.write(conn.send(msg))
        return True

    # -- the connection ----------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = self.backoff_min_s
        while not self._closing:
            try:
                await self._session()
                backoff = self.backoff_min_s  # it was up: start again from the shortest wait
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.info("link to %s: %r", self.issuer.code, exc)
            except Exception:  # noqa: BLE001 - a bug must not end the reconnect loop
                log.exception("link to %s failed", self.issuer.code)
            self._drop("connection lost")
            self._down = True
            await asyncio.sleep(backoff)
            backoff = min(self.backoff_max_s, backoff * 2)

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.issuer.link_host, self.issuer.link_port), self.connect_timeout_s)
        self._writer = writer
        conn = self._conn = AcquirerSide(self.own, self._key, self.issuer.code, self.issuer.link_public_key,
                                         os.urandom(16))
        writer.write(conn.hello())
        heartbeat_s = 15.0
        pinged = False  # a ping is out and nothing came since
        try:
            while True:
                timeout = self.connect_timeout_s if conn.state is not LinkState.READY else heartbeat_s
                try:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), timeout)
                except TimeoutError:
                    if conn.state is not LinkState.READY or pinged:
                        raise  # no handshake in time, or a silent peer: drop it and reconnect
                    writer.write(conn.send(ix.Ping(time_ms=0)))  # idle: prove the link is alive
                    pinged = True
                    continue
                if not data:
                    return
                pinged = False
                step = conn.receive_data(data)
                if step.out:
                    writer.write(step.out)
                for ev in step.events:
                    if isinstance(ev, AnswerIn):
                        fut = self._answers.pop((ev.answer.terminal_id, ev.answer.seq), None)
                        if fut is not None and not fut.done():
                            fut.set_result(ev.answer)
                        else:  # its waiter gave up: UNKNOWN to it, resolved by advice (docs 5.5)
                            self.late_answers += 1
                    elif isinstance(ev, AckIn):
                        ack_fut = self._acks.get(ev.ack.req)
                        if ack_fut is not None and not ack_fut.done():
                            ack_fut.set_result(ev.ack)
                    elif isinstance(ev, PeerAuthenticated):
                        heartbeat_s = ev.heartbeat_ms / 1000.0
                        self._down = False
                        self._ready.set()
                        if self._on_up is not None:
                            self._on_up(self.issuer.code, True)
                    elif isinstance(ev, ErrorIn):
                        log.warning("link to %s: error %s %s", self.issuer.code, ev.code, ev.message)
                        failed = self._answers.pop((ev.terminal_id, ev.seq), None) if ev.seq else None
                        if failed is not None and not failed.done():
                            failed.set_result(None)  # that tap has no answer coming: UNKNOWN now
                    elif isinstance(ev, Closed):
                        log.warning("link to %s closed: %s", self.issuer.code, ev.reason)
                if step.close:
                    return
        finally:
            writer.close()

    def _drop(self, why: str) -> None:
        was_up = self._ready.is_set()
        self._ready.clear()
        self._conn, self._writer = None, None
        for fut in list(self._answers.values()) + list(self._acks.values()):
            if not fut.done():
                fut.set_result(None)
        self._answers.clear()
        if was_up and self._on_up is not None:
            self._on_up(self.issuer.code, False)
            log.warning("link to %s down: %s", self.issuer.code, why)


__all__ = ["LinkClient"]
