"""The gateway: one asyncio Protocol per terminal connection, over the sans-I/O connection."""

import asyncio
import logging
import time
from typing import Any, cast

from ..domain.hotlist import Delta
from ..domain.shard import session_shard_of
from ..domain.taps import Tap
from ..protocols import messages as m
from ..protocols.codes import ErrorCode
from ..protocols.connection import (
    AuthReceived,
    HelloReceived,
    OfflineReceived,
    ParamsRequested,
    PingReceived,
    ServerConnection,
    State,
    TapsReceived,
    Violation,
)
from .context import GatewayContext
from .router import Pending

log = logging.getLogger(__name__)

_encode = m.encoder.encode
LINGER_S = 1.0  # after a fatal error: how long to drain what the terminal still sends
# After a fatal error: how long answers still owed to earlier requests may take before the
# error frame goes out anyway (a shard call gives up after gateway.retry_deadline_ms, 20 s).
OWED_MAX_S = 30.0


class TerminalProtocol(asyncio.Protocol):
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.conn = ServerConnection(ctx.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._authenticated = False
        self._params_pending = False  # one hotlist query per connection at a time
        self._linger: asyncio.TimerHandle | None = None  # the drain after our FIN
        self._owed_timer: asyncio.TimerHandle | None = None  # the final error's OWED_MAX_S
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_frame = 0.0
        self._owed = 0  # requests taken whose answer is not written yet
        self._final_error: bytes | None = None  # a fatal error frame waiting for those answers
        self._eof = False
        self._held: list[Any] | None = None  # events not taken while the router is pressed
        self._held_since_s = 0.0  # perf_counter when they were first held
        self._reading_paused = False
        self._loop = asyncio.get_running_loop()  # its time() is the clock (monotonic; fake in the simulation)

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self.ctx.connections.add(self)
        self.ctx.metrics.connections.inc()
        self._auth_timer = self._loop.call_later(self.ctx.auth_timeout_s, self._auth_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        self.ctx.unpause(self)
        self._held = None  # never answered: the terminal sends them again with the same seqs
        self.ctx.metrics.connections.dec()
        if self._authenticated:
            self.ctx.metrics.terminals.dec()
        for timer in (self._auth_timer, self._linger, self._owed_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self.conn.close()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._events(self.conn.receive_data(data))
        except Exception as exc:  # noqa: BLE001 - a bug must not escape the transport's callback
            self._dropped(exc)

    def _dropped(self, exc: Exception) -> None:
        log.error("terminal %s: connection dropped: %r", self.conn.terminal_id, exc)
        self.conn.close()
        self._close()

    def _events(self, events: list[Any], held_since_s: float | None = None) -> None:
        """Each event in arrival order; a fatal error among them is written after the answers
        to the requests before it (section 5). While a shard queue is past its mark, taps and
        what follows them are held here and the socket is not read (backpressure): they wait
        for the queue, not get BUSY. ``held_since_s``: when held events were first held."""
        if events:
            self._last_frame = self._loop.time()  # a whole frame, not a byte, counts as activity
        router = self.ctx.router
        for i, event in enumerate(events):
            if isinstance(event, TapsReceived):  # the hot case first
                if router.pressed and self._authenticated and not self._gone():
                    self._hold(events[i:], held_since_s)
                    return
                self._on_taps(event, held_since_s)
            elif isinstance(event, Violation):
                self._on_violation(event)
            elif isinstance(event, HelloReceived):
                self._write(self.conn.challenge(self.ctx.nonce(m.NONCE_BYTES), self.ctx.wall_ms()))
            elif isinstance(event, AuthReceived):
                self._owed += 1
                self.ctx.spawn(self._authenticate(event))
            elif isinstance(event, PingReceived):
                self._write(self.conn.send(m.Pong(time_ms=event.time_ms, server_time_ms=self.ctx.wall_ms())))
            elif isinstance(event, ParamsRequested):
                self._on_params(event)
            elif isinstance(event, OfflineReceived):
                self._owed += 1
                self.ctx.spawn(self._offline(event))

    def _hold(self, events: list[Any], since_s: float | None) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]  # _gone: not None
        self._held = events
        # the tap latency metric counts the hold (not the wait in the kernel's buffers, unseen here)
        self._held_since_s = time.perf_counter() if since_s is None else since_s
        self.ctx.pause(self)

    def resume(self) -> None:
        """The shard queues drained: the held events, then read again unless they pressed
        the router once more. The silence was ours, so it is no idleness."""
        held, self._held = self._held, None
        if held is None or self._gone():
            return
        try:
            self._events(held, self._held_since_s)
        except Exception as exc:  # noqa: BLE001 - as in data_received
            self._dropped(exc)
            return
        if self._held is None and self._reading_paused and not self._gone():
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]  # _gone: not None

    # -- events --------------------------------------------------------------------------
    def _on_taps(self, event: TapsReceived, started_s: float | None = None) -> None:
        terminal_id = self.conn.terminal_id
        admit = self.ctx.admit(terminal_id, len(event.taps), self._loop.time())
        taps = [
            Tap(terminal_id, t.seq, t.card, t.time_ms, t.kind, t.route, t.amount_fen, False, t.bill_class)
            for t in event.taps
        ]
        seqs = self.ctx.router.seqs
        refused = seqs.claim(terminal_id, taps) if seqs is not None else ()
        self._owed += 1
        self.ctx.router.submit(Pending(self._reply, event.req, event.single, taps, started_s), admit, refused)

    def _reply(self, pending: Pending) -> None:
        ctx = self.ctx
        latency_s = time.perf_counter() - pending.started_s
        outcomes = pending.outcomes
        taps = pending.taps
        counts: dict[tuple[int, int], int] = {}
        for tap, o in zip(taps, outcomes, strict=True):
            assert o is not None  # a Pending replies once all its taps are settled
            key = (tap.kind, o.result)
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            ctx.tap_counter(key).inc(n)
        ctx.metrics.tap_latency.observe(latency_s, len(taps))
        ctx.reporter.record(taps, outcomes)
        if self._gone():
            self._answered()
            return  # the terminal left; it will retry with the same seqs and get these outcomes
        if pending.single:
            o = outcomes[0]
            assert o is not None
            msg: m.Msg = m.Result(seq=taps[0].seq, code=o.result, fare_fen=o.fare_fen, balance_fen=o.balance_fen,
                                  replay=o.replay)
        else:
            msg = m.Results(
                req=pending.req,
                results=[
                    m.ResultItem(t.seq, o.result, o.fare_fen, o.balance_fen, o.replay)
                    for t, o in zip(taps, outcomes, strict=True) if o is not None
                ],
            )
        self._write(self.conn.send(msg))
        self._answered()

    def _on_params(self, event: ParamsRequested) -> None:
        table = self.ctx.fare_table_text() if event.fares and self.ctx.fare_table_text is not None else ""
        if table and event.fare_version != self.ctx.fare_version():
            self._send_params(None, table)  # the table alone: the hotlist comes when asked again
            return
        if self.ctx.hotlist_delta is None or self._params_pending:
            self._send_params(None)  # versions only: the terminal keeps its list and asks later
            return
        self._params_pending = True
        self._owed += 1
        self.ctx.spawn(self._params(event.hotlist_version))

    async def _params(self, from_version: int) -> None:
        assert self.ctx.hotlist_delta is not None
        try:
            answer: Delta | None = await self.ctx.hotlist_delta(from_version)
        except Exception as exc:  # noqa: BLE001 - Postgres slow or away: versions only, ask later
            log.warning("hotlist delta from version %s failed: %r", from_version, exc)
            answer = None
        finally:
            self._params_pending = False
        try:
            self._send_params(answer)
        finally:
            self._answered()

    def _send_params(self, d: Delta | None, fare_table: str = "") -> None:
        if self._gone():
            return  # the terminal left
        ctx = self.ctx
        msg = m.Params(fare_version=ctx.fare_version(), hotlist_version=ctx.hotlist_version(), fare_table=fare_table)
        if d is not None:
            msg.hotlist_to, msg.hotlist_reset, msg.hotlist_more = d.to_version, d.reset, d.more
            msg.hotlist_added, msg.hotlist_removed = d.added, d.removed
        self._write(self.conn.send(msg))

    async def _offline(self, event: OfflineReceived) -> None:
        """An offline upload: its ack once durable, or an error naming it (section 15)."""
        try:
            await self._offline_answer(event)
        finally:
            self._answered()

    async def _offline_answer(self, event: OfflineReceived) -> None:
        desk = self.ctx.offline
        if desk is None:
            answer: Any = None
        else:
            try:
                answer = await desk.upload(event.terminal_id, event.batch_seq, event.records, event.mac)
            except Exception as exc:  # noqa: BLE001 - not processed: the terminal resends
                log.warning("offline upload of terminal %s failed: %r", event.terminal_id, exc)
                answer = None
        if self._gone():
            return  # the terminal left; it resends the same batch and gets the same codes
        if isinstance(answer, list):
            msg: m.Msg = m.OfflineAck(req=event.req, batch_seq=event.batch_seq, codes=answer)
        elif answer is None:
            msg = m.Error(code=int(ErrorCode.INTERNAL), message="offline uploads not served here", req=event.req)
        else:
            self.ctx.metrics.protocol_errors.labels(answer.code.name).inc()
            msg = m.Error(code=int(answer.code), message=answer.message, req=event.req)
        self._write(self.conn.send(msg))

    def _on_violation(self, v: Violation) -> None:
        self.ctx.metrics.protocol_errors.labels(v.code.name).inc()
        if not v.fatal:
            self._write(v.reply)
        elif self._owed:
            self._final_error = v.reply  # after the answers owed (_answered), or OWED_MAX_S
            # its own field: a close by another path sets _linger (the drain), and
            # this timer must still be cancelled when the connection goes
            self._owed_timer = self._loop.call_later(OWED_MAX_S, self._send_final_error)
        else:
            self._write(v.reply)
            self._close_after_error()

    def _answered(self) -> None:
        self._owed -= 1
        if self._owed <= 0 and self._final_error is not None:
            self._send_final_error()

    def _send_final_error(self) -> None:
        reply, self._final_error = self._final_error, None
        if reply is None:
            return
        if self._owed_timer is not None:
            self._owed_timer.cancel()
            self._owed_timer = None
        self._write(reply)
        self._close_after_error()

    def _gone(self) -> bool:
        """Nothing more can be written: the terminal left, or we closed (EOF sent)."""
        return self.transport is None or self.transport.is_closing() or self._eof

    async def _authenticate(self, event: AuthReceived) -> None:
        try:
            await self._check_auth(event)
        finally:
            self._answered()

    async def _check_auth(self, event: AuthReceived) -> None:
        ctx = self.ctx
        actor = ctx.sessions[session_shard_of(event.terminal_id, len(ctx.sessions))]
        try:
            code, message, _last_seq = await actor.authenticate.remote(
                event.terminal_id, event.terminal_nonce, event.server_nonce, event.mac
            )
        except Exception as exc:  # noqa: BLE001 - session shard unavailable
            log.warning("authentication of terminal %s failed: %r", event.terminal_id, exc)
            code, message = int(ErrorCode.INTERNAL), "authentication service unavailable, try again"
        if self._gone():
            return
        if code:
            ctx.metrics.protocol_errors.labels(ErrorCode(code).name).inc()
            if self.conn.closed:  # closed since by a fatal error of the terminal's: that frame follows
                self._write(self.conn.send(m.Error(code=code, message=message)))
                return
            self._write(self.conn.reject(ErrorCode(code), message))
            self._final_error = None  # this error closes it
            self._close_after_error()
            return
        closed = self.conn.closed
        self._write(self.conn.accept(m.AuthOk(
            fare_version=ctx.fare_version(), hotlist_version=ctx.hotlist_version(),
            max_batch=ctx.max_batch_taps, heartbeat_ms=ctx.heartbeat_ms, server_time_ms=ctx.wall_ms(),
        )))
        if closed:
            return  # answered; the terminal's fatal error that followed the auth comes next
        self._authenticated = True
        ctx.metrics.terminals.inc()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if ctx.idle_timeout_s > 0:
            self._last_frame = self._loop.time()
            self._idle_timer = self._loop.call_later(ctx.idle_timeout_s, self._idle_check)

    def _auth_timeout(self) -> None:
        if self.conn.state is not State.READY and self.transport is not None and not self.conn.closed:
            self._write(self.conn.reject(ErrorCode.AUTH_TIMEOUT, "authentication not completed in time"))
            self._close_after_error()

    def _idle_check(self) -> None:
        """Close a READY connection that delivered no whole frame for idle_timeout (protocol 11)."""
        if self.transport is None or self.conn.closed:
            return
        idle = self._loop.time() - self._last_frame
        if self._held is not None:
            idle = 0.0  # not read because of us (backpressure): no idleness of the terminal's
        if idle >= self.ctx.idle_timeout_s:
            self.conn.close()
            self._close_after_error()
        else:
            self._idle_timer = self._loop.call_later(self.ctx.idle_timeout_s - idle, self._idle_check)

    # -- output --------------------------------------------------------------------------
    def refuse(self, code: ErrorCode, message: str) -> None:
        """Send a fatal error and close (the terminal was disabled)."""
        self._write(self.conn.reject(code, message))
        self._close_after_error()

    def _write(self, data: bytes) -> None:
        if not self._gone():
            self.transport.write(data)  # type: ignore[union-attr]  # _gone: not None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _close_after_error(self) -> None:
        """FIN after the error frame, then drain (the CLOSED connection drops input) until the
        terminal closes or LINGER_S: closing with its bytes unread would make the kernel reset
        the connection and the terminal lose the error frame."""
        t = self.transport
        if t is None or t.is_closing() or self._eof:
            return
        self._eof = True
        try:
            t.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            t.close()
            return
        if self._reading_paused:  # held by backpressure: drain now, or unread bytes reset it
            self._held, self._reading_paused = None, False
            self.ctx.unpause(self)
            t.resume_reading()
        self._linger = self._loop.call_later(LINGER_S, t.close)
