"""The gateway process: the product's GatewayContext, TerminalProtocol (over the sans-I/O
ServerConnection) and Router, on in-memory transports. Terminals' frames come over the lossy
link; shard calls go to SimActor handles. A restart kills the process: connections and every
answer in flight are lost, and a new Router and context start after a delay."""

from typing import TYPE_CHECKING, Any

from citycard.actors.shard_client import CallPolicy, ShardClient
from citycard.gateway.build import GatewayLimits, build_gateway
from citycard.gateway.context import GatewayContext
from citycard.gateway.metrics import Metrics
from citycard.gateway.server import TerminalProtocol

from .loop import Owner
from .model import Model
from .network import Link
from .scenario import Scenario
from .session import SimSession
from .shard import SimActor
from .world import EPOCH_MS, World

if TYPE_CHECKING:
    from .terminal import SimTerminal

RESTART_MS = (100, 2_000)
_metrics: Metrics | None = None  # one registry for every seed: metrics never steer the product


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


class Conn:
    """One TCP connection: the terminal's end is the SimTerminal, the gateway's a TerminalProtocol
    over this transport."""

    def __init__(self, gateway: "SimGateway", terminal: "SimTerminal") -> None:
        self.gateway = gateway
        self.terminal = terminal
        self.owner = gateway.owner
        self.open = True  # neither end has closed
        self.protocol: TerminalProtocol | None = None
        self.reading = True  # False: the gateway paused reading (backpressure); frames wait here
        self.unread: list[bytes] = []

    # asyncio.Transport, as TerminalProtocol uses it
    def write(self, data: bytes) -> None:
        if self.open:
            self.gateway.send_frame(self, data)

    def is_closing(self) -> bool:
        return not self.open

    def write_eof(self) -> None:
        """FIN after an error frame: the terminal reads it, then closes its end."""
        w = self.gateway.world
        w.at(w.rng.randint(1, 20), self.terminal.on_closed, self)

    def close(self) -> None:
        if self.open:
            self.open = False
            w = self.gateway.world
            w.loop.call_soon(self._lost, context=self.owner.context())
            w.at(w.rng.randint(1, 20), self.terminal.on_closed, self)  # FIN or RST, never lost

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.reading = False
        self.gateway.pauses += 1

    def resume_reading(self) -> None:
        """As a real loop: what waited is read later, not inside this call."""
        self.reading = True
        w = self.gateway.world
        w.loop.call_soon(self._read_unread, context=self.owner.context())

    def _read_unread(self) -> None:
        while self.reading and self.unread and self.open and self.protocol is not None:
            self.protocol.data_received(self.unread.pop(0))

    def _lost(self) -> None:
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connection_lost(None)


class SimGateway:
    def __init__(self, world: World, model: Model, sc: Scenario, actors: list[SimActor], sessions: list[SimSession],
                 frames: Link) -> None:
        self.world = world
        self.model = model
        self.sc = sc
        self.actors = actors
        self.frames = frames
        self.sessions = sessions
        self.restarts = 0
        self.pauses = 0  # times a connection stopped being read (backpressure)
        self.next_answer_id = 0
        self.owner = Owner("gateway#0")
        self.up = False
        self.conns: list[Conn] = []
        self.ctx: GatewayContext | None = None
        world.at(0, self._start)
        for t in sc.faults.gateway_restarts:
            world.at(t, self.crash)

    def _start(self) -> None:
        self.owner.run(self._build)
        self.up = True

    def _build(self) -> None:
        sc, w = self.sc, self.world
        client = ShardClient(self.actors, CallPolicy(sc.call_timeout_ms / 1000.0, sc.retry_deadline_ms / 1000.0))
        limits = GatewayLimits(shard_batch_max_taps=sc.batch_max_taps, shard_inflight_calls=sc.inflight_calls,
                               shard_queue_max_taps=sc.queue_max_taps, linger_ms=sc.linger_ms,
                               max_frame_bytes=256 * 1024, max_batch_taps=1000, auth_timeout_ms=10_000,
                               heartbeat_ms=30_000,
                               # from fields already drawn, so every seed keeps its scenario
                               shard_pipeline_min_taps=(1, 4, 256)[(sc.queue_max_taps + sc.linger_ms) % 3],
                               shard_queue_pause_taps=(0, max(1, sc.queue_max_taps // 2), sc.queue_max_taps)[
                                   (sc.batch_max_taps + sc.inflight_calls) % 3])
        parts = build_gateway(client, self.sessions, self._hotlist, metrics(), limits,
                              fare_version=lambda: 1, hotlist_version=lambda: 0,
                              wall_ms=lambda: EPOCH_MS + w.now_ms, nonce=w.rng.randbytes)
        parts.reporter.start()
        self.ctx = parts.ctx

    def _hotlist(self) -> set[int]:
        now = self.world.now_ms
        return {card for card, at_ms in self.sc.hotlist.items() if now >= at_ms}

    # -- connections ---------------------------------------------------------------------
    def connect(self, terminal: "SimTerminal") -> Conn | None:
        if not self.up:
            return None
        conn = Conn(self, terminal)
        self.conns.append(conn)
        self.owner.run(self._accept, conn)
        return conn

    def _accept(self, conn: Conn) -> None:
        assert self.ctx is not None
        conn.protocol = TerminalProtocol(self.ctx)
        conn.protocol.connection_made(conn)  # type: ignore[arg-type]

    def on_frame(self, conn: Conn, data: bytes) -> None:
        """Bytes from a terminal reach the gateway's protocol, if that connection still lives."""
        if conn.open and conn.protocol is not None and conn.owner is self.owner:
            if not conn.reading or conn.unread:
                conn.unread.append(data)  # in the kernel's buffer until the gateway reads again
                return
            self.owner.run(conn.protocol.data_received, data)

    def send_frame(self, conn: Conn, data: bytes) -> None:
        self.next_answer_id += 1  # duplicated frames share their id
        self.frames.send(conn.terminal.on_frame, conn, data, self.next_answer_id)

    def close(self, conn: Conn) -> None:
        """The terminal closed its end."""
        if conn.open:
            conn.open = False
            self.world.loop.call_soon(conn._lost, context=conn.owner.context())

    # -- restarts ------------------------------------------------------------------------
    def crash(self) -> None:
        w = self.world
        w.log("gateway", "RESTART: connections and answers in flight are lost")
        self.restarts += 1
        self.up = False
        self.owner.kill()
        conns, self.conns = self.conns, []
        for conn in conns:
            if conn.open:
                conn.open = False
                conn.protocol = None  # the process is gone: no connection_lost runs
                w.at(w.rng.randint(1, 20), conn.terminal.on_closed, conn)
        self.ctx = None
        self.owner = Owner(f"gateway#{self.restarts}")
        w.at(w.rng.randint(*RESTART_MS), self._restarted)

    def _restarted(self) -> None:
        self._start()
        self.world.log("gateway", "up again")
