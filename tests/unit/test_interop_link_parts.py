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
from citycard.interop import store
from citycard.interop.client import LinkClient
from citycard.interop.desk import LinkMetrics, RemoteDesk
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
async def silent_issuer() -> AsyncIterator[tuple[int, list[ix.RemoteTap]]]:
    """SH: authenticates HZ, then takes every tap and never answers one."""
    seen: list[ix.RemoteTap] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = IssuerSide("SH", SH_KEY, {"HZ": pub(HZ_KEY)}, b"\xb0" * 16, lambda c: c // 10**11 == 310000)
        while data := await reader.read(65536):
            step = conn.receive_data(data, NOW)
            writer.write(step.out)
            seen.extend(ev.tap for ev in step.events if isinstance(ev, TapIn))
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
                assert await client.decide(remote_tap(1), 0.1) is None  # no answer in time
                assert await client.decide(remote_tap(1), 0.1) is None  # the retry goes out again
                assert await client.decide(remote_tap(2), 0.1) is None  # the one slot is free again
                await asyncio.sleep(0.05)
                assert [t.seq for t in seen] == [1, 1, 2]
                # two waiters on one key: both hear None when the first gives up, and it is sent once
                both = await asyncio.gather(client.decide(remote_tap(3), 0.1), client.decide(remote_tap(3), 0.3))
                assert list(both) == [None, None]
                await asyncio.sleep(0.05)
                assert [t.seq for t in seen] == [1, 1, 2, 3]
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
            await d._stand_in(t, key)
        assert d.standin.pending_count == 0 and d.standin.risk("SH") == Risk() and pool.rows == {}
        again = await d._stand_in(t, key)
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
        first = asyncio.create_task(d._stand_in(t, key))
        await asyncio.sleep(0.01)
        retry = asyncio.create_task(d._stand_in(t, key))
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


@pytest.mark.parametrize("undecided", [Result.BUSY, Result.RETRY, Result.SEQ_TOO_OLD])
def test_advice_the_shards_did_not_decide_is_not_acked(undecided: Result) -> None:
    """SEQ_TOO_OLD is "outcome unknown" (domain/results.py): not a decline, the acquirer sends again."""
    async def scenario() -> None:
        outcomes = [Outcome(int(Result.OK), 200, 800, False), Outcome(int(undecided), 0, -1, False)]

        async def decide(taps: Sequence[Tap]) -> list[Outcome]:
            return outcomes[: len(taps)]

        sh_registry = IssuerRegistry(list(registry().others()) + [
            Issuer("HZ", "Hangzhou", 330100, "127.0.0.1", 1, pub(HZ_KEY), 500)], "SH")
        server = LinkServer(sh_registry, SH_KEY, None, decide, host="127.0.0.1", port=0, wall_ms=lambda: NOW)
        server._slots["HZ"] = 0
        items = [ix.AdviceItem(terminal_id=1001, seq=seq, card=SH_CARD, amount_fen=200, time_ms=NOW, kind=1)
                 for seq in (5, 6)]
        out = Collect()
        await server._advice(ready_issuer_side(), out, ix.StandInAdvice(acquirer="HZ", req=9, items=items))  # type: ignore[arg-type]
        got = ix.LinkReader(issuer_side=False).feed(out.data)
        assert [type(m) for m in got] == [ix.Error] and got[0].code == ix.LinkError.INTERNAL  # type: ignore[union-attr]

    run(scenario)


class AdvicePool:
    """pending_advice's SELECT and settle_standin's UPDATEs, recorded."""

    def __init__(self, owed: list[store.LinkTap]) -> None:
        self.owed = owed
        self.updates: list[tuple[Any, ...]] = []

    async def fetch(self, sql: str, issuer: str, limit: int) -> list[dict[str, int]]:
        return [{"terminal_id": t.terminal_id, "seq": t.seq, "card_no": t.card_no, "kind": t.kind,
                 "route": t.route, "tap_time_ms": t.time_ms, "amount_fen": t.amount_fen}
                for t in self.owed if t.issuer == issuer][:limit]

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator["AdvicePool"]:
        yield self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        assert "issuer = $6" in sql
        self.updates += args


class AckingClient:
    def __init__(self, extra: list[ix.AdviceAckItem]) -> None:
        self.extra = extra

    async def advise(self, items: list[ix.AdviceItem], timeout_s: float) -> ix.StandInAdviceAck:
        acks = [ix.AdviceAckItem(terminal_id=i.terminal_id, seq=i.seq, decision=int(ix.AdviceDecision.ACCEPTED),
                                 code=int(Result.OK)) for i in items]
        return ix.StandInAdviceAck(acquirer="HZ", req=1, items=acks + self.extra)


def test_an_ack_settles_only_the_taps_its_advice_carried_and_only_that_issuers() -> None:
    async def scenario() -> None:
        sent, _ = link_tap(3)
        pool = AdvicePool([sent])
        d = desk(pool)
        d.standin.decide(TapKey("HZ", 1001, 3), SH_CARD, 200, "SH", NOW)
        d.standin.decide(TapKey("HZ", 1001, 4), SH_CARD, 200, "SH", NOW)  # owed, not in this advice
        d._stood_in.update({(1001, 3), (1001, 4)})
        stray = ix.AdviceAckItem(terminal_id=1001, seq=4, decision=int(ix.AdviceDecision.DECLINED),
                                 code=int(Result.CARD_BLOCKED))
        more = await d._advise_once("SH", AckingClient([stray]))  # type: ignore[arg-type]
        assert more is False
        assert pool.updates == [(1001, 3, "confirmed", int(Result.OK), NOW, "SH")]
        assert d._stood_in == {(1001, 4)}
        assert d.standin.risk("SH") == Risk(2, 400, 1, 200, 0, 0)  # the stray decline took nothing

    run(scenario)
