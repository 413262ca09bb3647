"""A simulated terminal, as docs/protocol.md asks: strictly increasing seqs, every tap kept until
its final answer, unanswered taps resent unchanged with the same seq (after a timeout, a BUSY or
RETRY, or on a new connection), reconnect with backoff; and now and then a deliberate resend of
a tap that already has its final answer."""

from typing import TYPE_CHECKING

from citycard.domain.results import Result
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.client import (
    Authenticated,
    BatchAnswered,
    Challenged,
    ClientConnection,
    ClientState,
    ErrorReceived,
    Event,
    ParamsReceived,
    PongReceived,
    TapAnswered,
    Violation,
)

from .model import Model
from .network import Link
from .scenario import MASTER_KEY, PlannedTap, Scenario
from .world import EPOCH_MS, World

if TYPE_CHECKING:
    from .gateway import Conn, SimGateway

_NOT_FINAL = frozenset((int(Result.BUSY), int(Result.RETRY)))
RECONNECT_MS = (50, 1_000)
RETRY_LATER_MS = (100, 1_000)
CHATTER_MS = (200, 5_000)  # a ping or a parameter request now and then while READY


class SimTerminal:
    def __init__(self, world: World, model: Model, sc: Scenario, terminal_id: int, plan: list[PlannedTap],
                 gateway: "SimGateway", frames: Link) -> None:
        self.world = world
        self.model = model
        self.sc = sc
        self.terminal_id = terminal_id
        self.key = terminal_key(MASTER_KEY, terminal_id)
        self.gateway = gateway
        self.frames = frames
        self.name = f"term{terminal_id}"
        self.plan = plan
        self.made = 0  # planned taps made so far
        self.taps: dict[int, m.TapItem] = {}  # seq -> the tap, kept for its whole life
        self.unanswered: dict[int, int] = {}  # seq -> fake time last sent (0: not sent on this connection)
        self.final: dict[int, tuple[int, int, int, bool]] = {}
        self.conn: Conn | None = None
        self.client: ClientConnection | None = None  # the protocol's state on self.conn
        self.timer_armed = False
        self.reconnecting = False
        self.strikes = 0  # answer timeouts in a row with no answer at all: reconnect at 2
        self.next_req = 0
        self.pings: set[int] = set()  # time_ms of pings sent: a pong must echo one
        self.pongs = self.params = 0
        for tap in plan:
            world.at(tap.at_ms, self._new_tap, tap)
        world.at(world.rng.randint(0, 50), self._connect)

    @property
    def ready(self) -> bool:
        return self.client is not None and self.client.state is ClientState.READY

    @property
    def done(self) -> bool:
        return self.made == len(self.plan) and not self.unanswered

    # -- taps ----------------------------------------------------------------------------
    def _new_tap(self, p: PlannedTap) -> None:
        seq = len(self.taps) + 1  # advanced before the tap is stored or sent
        item = m.TapItem(seq=seq, card=p.card_no, time_ms=p.time_ms, kind=p.kind, route=p.route,
                         amount_fen=p.amount_fen)
        self.taps[seq] = item
        self.model.taps[(self.terminal_id << 32) | seq] = p.card_no
        self.made += 1
        self.unanswered[seq] = 0
        self.world.log(self.name, f"tap seq {seq} card {p.card_no} kind {p.kind} route {p.route} amount {p.amount_fen}")
        if self.ready:
            self._send_taps([seq])
        self._arm_timer()

    def _send_taps(self, seqs: list[int]) -> None:
        client = self.client
        if self.conn is None or client is None or not self.ready or not seqs:
            return
        now = self.world.now_ms
        for seq in seqs:
            if seq in self.unanswered:
                self.unanswered[seq] = now
        if len(seqs) > 1 and self.world.rng.random() < self.sc.p_batch:
            self.next_req += 1  # distinct for the terminal's whole life: a stray answer names no live batch
            self._write(client.taps([self.taps[s] for s in seqs], req=self.next_req)[1])
            return
        for seq in seqs:
            self._write(client.tap(self.taps[seq]))

    def _write(self, data: bytes) -> None:
        if self.conn is not None:
            self.frames.send(self.gateway.on_frame, self.conn, data)

    def _arm_timer(self) -> None:
        if not self.timer_armed and self.unanswered:
            self.timer_armed = True
            self.world.at(self.sc.answer_timeout_ms, self._timeout)

    def _timeout(self) -> None:
        self.timer_armed = False
        if not self.unanswered:
            return
        w = self.world
        self.strikes += 1
        if self.conn is not None and (not self.ready or self.strikes >= 2
                                      or w.rng.random() < self.sc.p_reconnect_on_timeout):
            w.log(self.name, "answer timeout: reconnect")
            self._drop_connection()
        elif self.ready:
            late = [s for s, t in self.unanswered.items() if w.now_ms - t >= self.sc.answer_timeout_ms]
            w.log(self.name, f"answer timeout: resend seqs {late}")
            self._send_taps(late)
        self._arm_timer()

    # -- answers -------------------------------------------------------------------------
    def on_frame(self, conn: "Conn", data: bytes, answer_id: int) -> None:
        if conn is not self.conn or self.client is None:
            return  # an old connection: the bytes never reach this one
        self.strikes = 0
        for event in self.client.receive_data(data):
            self._on_event(event, answer_id)

    def _on_event(self, event: Event, answer_id: int) -> None:
        if isinstance(event, TapAnswered):
            self._result(event.result, answer_id)
        elif isinstance(event, BatchAnswered):
            for r in event.results.results:
                self._result(r, answer_id)
        elif isinstance(event, Challenged):
            assert self.client is not None
            self._write(self.client.auth())
        elif isinstance(event, Authenticated):
            self.world.log(self.name, "ready")
            self._send_taps(sorted(self.unanswered))
            self._chatter_later()
        elif isinstance(event, PongReceived):
            self._pong(event.pong)
        elif isinstance(event, ParamsReceived):
            self.params += 1
        elif isinstance(event, ErrorReceived):
            self.world.log(self.name, f"error {event.error.code}: {event.error.message}"
                           + (" (fatal)" if event.fatal else ""))
        else:
            self._stray(event, answer_id)

    def _stray(self, v: Violation, answer_id: int) -> None:
        """The frame network duplicates frames (TCP would not): an answer again, after the one
        the client connection matched, is still checked; anything else breaks the protocol."""
        msg = v.msg
        if not v.fatal and isinstance(msg, m.Result):
            self._result(msg, answer_id)
        elif not v.fatal and isinstance(msg, m.Results):
            for r in msg.results:
                self._result(r, answer_id)
        elif not v.fatal and isinstance(msg, m.Pong):
            self._pong(msg)
        elif not v.fatal and isinstance(msg, m.Params):
            self.params += 1
        elif not v.fatal and isinstance(msg, (m.Challenge, m.AuthOk)):
            self.world.log(self.name, f"ignored: {v.message}")
        else:
            self.world.fail("gateway-speaks-the-protocol", f"{self.name}: {v.message}")

    def _result(self, r: m.Result | m.ResultItem, answer_id: int) -> None:
        self._answer(r.seq, (r.code, r.fare_fen, r.balance_fen, r.replay), answer_id)

    def _pong(self, pong: m.Pong) -> None:
        if pong.time_ms not in self.pings:
            self.world.fail("pong-echoes-ping", f"{self.name} got a pong for {pong.time_ms}, never sent")
        self.pongs += 1

    def _answer(self, seq: int, answer: tuple[int, int, int, bool], answer_id: int) -> None:
        if seq not in self.taps:
            self.world.fail("answer-names-a-sent-seq", f"{self.name} got an answer for seq {seq}, never sent")
        self.model.on_answer(self.terminal_id, seq, answer, answer_id)
        self.world.log(self.name, f"seq {seq} -> {answer}")
        if answer[0] in _NOT_FINAL:
            if seq in self.unanswered:
                w = self.world
                w.at(w.rng.randint(*RETRY_LATER_MS), self._retry, seq)
            return
        if self.unanswered.pop(seq, None) is not None:
            self.final[seq] = answer
            self.world.open_taps -= 1
            if self.world.rng.random() < self.sc.p_retry_answered:
                w = self.world
                w.open_taps += 1  # the run is not over before this resend has its answer
                w.at(w.rng.randint(0, 3_000), self._resend_answered, seq)

    def _retry(self, seq: int) -> None:
        if seq in self.unanswered:
            self._send_taps([seq])

    def _resend_answered(self, seq: int) -> None:
        """A deliberate retry of a decided tap: the answer must be its first outcome, a replay.
        It is kept and retried like any unanswered tap until it has that answer again."""
        self.world.log(self.name, f"deliberate resend of answered seq {seq}")
        self.unanswered[seq] = 0
        self._send_taps([seq])
        self._arm_timer()

    # -- pings and parameter requests, between taps ----------------------------------------
    def _chatter_later(self) -> None:
        w = self.world
        w.at(w.rng.randint(*CHATTER_MS), self._chatter, self.conn)

    def _chatter(self, conn: "Conn | None") -> None:
        if conn is not self.conn or self.client is None or not self.ready or self.done:
            return
        if self.world.rng.random() < 0.5:
            now = EPOCH_MS + self.world.now_ms
            self.pings.add(now)
            self._write(self.client.ping(now))
        else:
            self._write(self.client.params(fare_version=1, hotlist_version=0))
        self._chatter_later()

    # -- connection ----------------------------------------------------------------------
    def _connect(self) -> None:
        self.reconnecting = False
        if self.conn is not None:
            return
        conn = self.gateway.connect(self)
        if conn is None:
            self._reconnect_later()
            return
        self.conn, self.client = conn, ClientConnection(self.terminal_id, self.key)
        self._write(self.client.hello(self.world.rng.randbytes(m.NONCE_BYTES)))
        for seq in self.unanswered:
            self.unanswered[seq] = 0
        self._arm_timer()

    def on_closed(self, conn: "Conn") -> None:
        if conn is self.conn:
            self.world.log(self.name, "connection closed by the gateway")
            self.conn, self.client = None, None
            self._reconnect_later()

    def _drop_connection(self) -> None:
        if self.conn is not None:
            self.gateway.close(self.conn)
            self.conn, self.client = None, None
        self._reconnect_later()

    def _reconnect_later(self) -> None:
        if not self.reconnecting:
            self.reconnecting = True
            w = self.world
            w.at(w.rng.randint(*RECONNECT_MS), self._connect)

