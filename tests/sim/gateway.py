"""A simulated gateway: the real sans-I/O ServerConnection per terminal connection, and a shell
that mirrors gateway.server.TerminalProtocol and gateway.router.Router (one call per shard
batch, bounded queue answering BUSY, bounded calls in flight, retry with the real backoff until
the deadline, then RETRY). A restart loses every connection and every answer in flight."""

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from citycard.domain.results import Result
from citycard.domain.shard import shard_of
from citycard.domain.taps import Outcome, Tap
from citycard.gateway.router import RETRY_BACKOFF_S, Pending
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key, verify_mac
from citycard.protocols.codes import ErrorCode
from citycard.protocols.connection import (
    AuthReceived,
    HelloReceived,
    ServerConnection,
    TapsReceived,
    Violation,
)

from .model import Model
from .network import Link
from .scenario import MASTER_KEY, Scenario
from .shard import ShardCall, SimShard
from .world import EPOCH_MS, World

if TYPE_CHECKING:
    from .terminal import SimTerminal

AUTH_MS = (1, 10)  # the TerminalSession actor checking a MAC
RESTART_MS = (100, 2_000)
_BUSY = (int(Result.BUSY), 0, -1, False)
_RETRY = (int(Result.RETRY), 0, -1, False)
_BACKOFF_MS = [int(s * 1000) for s in RETRY_BACKOFF_S]


class Conn:
    """One TCP connection; the gateway's end is the product's ServerConnection."""

    def __init__(self, terminal: "SimTerminal", epoch: int) -> None:
        self.terminal = terminal
        self.epoch = epoch
        self.server = ServerConnection()
        self.open = True


class Lane:
    def __init__(self, shard: SimShard) -> None:
        self.shard = shard
        self.queue: list[tuple[Tap, Pending, int]] = []
        self.inflight = 0
        self.scheduled = False


@dataclass
class Call:
    lane: Lane
    batch: list[tuple[Tap, Pending, int]]
    deadline_ms: int
    attempt: int = 0
    current: ShardCall | None = None


class SimGateway:
    def __init__(self, world: World, model: Model, sc: Scenario, shards: list[SimShard],
                 frames: Link, calls: Link) -> None:
        self.world = world
        self.model = model
        self.sc = sc
        self.shards = shards
        self.frames = frames
        self.call_link = calls
        self.up = True
        self.epoch = 0
        self.conns: list[Conn] = []
        self.lanes = [Lane(s) for s in shards]
        self.calls: dict[int, Call] = {}
        self.next_id = 0
        self.restarts = 0
        for t in sc.faults.gateway_restarts:
            world.at(t, self.crash)

    # -- connections ---------------------------------------------------------------------
    def connect(self, terminal: "SimTerminal") -> Conn | None:
        if not self.up:
            return None
        conn = Conn(terminal, self.epoch)
        self.conns.append(conn)
        return conn

    def on_frame(self, conn: Conn, data: bytes) -> None:
        if not conn.open or conn.epoch != self.epoch:
            return
        for event in conn.server.receive_data(data):
            if type(event) is TapsReceived:
                tid = conn.server.terminal_id
                taps = [Tap(tid, t.seq, t.card, t.time_ms, t.kind, t.route, t.amount_fen, False, t.bill_class)
                        for t in event.taps]
                self.submit(Pending(partial(self._reply, conn), event.req, event.single, taps))
            elif type(event) is Violation:
                self._send(conn, event.reply)
                if event.fatal:
                    self.close(conn)
            elif type(event) is HelloReceived:
                self._send(conn, conn.server.challenge(self.world.rng.randbytes(m.NONCE_BYTES),
                                                       EPOCH_MS + self.world.now_ms))
            elif type(event) is AuthReceived:
                self.world.at(self.world.rng.randint(*AUTH_MS), self._authenticated, conn, event)

    def _authenticated(self, conn: Conn, ev: AuthReceived) -> None:
        if not conn.open or conn.epoch != self.epoch:
            return
        key = terminal_key(MASTER_KEY, ev.terminal_id)
        if not verify_mac(key, ev.terminal_id, ev.terminal_nonce, ev.server_nonce, ev.mac):
            self._send(conn, conn.server.reject(ErrorCode.AUTH_FAILED, "bad mac"))
            self.close(conn)
            return
        now = EPOCH_MS + self.world.now_ms
        self._send(conn, conn.server.accept(m.AuthOk(fare_version=1, hotlist_version=0, max_batch=1000,
                                                     heartbeat_ms=30_000, server_time_ms=now)))

    def _reply(self, conn: Conn, pending: Pending) -> None:
        taps, outcomes = pending.taps, pending.outcomes
        for tap, o in zip(taps, outcomes, strict=True):
            assert o is not None
            self.model.check_decided("gateway", tap.terminal_id, tap.seq, o)
        if not conn.open or conn.epoch != self.epoch:
            return  # the terminal left; it retries with the same seqs
        msg: m.Msg
        if pending.single:
            o = outcomes[0]
            assert o is not None
            msg = m.Result(seq=taps[0].seq, code=o[0], fare_fen=o[1], balance_fen=o[2], replay=o[3])
        else:
            msg = m.Results(req=pending.req, results=[m.ResultItem(t.seq, *o)  # type: ignore[misc]
                                                      for t, o in zip(taps, outcomes, strict=True)])
        self._send(conn, conn.server.send(msg))

    def _send(self, conn: Conn, data: bytes) -> None:
        self.next_id += 1
        self.frames.send(conn.terminal.on_frame, conn, data, self.next_id)

    def close(self, conn: Conn) -> None:
        if conn.open:
            conn.open = False
            conn.server.close()
            # TCP tells the terminal (FIN or RST) a little later; that is never lost
            self.world.at(self.world.rng.randint(1, 20), conn.terminal.on_closed, conn)

    def crash(self) -> None:
        w = self.world
        w.log("gateway", "RESTART: connections and answers in flight are lost")
        self.restarts += 1
        self.up = False
        self.epoch += 1
        conns, self.conns = self.conns, []
        for conn in conns:
            self.close(conn)
        self.lanes = [Lane(s) for s in self.shards]
        self.calls = {}
        w.at(w.rng.randint(*RESTART_MS), self._restarted)

    def _restarted(self) -> None:
        self.up = True
        self.world.log("gateway", "up again")

    # -- the router ----------------------------------------------------------------------
    def submit(self, pending: Pending) -> None:
        now, sc = self.world.now_ms, self.sc
        touched: list[Lane] = []
        for i, tap in enumerate(pending.taps):
            if now >= sc.hotlist.get(tap.card_no, now + 1):
                tap = Tap(tap.terminal_id, tap.seq, tap.card_no, tap.time_ms, tap.kind, tap.route,
                          tap.amount_fen, True, tap.bill_class)
            lane = self.lanes[shard_of(tap.card_no, sc.n_shards)]
            if len(lane.queue) >= sc.queue_max_taps:
                pending.settle(i, _BUSY)
                continue
            lane.queue.append((tap, pending, i))
            if lane not in touched:
                touched.append(lane)
        for lane in touched:
            self._schedule(lane)

    def _schedule(self, lane: Lane) -> None:
        sc = self.sc
        if lane.scheduled or lane.inflight >= sc.inflight_calls or not lane.queue:
            return
        lane.scheduled = True
        now = len(lane.queue) >= sc.batch_max_taps or sc.linger_ms <= 0
        self.world.at(0 if now else sc.linger_ms, self._flush, lane, self.epoch)

    def _flush(self, lane: Lane, epoch: int) -> None:
        if epoch != self.epoch:
            return
        lane.scheduled = False
        n = self.sc.batch_max_taps
        while lane.queue and lane.inflight < self.sc.inflight_calls:
            batch, lane.queue = lane.queue[:n], lane.queue[n:]
            lane.inflight += 1
            self.next_id += 1
            call = Call(lane, batch, self.world.now_ms + self.sc.retry_deadline_ms)
            self.calls[self.next_id] = call
            self._attempt(self.next_id, self.epoch)

    def _attempt(self, call_id: int, epoch: int) -> None:
        call = self.calls.get(call_id)
        if call is None or epoch != self.epoch:
            return
        call.current = ShardCall(call_id, self.epoch, [t for t, _, _ in call.batch])
        self.call_link.send(call.lane.shard.on_call, call.current)

    def on_call_reply(self, sc: ShardCall, error: str | None, outcomes: list[Outcome] | None) -> None:
        call = self.calls.get(sc.call_id)
        if sc.gateway_epoch != self.epoch or call is None or call.current is not sc:
            return  # for a gateway that restarted since, or a duplicate
        w = self.world
        if error is None and w.chance(self.sc.faults.p_call_error):
            error = "reply lost"
        if error is not None:
            w.log("gateway", f"call {sc.call_id} failed: {error}")
            if w.now_ms < call.deadline_ms:
                w.at(_BACKOFF_MS[min(call.attempt, len(_BACKOFF_MS) - 1)], self._attempt, sc.call_id, self.epoch)
                call.attempt += 1
                return
            results: list[tuple[int, int, int, bool]] = [_RETRY] * len(call.batch)
        else:
            assert outcomes is not None
            results = [(o.result, o.fare_fen, o.balance_fen, o.replay) for o in outcomes]
        del self.calls[sc.call_id]
        call.lane.inflight -= 1
        for (_, pending, index), outcome in zip(call.batch, results, strict=True):
            pending.settle(index, outcome)
        self._schedule(call.lane)
