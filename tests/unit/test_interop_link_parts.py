"""The link's acquirer side in pieces: LinkClient against a silent issuer on 127.0.0.1 (the
state machine of protocols/interop_conn.py, never answering a tap), and RemoteDesk's stand-in
and advice against an in-memory pool (a write that fails, or is still committing)."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from citycard.domain.issuers import Issuer, IssuerRegistry
from citycard.domain.results import Result
from citycard.domain.standin import Risk, TapKey
from citycard.domain.taps import Outcome, Tap
from citycard.interop import advice, store
from citycard.interop.client import LinkClient, NoAnswer
from citycard.interop.desk import LinkMetrics, RemoteDesk, _replay
from citycard.interop.server import LinkServer
from citycard.protocols import interop as ix
from citycard.protocols.interop_conn import AcquirerSide, IssuerSide, LinkState, TapIn

pytestmark = pytest.mark.timeout(30)

HZ_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SH_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
SH_CARD = 31000000000000179
NOW = 1_700_000_000_000


def pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def registry(port: int = 1) -> IssuerRegistry:
    return IssuerRegistry([
        Issuer("HZ", "Hangzhou", 330100, "127.0.0.1", 1, pub(HZ_KEY), 500),
        Issuer("SH", "Shanghai", 310000, "127.0.0.1", port, pub(SH_KEY), 500)], "HZ")


@asynccontextmanager
async def silent_issuer(fail: bool = False) -> AsyncIterator[tuple[int, list[ix.RemoteTap]]]:
    """SH: authenticates HZ, then takes every tap and never answers one (``fail``: answers
    each with its INTERNAL error naming the tap, as LinkServer does when the store fails)."""
    seen: list[ix.RemoteTap] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = IssuerSide("SH", SH_KEY, {"HZ": pub(HZ_KEY)}, b"\xb0" * 16, lambda c: c // 10**11 == 310000)
        while data := await reader.read(65536):
            step = conn.receive_data(data, NOW)
            writer.write(step.out)
            taps = [ev.tap for ev in step.events if isinstance(ev, TapIn)]
            seen.extend(taps)
            for t in taps if fail else []:
                writer.write(conn.internal_error("not decided", t.terminal_id, t.seq))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()


def remote_tap(seq: int) -> ix.RemoteTap:
    return ix.RemoteTap(acquirer="HZ", terminal_id=1001, seq=seq, card=SH_CARD, time_ms=NOW, kind=1, amount_fen=200)


def test_a_key_the_issuer_never_answers_is_sent_again_and_frees_its_slot() -> None:
    async def scenario() -> None:
        async with silent_issuer() as (port, seen):
            sh = registry(port).by_code("SH")
            assert sh is not None
            client = LinkClient("HZ", HZ_KEY, sh, connect_timeout_s=2.0, max_inflight=1, backoff_min_s=0.05,
                                backoff_max_s=0.1)
            try:
                assert await client.wait_up(2.0)
                assert await client.decide(remote_tap(1), 0.1) is NoAnswer.UNKNOWN  # sent, no answer in time
                assert await client.decide(remote_tap(1), 0.1) is NoAnswer.UNKNOWN  # the retry goes out again
                assert await client.decide(remote_tap(2), 0.1) is NoAnswer.UNKNOWN  # the one slot is free again
                await asyncio.sleep(0.05)
                assert [t.seq for t in seen] == [1, 1, 2]
                # two waiters on one key: both hear UNKNOWN when the first gives up, and it is sent once
                both = await asyncio.gather(client.decide(remote_tap(3), 0.1), client.decide(remote_tap(3), 0.3))
                assert list(both) == [NoAnswer.UNKNOWN, NoAnswer.UNKNOWN]
                await asyncio.sleep(0.05)
                assert [t.seq for t in seen] == [1, 1, 2, 3]
            finally:
                await client.stop()

    asyncio.run(scenario())


def test_the_issuers_error_naming_a_tap_ends_its_wait_at_once() -> None:
    """Before: the error named no key, and the waiter sat out its whole timeout."""
    async def scenario() -> None:
        async with silent_issuer(fail=True) as (port, seen):
            sh = registry(port).by_code("SH")
            assert sh is not None
            client = LinkClient("HZ", HZ_KEY, sh, connect_timeout_s=2.0, max_inflight=4, backoff_min_s=0.05,
                                backoff_max_s=0.1)
            try:
                assert await client.wait_up(2.0)
                loop = asyncio.get_running_loop()
                started = loop.time()
                assert await client.decide(remote_tap(1), 10.0) is NoAnswer.UNKNOWN  # the issuer may have begun it
                assert loop.time() - started < 1.0
                assert client._answers == {} and client.up  # the slot is free, the link stays
            finally:
                await client.stop()

    asyncio.run(scenario())


class FakePool:
    """record_standin's INSERT: held at ``gate`` while set, failing ``fail`` times."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], tuple[Any, ...]] = {}
        self.fail = 0
        self.gate: asyncio.Event | None = None

    async def execute(self, sql: str, *args: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise OSError("db blip")
        self.rows[(args[1], args[2])] = args


def desk(pool: Any) -> RemoteDesk:
    return RemoteDesk(registry(), HZ_KEY, pool, LinkMetrics(CollectorRegistry()), price=lambda tap, prefix: 200,
                      hotlisted=lambda card: False, tap_timeout_ms=100, connect_timeout_ms=100, max_inflight=10,
                      standin_window_ms=3_600_000, backoff_min_ms=10, backoff_max_ms=100, wall_ms=lambda: NOW)


def link_tap(seq: int) -> tuple[store.LinkTap, TapKey]:
    return store.LinkTap("SH", 1001, seq, SH_CARD, 1, 7, NOW, 200), TapKey("HZ", 1001, seq)


def run(make: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(make())  # type: ignore[arg-type]


def test_a_stand_in_whose_write_fails_is_forgotten_and_its_retry_decided_anew() -> None:
    async def scenario() -> None:
        pool = FakePool()
        d = desk(pool)
        t, key = link_tap(1)
        pool.fail = 1
        with pytest.raises(OSError):
            await d._stand_in(t, key, NoAnswer.NOT_SENT)
        assert d.standin.pending_count == 0 and d.standin.risk("SH") == Risk() and pool.rows == {}
        again = await d._stand_in(t, key, NoAnswer.NOT_SENT)
        assert (again.result, again.fare_fen, again.replay) == (Result.OK, 200, False)
        assert (1001, 1) in pool.rows and d.standin.risk("SH") == Risk(1, 200, 1, 200, 0, 0)

    run(scenario)


@pytest.mark.parametrize("fails", [False, True])
def test_a_retry_during_the_first_write_waits_for_it(fails: bool) -> None:
    async def scenario() -> None:
        pool = FakePool()
        pool.gate, pool.fail = asyncio.Event(), int(fails)
        d = desk(pool)
        t, key = link_tap(2)
        first = asyncio.create_task(d._stand_in(t, key, NoAnswer.NOT_SENT))
        await asyncio.sleep(0.01)
        retry = asyncio.create_task(d._stand_in(t, key, NoAnswer.NOT_SENT))
        await asyncio.sleep(0.01)
        assert not first.done() and not retry.done()  # no OK before the row is committed
        pool.gate.set()
        if fails:
            with pytest.raises(OSError):
                await first
            assert (await retry).result == Result.RETRY and d.standin.pending_count == 0
        else:
            assert ((await first).result, (await retry).result, (await retry).replay) == (Result.OK, Result.OK, True)
            assert (1001, 2) in pool.rows
        assert d._writing == {}

    run(scenario)


class Collect:
    """A StreamWriter that keeps what is written."""

    def __init__(self) -> None:
        self.data = b""

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data


def ready_issuer_side() -> IssuerSide:
    i = IssuerSide("SH", SH_KEY, {"HZ": pub(HZ_KEY)}, b"\xb0" * 16, lambda c: c // 10**11 == 310000)
    a = AcquirerSide("HZ", HZ_KEY, "SH", pub(SH_KEY), b"\xa0" * 16)
    a.receive_data(i.receive_data(a.receive_data(i.receive_data(a.hello(), NOW).out).out, NOW).out)
    assert i.state is LinkState.READY
    return i


def issuer_server(decide: Callable[[Sequence[Tap]], Awaitable[list[Outcome]]],
                  reverse: Callable[[str, int, int], Awaitable[bool]] | None = None) -> LinkServer:
    sh_registry = IssuerRegistry(list(registry().others()) + [
        Issuer("HZ", "Hangzhou", 330100, "127.0.0.1", 1, pub(HZ_KEY), 500)], "SH")
    server = LinkServer(sh_registry, SH_KEY, None, decide, host="127.0.0.1", port=0, wall_ms=lambda: NOW,
                        reverse=reverse)
    server._slots["HZ"] = 0
    return server


def advice_item(seq: int, void: bool = False) -> ix.AdviceItem:
    return ix.AdviceItem(terminal_id=1001, seq=seq, card=SH_CARD, amount_fen=200, time_ms=NOW, kind=1, void=void)


async def acked(server: LinkServer, items: list[ix.AdviceItem]) -> list[ix.AdviceAckItem]:
    out = Collect()
    await server._advice(ready_issuer_side(), out, ix.StandInAdvice(acquirer="HZ", req=9, items=items))  # type: ignore[arg-type]
    [ack] = ix.LinkReader(issuer_side=False).feed(out.data)
    assert isinstance(ack, ix.StandInAdviceAck) and ack.req == 9
    return ack.items


@pytest.mark.parametrize("undecided", [Result.BUSY, Result.RETRY, Result.SEQ_TOO_OLD])
def test_advice_the_shards_did_not_decide_is_acked_undecided_and_the_rest_decided(undecided: Result) -> None:
    """SEQ_TOO_OLD is "outcome unknown" (domain/results.py): not a decline; the decided item is
    acked now (before: an INTERNAL error for the whole advice, and a queue blocked behind it)."""
    async def scenario() -> None:
        outcomes = [Outcome(int(Result.OK), 200, 800, False), Outcome(int(undecided), 0, -1, False)]

        async def decide(taps: Sequence[Tap]) -> list[Outcome]:
            return outcomes[: len(taps)]

        items = await acked(issuer_server(decide), [advice_item(5), advice_item(6)])
        assert [(i.seq, i.decision, i.code) for i in items] == [
            (5, ix.AdviceDecision.ACCEPTED, Result.OK), (6, ix.AdviceDecision.UNDECIDED, undecided)]

    run(scenario)


def test_an_advice_the_issuer_failed_on_is_acked_all_undecided_at_once() -> None:
    """Before: an INTERNAL error naming no request, and the adviser waited out its 10 s."""
    async def scenario() -> None:
        async def broken(taps: Sequence[Tap]) -> list[Outcome]:
            raise OSError("store down")

        items = await acked(issuer_server(broken), [advice_item(5), advice_item(6, void=True)])
        assert [(i.seq, i.decision, i.code) for i in items] == [
            (5, ix.AdviceDecision.UNDECIDED, Result.RETRY), (6, ix.AdviceDecision.UNDECIDED, Result.RETRY)]

    run(scenario)


def test_a_void_is_decided_as_a_refused_tap_and_a_charge_the_issuer_held_is_credited_back() -> None:
    async def scenario() -> None:
        seen: list[Tap] = []
        held = {7: Outcome(int(Result.OK), 200, 800, True),  # the key had been charged: replayed
                8: Outcome(int(Result.CARD_BLOCKED), 0, 1000, False),  # new: held refused from now on
                9: Outcome(int(Result.INSUFFICIENT_FUNDS), 0, 10, True),  # decided as a refusal before
                10: Outcome(int(Result.OK), 200, 800, True)}  # charged, and the credit fails

        async def decide(taps: Sequence[Tap]) -> list[Outcome]:
            seen.extend(taps)
            return [held[t.seq] for t in taps]

        credits: list[tuple[str, int, int]] = []

        async def reverse(key: str, card: int, fen: int) -> bool:
            credits.append((key, card, fen))
            return not key.endswith(":10")

        items = await acked(issuer_server(decide, reverse), [advice_item(s, void=True) for s in (7, 8, 9, 10)])
        assert all(t.hotlisted for t in seen)  # refused by the shard unless the key was decided before
        d = ix.AdviceDecision
        assert [(i.seq, i.decision, i.code) for i in items] == [
            (7, d.REVERSED, Result.OK), (8, d.VOIDED, Result.CARD_BLOCKED), (9, d.VOIDED, Result.INSUFFICIENT_FUNDS),
            (10, d.UNDECIDED, Result.OK)]
        assert credits == [("linkrev:HZ:1001:7", SH_CARD, 200), ("linkrev:HZ:1001:10", SH_CARD, 200)]

    run(scenario)


class AdvicePool:
    """pending_advice's SELECT and settle_standin's UPDATEs, recorded."""

    def __init__(self, owed: list[store.LinkTap]) -> None:
        self.owed = owed
        self.updates: list[tuple[Any, ...]] = []
        self.retries: list[tuple[Any, ...]] = []
        self.next_try: dict[int, int] = {}  # seq -> next_try_ms (absent: due)

    async def fetch(self, sql: str, issuer: str, limit: int, now_ms: int) -> list[dict[str, Any]]:
        return [{"terminal_id": t.terminal_id, "seq": t.seq, "card_no": t.card_no, "kind": t.kind,
                 "route": t.route, "tap_time_ms": t.time_ms, "amount_fen": t.amount_fen,
                 "refused_code": t.refused_code, "attempts": t.attempts, "approved_ms": t.approved_ms}
                for t in self.owed if t.issuer == issuer and self.next_try.get(t.seq, 0) <= now_ms][:limit]

    async def fetchval(self, sql: str, issuer: str) -> int | None:
        return min(self.next_try.values(), default=None)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator["AdvicePool"]:
        yield self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        assert "AND issuer = $" in sql
        (self.retries if "attempts" in sql else self.updates).extend(args)


class AckingClient:
    def __init__(self, extra: list[ix.AdviceAckItem], decision: ix.AdviceDecision = ix.AdviceDecision.ACCEPTED,
                 code: Result = Result.OK) -> None:
        self.extra = extra
        self.decision, self.code = decision, code

    async def advise(self, items: list[ix.AdviceItem], timeout_s: float) -> ix.StandInAdviceAck:
        acks = [ix.AdviceAckItem(terminal_id=i.terminal_id, seq=i.seq, decision=int(self.decision),
                                 code=int(self.code)) for i in items]
        return ix.StandInAdviceAck(acquirer="HZ", req=1, items=acks + self.extra)


def test_an_ack_settles_only_the_taps_its_advice_carried_and_only_that_issuers() -> None:
    async def scenario() -> None:
        sent, _ = link_tap(3)
        pool = AdvicePool([sent])
        d = desk(pool)
        d.standin.decide(TapKey("HZ", 1001, 3), SH_CARD, 200, "SH", NOW)
        d.standin.decide(TapKey("HZ", 1001, 4), SH_CARD, 200, "SH", NOW)  # owed, not in this advice
        stray = ix.AdviceAckItem(terminal_id=1001, seq=4, decision=int(ix.AdviceDecision.DECLINED),
                                 code=int(Result.CARD_BLOCKED))
        more = await d.adviser.advise_once("SH", AckingClient([stray]))  # type: ignore[arg-type]
        assert more is False
        assert pool.updates == [(1001, 3, "confirmed", int(Result.OK), NOW, "SH", None)]
        assert d.standin.is_pending(TapKey("HZ", 1001, 4)) and not d.standin.is_pending(TapKey("HZ", 1001, 3))
        assert d.standin.risk("SH") == Risk(2, 400, 1, 200, 0, 0)  # the stray decline took nothing

    run(scenario)


def test_an_item_left_undecided_waits_then_expires_as_a_loss_with_its_reason() -> None:
    async def scenario() -> None:
        young = store.LinkTap("SH", 1001, 5, SH_CARD, 1, 7, NOW, 200, attempts=0, approved_ms=NOW)
        old = store.LinkTap("SH", 1001, 6, SH_CARD, 1, 7, NOW, 300, attempts=advice.MAX_ADVICE_ATTEMPTS - 1,
                            approved_ms=NOW)
        pool = AdvicePool([young, old])
        metrics = CollectorRegistry()
        d = RemoteDesk(registry(), HZ_KEY, pool, LinkMetrics(metrics), price=lambda tap, prefix: 200,
                       hotlisted=lambda card: False, tap_timeout_ms=100, connect_timeout_ms=100, max_inflight=10,
                       standin_window_ms=3_600_000, backoff_min_ms=10, backoff_max_ms=100, wall_ms=lambda: NOW)
        for t in (young, old):
            d.standin.decide(TapKey("HZ", t.terminal_id, t.seq), SH_CARD, t.amount_fen, "SH", NOW)
        client = AckingClient([], ix.AdviceDecision.UNDECIDED, Result.SEQ_TOO_OLD)
        assert await d.adviser.advise_once("SH", client) is False  # not at once again: it waits
        assert pool.retries == [(1001, 5, NOW + advice.retry_after_ms(0), "SH")]
        [(tid, seq, state, code, _, _, reason)] = pool.updates
        assert (tid, seq, state, code) == (1001, 6, "declined", Result.SEQ_TOO_OLD)
        assert reason.startswith(f"expired: undecided {advice.MAX_ADVICE_ATTEMPTS} times")
        assert d.standin.risk("SH") == Risk(2, 500, 1, 200, 1, 300)
        assert metrics.get_sample_value("citycard_advice_expired_fen_total", {"issuer": "SH"}) == 300
        assert metrics.get_sample_value("citycard_standin_declined_fen_total", {"issuer": "SH"}) == 300

    run(scenario)


def test_settle_ends_voids_by_the_issuers_word_and_expires_them_by_attempts_not_age() -> None:
    """Before: an item written over a day ago expired at its first undecided answer, so a long
    outage turned every approval into a loss and every void into a kept charge at once."""
    void = store.LinkTap("SH", 1001, 1, SH_CARD, 1, 7, NOW, 200, refused_code=int(Result.BUSY), approved_ms=NOW)
    stale = store.LinkTap("SH", 1001, 2, SH_CARD, 1, 7, NOW, 200, refused_code=int(Result.BUSY),
                          approved_ms=NOW - 3 * 24 * 3_600_000, attempts=advice.MAX_ADVICE_ATTEMPTS - 1)
    old = store.LinkTap("SH", 1001, 4, SH_CARD, 1, 7, NOW, 200, refused_code=int(Result.BUSY),
                        approved_ms=NOW - 3 * 24 * 3_600_000)
    approval = store.LinkTap("SH", 1001, 3, SH_CARD, 1, 7, NOW, 200, approved_ms=NOW)
    d = ix.AdviceDecision
    ack = ix.StandInAdviceAck(acquirer="HZ", req=1, items=[
        ix.AdviceAckItem(terminal_id=1001, seq=1, decision=int(d.REVERSED), code=0, replay=True),
        ix.AdviceAckItem(terminal_id=1001, seq=2, decision=int(d.UNDECIDED), code=int(Result.RETRY)),
        ix.AdviceAckItem(terminal_id=1001, seq=3, decision=int(d.VOIDED), code=int(Result.CARD_BLOCKED)),
        ix.AdviceAckItem(terminal_id=1001, seq=4, decision=int(d.UNDECIDED), code=int(Result.BUSY))])
    settled, later = advice.settle([void, stale, approval, old], ack, NOW)
    assert [(s.seq, s.state) for s in settled] == [(1, "reversed"), (2, "expired")]
    # VOIDED makes no sense for an approval: again; three days old but answered once: again
    assert later == [(1001, 3, NOW + advice.retry_after_ms(0)), (1001, 4, NOW + advice.retry_after_ms(0))]
    assert [advice.retry_after_ms(n) for n in (0, 1, 2, 30)] == [1000, 2000, 4000, advice.RETRY_MAX_MS]


def test_a_retry_of_a_key_decided_here_is_answered_from_the_store() -> None:
    def prior(table: str, result: int, state: str = "", refused: int | None = None) -> Outcome:
        return _replay(store.Prior(table, result, 200, 800 if table == "remote" else -1, state, refused))

    assert prior("remote", Result.OK) == Outcome(int(Result.OK), 200, 800, True)
    assert prior("standin", -1, "pending") == Outcome(int(Result.OK), 200, -1, True)
    assert prior("standin", int(Result.CARD_UNKNOWN), "declined") == Outcome(int(Result.OK), 200, -1, True)
    busy = int(Result.BUSY)
    assert prior("standin", -1, "pending", busy) == Outcome(busy, 0, -1, False)  # not resolved yet
    blocked = int(Result.CARD_BLOCKED)
    assert prior("standin", int(Result.INSUFFICIENT_FUNDS), "voided", busy) == Outcome(
        int(Result.INSUFFICIENT_FUNDS), 0, -1, True)
    assert prior("standin", int(Result.OK), "reversed", busy) == Outcome(blocked, 0, -1, True)
    assert prior("standin", -1, "pending", blocked) == Outcome(blocked, 0, -1, True)


class PriorPool(FakePool):
    """FakePool plus the prior-outcome probe: ``prior_rows`` by key."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_rows: dict[tuple[int, int], dict[str, Any]] = {}
        self.probes = 0

    async def fetchrow(self, sql: str, terminal_id: int, seq: int) -> dict[str, Any] | None:
        self.probes += 1
        return self.prior_rows.get((terminal_id, seq))


def visitor_tap(seq: int) -> Tap:
    return Tap(1001, seq, SH_CARD, NOW, 1, 7, 200)


def test_a_settled_stand_in_key_is_not_sent_online_again() -> None:
    """Before: once advice settled a key the desk forgot it, and a retry went to the issuer."""
    async def scenario() -> None:
        pool = PriorPool()
        d = desk(pool)
        pool.prior_rows[(1001, 1)] = {"tbl": "standin", "result": 0, "fare_fen": 200, "balance_fen": -1,
                                      "state": "confirmed", "refused_code": None}
        asked: list[ix.RemoteTap] = []

        async def never(tap: ix.RemoteTap, timeout_s: float) -> NoAnswer:
            asked.append(tap)
            return NoAnswer.NOT_SENT

        d.clients["SH"].decide = never  # type: ignore[method-assign]
        assert await d.decide(visitor_tap(1)) == Outcome(int(Result.OK), 200, -1, True)
        assert asked == [] and pool.probes == 1

    run(scenario)


def test_a_tap_sent_unanswered_then_refused_is_recorded_as_a_void_before_the_answer() -> None:
    async def scenario() -> None:
        pool = PriorPool()
        d = desk(pool)
        d.set_suspended(["SH"])  # stand-in refuses every SH card

        async def unknown(tap: ix.RemoteTap, timeout_s: float) -> NoAnswer:
            return NoAnswer.UNKNOWN

        async def not_sent(tap: ix.RemoteTap, timeout_s: float) -> NoAnswer:
            return NoAnswer.NOT_SENT

        d.clients["SH"].decide = unknown  # type: ignore[method-assign]
        out = await d.decide(visitor_tap(1))
        assert out.result == Result.ISSUER_NOT_ACCEPTED
        row = pool.rows[(1001, 1)]
        assert row[-1] == int(Result.ISSUER_NOT_ACCEPTED) and row[0] == "SH"  # refused_code: a void, owed advice
        assert d.adviser.due["SH"].is_set()
        d.clients["SH"].decide = not_sent  # type: ignore[method-assign]
        assert (await d.decide(visitor_tap(2))).result == Result.ISSUER_NOT_ACCEPTED
        assert (1001, 2) not in pool.rows  # never reached the issuer: nothing to resolve

    run(scenario)


def test_visitors_taps_in_flight_are_bounded() -> None:
    async def scenario() -> None:
        d = desk(PriorPool())
        d.max_visitor_taps = 2
        gate = asyncio.Event()

        async def slow(tap: Tap) -> Outcome:
            await gate.wait()
            return Outcome(int(Result.OK), 200, 800, False)

        d.decide = slow  # type: ignore[method-assign]
        settled: dict[int, Outcome] = {}

        class P:
            def settle(self, index: int, outcome: Outcome) -> None:
                settled[index] = outcome

        for i in range(3):
            d.submit(visitor_tap(i + 1), P(), i)
        assert settled == {2: Outcome(int(Result.BUSY), 0, -1, False)}  # the third: BUSY at once
        gate.set()
        await asyncio.sleep(0.01)
        assert sorted(settled) == [0, 1] + [2] and settled[0].result == Result.OK

    run(scenario)


def test_the_terminals_rate_limit_holds_for_visitors_taps_too() -> None:
    """Before: the router handed every visitor's tap to the desk, past the per-terminal limit."""
    from citycard.gateway.metrics import Metrics
    from citycard.gateway.router import Pending, Router

    async def scenario() -> None:
        class OneShard:
            n_shards = 1

        class Remote:
            def __init__(self) -> None:
                self.taken: list[int] = []

            def claims(self, card_no: int) -> bool:
                return True

            def submit(self, tap: Tap, pending: Any, index: int) -> None:
                self.taken.append(index)
                pending.settle(index, Outcome(int(Result.OK), 200, 800, False))

        router = Router(OneShard(), set(), Metrics(), batch_max_taps=10, inflight_calls=1,  # type: ignore[arg-type]
                        queue_max_taps=10, linger_ms=1.0)
        router.remote = remote = Remote()
        replies: list[Pending] = []
        router.submit(Pending(replies.append, 1, False, [visitor_tap(s) for s in (1, 2, 3)]), admit=1)
        assert remote.taken == [0]
        assert [o.result for o in replies[0].outcomes] == [Result.OK, Result.BUSY, Result.BUSY]  # type: ignore[union-attr]

    run(scenario)


def test_a_retry_while_the_void_is_written_is_not_asked_online() -> None:
    async def scenario() -> None:
        pool = PriorPool()
        pool.gate = asyncio.Event()
        d = desk(pool)
        d.set_suspended(["SH"])
        asked: list[int] = []

        async def unknown(tap: ix.RemoteTap, timeout_s: float) -> NoAnswer:
            asked.append(tap.seq)
            return NoAnswer.UNKNOWN

        d.clients["SH"].decide = unknown  # type: ignore[method-assign]
        first = asyncio.create_task(d.decide(visitor_tap(1)))
        await asyncio.sleep(0.01)  # its void is being written
        retry = asyncio.create_task(d.decide(visitor_tap(1)))
        await asyncio.sleep(0.01)
        assert not retry.done() and asked == [1]  # it waits for the first try, never asked online
        pool.gate.set()
        assert (await first).result == (await retry).result == Result.ISSUER_NOT_ACCEPTED
        assert asked == [1] and d._deciding == {}

    run(scenario)


def test_a_retry_while_the_first_try_is_with_the_issuer_gets_its_outcome() -> None:
    """Before: the retry, past the checks while the first try waited on the link, asked the
    issuer again; the issuer replayed its charge as OK while the first try voided it."""
    async def scenario() -> None:
        pool = PriorPool()
        d = desk(pool)
        d.set_suspended(["SH"])
        asked: list[int] = []
        release = asyncio.Event()

        async def slow_unknown(tap: ix.RemoteTap, timeout_s: float) -> NoAnswer:
            asked.append(tap.seq)
            await release.wait()
            return NoAnswer.UNKNOWN

        d.clients["SH"].decide = slow_unknown  # type: ignore[method-assign]
        first = asyncio.create_task(d.decide(visitor_tap(3)))
        await asyncio.sleep(0.01)
        retry = asyncio.create_task(d.decide(visitor_tap(3)))
        await asyncio.sleep(0.01)
        release.set()
        assert (await first) == (await retry) and (await first).result == Result.ISSUER_NOT_ACCEPTED
        assert asked == [3] and (1001, 3) in pool.rows  # asked once; one void

    run(scenario)


def test_a_task_that_fails_unawaited_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from citycard.tasks import log_failure

    async def scenario() -> None:
        async def boom() -> None:
            raise ValueError("lost")

        task = asyncio.get_running_loop().create_task(boom())
        task.add_done_callback(log_failure(logging.getLogger("t"), "the boom"))
        cancelled = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        cancelled.add_done_callback(log_failure(logging.getLogger("t"), "the sleeper"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="t"):
        run(scenario)
    assert [r.getMessage() for r in caplog.records] == ["the boom failed: ValueError('lost')"]


def test_items_waiting_for_their_next_try_are_sent_when_due_even_after_a_restart() -> None:
    """Nothing due now (rows left undecided before a restart): the adviser learns when they are
    due, rather than waiting for a new stand-in or the link to come back up."""
    async def scenario() -> None:
        waiting = store.LinkTap("SH", 1001, 7, SH_CARD, 1, 7, NOW, 200, attempts=3, approved_ms=NOW)
        pool = AdvicePool([waiting])
        pool.next_try = {7: NOW + 8_000}
        clock = [NOW]
        d = RemoteDesk(registry(), HZ_KEY, pool, LinkMetrics(CollectorRegistry()), price=lambda tap, prefix: 200,
                       hotlisted=lambda card: False, tap_timeout_ms=100, connect_timeout_ms=100, max_inflight=10,
                       standin_window_ms=3_600_000, backoff_min_ms=10, backoff_max_ms=100,
                       wall_ms=lambda: clock[0])
        client = AckingClient([])
        assert await d.adviser.advise_once("SH", client) is False  # type: ignore[arg-type]
        assert pool.updates == [] and d.adviser._retry_at == {"SH": NOW + 8_000}
        clock[0] = NOW + 8_000
        await d.adviser.advise_once("SH", client)  # type: ignore[arg-type]
        assert pool.updates == [(1001, 7, "confirmed", int(Result.OK), NOW + 8_000, "SH", None)]

    run(scenario)
