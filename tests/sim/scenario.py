"""One seed's parameters: the cards, terminals, taps, configuration and fault rates."""

import random
from dataclasses import dataclass, field

from citycard.domain.cards import CardState, CardStatus, Category, make_card_no
from citycard.domain.taps import TapKind

from .world import EPOCH_MS, World

MASTER_KEY = b"sim-master-key".ljust(32, b"\0")


@dataclass(frozen=True)
class CardSpec:
    card_no: int
    status: int
    category: int
    balance_fen: int
    credit_good: bool

    def fresh(self) -> CardState:
        """The card as the cards table holds it (opening purses)."""
        return CardState(self.card_no, self.status, self.category, self.balance_fen, credit_good=self.credit_good)


@dataclass(frozen=True)
class PlannedTap:
    at_ms: int  # fake time the tap happens
    card_no: int
    kind: int
    route: int
    amount_fen: int

    @property
    def time_ms(self) -> int:
        return EPOCH_MS + self.at_ms


@dataclass(frozen=True)
class PlannedOp:
    """A card service at the counter (the card services' ShardClient.apply_op): a top-up or a refund, with its key."""

    at_ms: int
    key: str
    card_no: int
    refund: bool
    amount_fen: int


@dataclass
class Faults:
    p_drop: float = 0.0  # a terminal<->gateway frame is lost
    p_dup: float = 0.0  # a frame (or a shard call) is delivered twice
    p_delay: float = 0.0  # a message takes up to max_delay_ms more (so messages reorder)
    max_delay_ms: int = 0
    p_call_error: float = 0.0  # a shard call fails on its way back (the reply is lost)
    p_commit_fail: float = 0.0  # the journal commit fails and nothing is stored
    p_commit_ambiguous: float = 0.0  # the commit is stored, but the shard is told it failed
    p_crash_apply: float = 0.0  # the shard dies after apply, before commit
    p_crash_commit: float = 0.0  # the shard dies after the commit, before it answers
    p_crash_during_call: float = 0.0  # the shard dies 0-30 ms into a call, whatever it is doing
    p_commit_hang: float = 0.0  # a group commit hangs 1-3 commit timeouts, a recovery 1-40 s (a lock, a stalled disk)
    p_load_fail: float = 0.0  # recovery cannot read the store
    p_snapshot_fail: float = 0.0
    gateway_restarts: list[int] = field(default_factory=list)  # fake times
    until_ms: int = 0


@dataclass
class Scenario:
    cards: list[CardSpec]
    unknown_card: int  # a card no shard holds (CARD_UNKNOWN, recorded)
    hotlist: dict[int, int]  # card_no -> fake time it is hotlisted at the gateway
    terminals: list[list[PlannedTap]]
    ops: list[PlannedOp]
    n_shards: int
    n_sessions: int
    faults: Faults
    # gateway (Router) settings
    batch_max_taps: int
    inflight_calls: int
    queue_max_taps: int
    retry_deadline_ms: int
    linger_ms: int
    call_timeout_ms: int
    commit_timeout_ms: int
    # shard settings
    dedupe_limit: int
    commit_max_rows: int
    snapshot_every_rows: int
    snapshot_interval_s: float
    snapshot_quiet_fraction: float
    snapshot_defer_max_rows: int
    # terminal behaviour
    answer_timeout_ms: int
    p_batch: float  # send unanswered taps as one "taps" batch rather than single "tap"s
    p_reconnect_on_timeout: float
    p_retry_answered: float  # deliberately resend a tap that already has its final answer


_ROUTES = {TapKind.BUS: (1, 12, 315, 500), TapKind.MERCHANT: (9001, 9003), TapKind.BIKE_RENT: (1, 2),
           TapKind.BIKE_RETURN: (1, 2), TapKind.TAXI: (0,)}


def make_scenario(world: World) -> Scenario:
    rng = world.rng
    cards = [
        CardSpec(make_card_no(1000 + i), CardStatus.ACTIVE if rng.random() < 0.9 else CardStatus.BLOCKED,
                 rng.choice((Category.ADULT, Category.ADULT, Category.STUDENT, Category.ELDERLY)),
                 rng.choice((0, 150, 400, 1000, 3000, 30_000)), rng.random() < 0.7)
        for i in range(rng.randint(1, 4))
    ]
    unknown = make_card_no(9999)
    choices = [c.card_no for c in cards] + [unknown]
    kinds = (TapKind.BUS, TapKind.BUS, TapKind.BUS, TapKind.MERCHANT, TapKind.TAXI, TapKind.BIKE_RENT,
             TapKind.BIKE_RETURN)
    terminals: list[list[PlannedTap]] = []
    span_ms = rng.choice((2_000, 10_000, 40_000))
    for _ in range(rng.randint(2, 4)):
        taps = []
        for _ in range(rng.randint(3, 10)):
            kind = rng.choice(kinds)
            amount = rng.randint(1, 800) if kind in (TapKind.MERCHANT, TapKind.TAXI) else 0
            card = choices[-1] if rng.random() < 0.03 else rng.choice(choices[:-1])
            taps.append(PlannedTap(rng.randint(0, span_ms), card, int(kind), rng.choice(_ROUTES[kind]), amount))
        taps.sort(key=lambda t: t.at_ms)
        terminals.append(taps)
    hotlist = {c.card_no: rng.randint(0, span_ms) for c in cards if rng.random() < 0.1}
    ops = sorted((PlannedOp(rng.randint(0, span_ms), f"sim-op-{i}", rng.choice(choices), rng.random() < 0.3,
                            rng.choice((1, 200, 5_000, 100_000)))
                  for i in range(rng.choice((0, 0, 1, 3, 6)))), key=lambda o: o.at_ms)
    calm = rng.random() < 0.15
    until = span_ms + rng.randint(0, 10_000)

    def p(hi: float) -> float:
        return 0.0 if calm else rng.choice((0.0, rng.uniform(0, hi)))

    faults = Faults(
        p_drop=p(0.15), p_dup=p(0.1), p_delay=p(0.3), max_delay_ms=rng.choice((50, 500, 3_000)),
        p_call_error=p(0.1), p_commit_fail=p(0.15), p_commit_ambiguous=p(0.1), p_crash_apply=p(0.08),
        p_crash_commit=p(0.08), p_crash_during_call=p(0.08), p_commit_hang=p(0.05), p_load_fail=p(0.2), p_snapshot_fail=p(0.3),
        gateway_restarts=[] if calm else sorted(rng.randint(0, until) for _ in range(rng.choice((0, 0, 1, 2)))),
        until_ms=until,
    )
    commit_timeout_ms = rng.choice((100, 1_000, 5_000))
    snapshot_every_rows = rng.choice((10**9, 3, 10))
    aside = random.Random(world.seed * 31 + 7)  # not world.rng: every seed keeps its draws and events
    return Scenario(
        cards=cards, unknown_card=unknown, hotlist=hotlist, terminals=terminals, ops=ops,
        n_shards=rng.choice((1, 2)), n_sessions=rng.choice((1, 2)), faults=faults,
        batch_max_taps=rng.choice((1, 3, 8, 4000)), inflight_calls=rng.choice((1, 2, 3)),
        queue_max_taps=rng.choice((4, 40, 40_000)), retry_deadline_ms=rng.choice((300, 2_000, 20_000)),
        linger_ms=rng.choice((0, 1, 5)), call_timeout_ms=commit_timeout_ms * rng.choice((2, 3, 6)),
        commit_timeout_ms=commit_timeout_ms,
        dedupe_limit=rng.choice((2_000_000, 2_000_000, 4, 12)), commit_max_rows=rng.choice((1, 5, 20_000)),
        snapshot_every_rows=snapshot_every_rows, snapshot_interval_s=rng.choice((10**6, 2.0)),
        snapshot_quiet_fraction=aside.choice((1.0, 0.5, 0.2)), snapshot_defer_max_rows=snapshot_every_rows * aside.choice((1, 3)),
        answer_timeout_ms=rng.choice((300, 1_000, 5_000)), p_batch=rng.choice((0.0, 0.3, 0.8)),
        p_reconnect_on_timeout=rng.uniform(0, 0.5), p_retry_answered=rng.choice((0.0, 0.1, 0.3)),
    )
