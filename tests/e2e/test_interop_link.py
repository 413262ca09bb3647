"""End to end across two cities: a terminal in city B (SH) taps a card of city A (HZ); B routes
it over the inter-platform link to A, which decides it on its shards; B answers its terminal
only once A's answer is journaled on both sides. With A's link down, B stands in up to the
floor limit and refuses above it; when A is back, B's advice is decided in A's journal.

One pair of platforms for the whole module (starting them costs seconds)."""

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest

from citycard.domain.cards import CardStatus
from citycard.domain.ops import OpKind, SetStatus
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.interop.server import REMOTE_KIND
from citycard.interop.store import remote_terminal_id
from tests.support.city import COL, City, plain_cards
from tests.support.clock import now_ms
from tests.support.region import Region, running_region
from tests.support.services import drop_city_data, new_schema

pytestmark = pytest.mark.usefixtures("ray_cluster")

ROUTE = 7
STRANGER = 33010009999999990  # A's issuer number, a serial A never issued


@pytest.fixture(scope="module")
def region(configured_services, tmp_path_factory) -> Iterator[tuple[asyncio.Runner, Region]]:  # noqa: ANN001
    schemas = new_schema(), new_schema()
    runner = asyncio.Runner()
    stack = AsyncExitStack()
    try:
        pair = runner.run(stack.enter_async_context(running_region(
            configured_services, *schemas, tmp_path_factory.mktemp("link-keys"), floor_limit_fen=500,
            tap_timeout_ms=500)))
        yield runner, pair
    finally:
        runner.run(stack.aclose())
        runner.close()
        for s in schemas:
            drop_city_data(configured_services, s)


async def fetch(city: City, sql: str, *args: object) -> list[tuple]:
    conn = await city.conn()
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def until(check, timeout_s: float = 10.0) -> None:  # noqa: ANN001
    """Wait for ``check()`` (a bool, or an awaitable of one) to hold."""
    deadline = time.monotonic() + timeout_s
    while not await _value(check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def opening_of(city: City, card: int) -> int:
    return next(c[COL["opening_fen"]] for c in city.cards if c[COL["card_no"]] == card)


def test_visitor_tap_is_decided_by_its_issuer_once_then_stood_in_then_advised(region) -> None:  # noqa: ANN001
    runner, r = region

    async def scenario() -> None:
        card = plain_cards(r.a)[0]
        opening = opening_of(r.a, card)
        client = await r.b.client()
        tid = client.terminal_id
        desk = r.b.platform.region.desk
        # 1. online: A decides, B journals A's answer, the terminal hears A's balance
        first = await client.tap(1, card, now_ms() - 120_000, int(TapKind.BUS), route=ROUTE)
        assert first.code == Result.OK and first.replay is False
        fare = first.fare_fen
        assert fare > 0 and first.balance_fen == opening - fare
        again = await client.tap(1, card, now_ms() - 120_000, int(TapKind.BUS), route=ROUTE)
        assert (again.code, again.fare_fen, again.balance_fen, again.replay) == (Result.OK, fare, opening - fare, True)
        slot = (await fetch(r.a, "SELECT slot FROM interop_acquirers WHERE code = 'SH'"))[0][0]
        shard_tid = remote_terminal_id(slot, tid)
        a_rows = await fetch(r.a, "SELECT seq, card_no, kind, result, amount_fen, balance_after_fen FROM journal"
                                  " WHERE terminal_id = $1 ORDER BY seq", shard_tid)
        assert a_rows == [(1, card, REMOTE_KIND, Result.OK, fare, opening - fare)]  # charged once
        b_log = await fetch(r.b, "SELECT issuer, seq, card_no, result, fare_fen, balance_fen FROM remote_taps"
                                 " WHERE terminal_id = $1", tid)
        assert b_log == [("HZ", 1, card, Result.OK, fare, opening - fare)]
        assert await fetch(r.b, "SELECT count(*) FROM journal WHERE card_no = $1", card) == [(0,)]  # not B's to charge

        # 2. A's link goes away: B stands in while the card's total stays within the floor limit
        await r.a.platform.region.server.stop()
        await until(lambda: not desk.clients["HZ"].up)
        n_within = r.floor_limit_fen // fare
        answers = [await client.tap(2 + k, card, now_ms() - 60_000 + k * 1000, int(TapKind.BUS), route=ROUTE)
                   for k in range(n_within + 1)]
        assert [a.code for a in answers] == [Result.OK] * n_within + [Result.BUSY]
        assert [a.fare_fen for a in answers] == [fare] * n_within + [0]
        pending = await fetch(r.b, "SELECT seq, amount_fen, state FROM standin_taps WHERE issuer = 'HZ' ORDER BY seq")
        assert pending == [(2 + k, fare, "pending") for k in range(n_within)]
        assert desk.standin.risk("HZ").pending_fen == n_within * fare
        metrics = r.b.platform.metrics.registry
        assert metrics.get_sample_value("citycard_standin_taps_total", {"issuer": "HZ"}) == n_within
        assert metrics.get_sample_value("citycard_standin_risk_fen", {"issuer": "HZ"}) == n_within * fare
        assert metrics.get_sample_value("citycard_link_up", {"issuer": "HZ"}) == 0
        # the terminal did not hear an approval and retries it: the same approval, counted once
        retry = await client.tap(2, card, now_ms() - 60_000, int(TapKind.BUS), route=ROUTE)
        assert (retry.code, retry.replay) == (Result.OK, True)
        assert desk.standin.risk("HZ").approved_count == n_within
        # a card A never issued, within the limit: B takes the risk; A will decline it
        stranger = await client.tap(3 + n_within, STRANGER, now_ms() - 30_000, int(TapKind.BUS), route=ROUTE)
        assert (stranger.code, stranger.fare_fen) == (Result.OK, fare)

        # 3. A is back: B's advice is decided in A's journal, B's stand-in taps are confirmed
        await r.a.platform.region.server.start()

        async def decided() -> bool:
            rows = await fetch(r.b, "SELECT count(*) FROM standin_taps WHERE state = 'pending'")
            return bool(rows[0][0] == 0)

        await until(decided)
        states = await fetch(r.b, "SELECT seq, state, code FROM standin_taps ORDER BY seq")
        assert states == [(2 + k, "confirmed", Result.OK) for k in range(n_within)] + [
            (3 + n_within, "declined", Result.CARD_UNKNOWN)]
        risk = desk.standin.risk("HZ")
        assert (risk.approved_fen, risk.pending_fen, risk.declined_fen) == ((n_within + 1) * fare, 0, fare)
        assert metrics.get_sample_value("citycard_standin_declined_fen_total", {"issuer": "HZ"}) == fare
        a_rows = await fetch(r.a, "SELECT seq, result, amount_fen FROM journal WHERE terminal_id = $1 ORDER BY seq",
                             shard_tid)
        assert a_rows == [(1, Result.OK, fare)] + [(2 + k, Result.OK, fare) for k in range(n_within)] + [
            (3 + n_within, Result.CARD_UNKNOWN, 0)]
        assert desk.standin.risk("HZ").pending_fen == 0
        assert metrics.get_sample_value("citycard_standin_risk_fen", {"issuer": "HZ"}) == 0
        assert metrics.get_sample_value("citycard_link_up", {"issuer": "HZ"}) == 1
        # the refused tap is retried now that A is back: A decides it, online
        late = await client.tap(2 + n_within, card, now_ms() - 60_000 + n_within * 1000, int(TapKind.BUS),
                                route=ROUTE)
        assert (late.code, late.balance_fen) == (Result.OK, opening - (n_within + 2) * fare)
        await client.close()

    runner.run(scenario())


def test_card_unknown_to_its_issuer_is_refused_by_the_issuer(region) -> None:  # noqa: ANN001
    runner, r = region

    async def scenario() -> None:
        client = await r.b.client(r.b.terminals[1].terminal_id)
        ans = await client.tap(1, STRANGER, now_ms(), int(TapKind.BUS), route=ROUTE)
        assert ans.code == Result.CARD_UNKNOWN
        log = await fetch(r.b, "SELECT result FROM remote_taps WHERE terminal_id = $1", client.terminal_id)
        assert log == [(Result.CARD_UNKNOWN,)]
        await client.close()

    runner.run(scenario())


async def _value(v: object) -> bool:
    return bool(await v) if asyncio.iscoroutine(v) else bool(v)


def test_issuer_too_slow_the_acquirer_stands_in_and_the_advice_replays_the_first_decision(region) -> None:  # noqa: ANN001
    """A decides the tap but answers after B's timeout: B stands in; its advice, sent while the
    link is up, has the same key, so A answers with that first decision and charges once."""
    runner, r = region

    async def scenario() -> None:
        server = r.a.platform.region.server
        card = plain_cards(r.a)[1]
        opening = opening_of(r.a, card)
        client = await r.b.client(r.b.terminals[2].terminal_id)
        tid = client.terminal_id
        fast = server._decide

        async def slow(taps):  # noqa: ANN001, ANN202
            outcomes = await fast(taps)  # decided and durable at A ...
            await asyncio.sleep(0.8)  # ... but answered after B's 500 ms
            return outcomes

        server._decide = slow
        try:
            ans = await client.tap(1, card, now_ms(), int(TapKind.BUS), route=ROUTE)
            assert (ans.code, ans.balance_fen) == (Result.OK, -1)  # stand-in: A's balance unknown here

            async def decided() -> bool:
                rows = await fetch(r.b, "SELECT state FROM standin_taps WHERE terminal_id = $1 AND seq = 1", tid)
                return rows == [("confirmed",)]

            await until(decided)
        finally:
            server._decide = fast
        slot = (await fetch(r.a, "SELECT slot FROM interop_acquirers WHERE code = 'SH'"))[0][0]
        rows = await fetch(r.a, "SELECT seq, result, amount_fen, balance_after_fen FROM journal WHERE terminal_id = $1",
                           remote_terminal_id(slot, tid))
        assert rows == [(1, Result.OK, ans.fare_fen, opening - ans.fare_fen)]  # once, though asked twice
        assert await fetch(r.b, "SELECT count(*) FROM remote_taps WHERE terminal_id = $1", tid) == [(0,)]
        # the key is settled at B for good: a retry is that approval again, never asked online
        # (before: B forgot it, asked A, and logged it in remote_taps too: two clearing records)
        again = await client.tap(1, card, now_ms(), int(TapKind.BUS), route=ROUTE)
        assert (again.code, again.fare_fen, again.replay) == (Result.OK, ans.fare_fen, True)
        assert await fetch(r.b, "SELECT count(*) FROM remote_taps WHERE terminal_id = $1", tid) == [(0,)]
        await client.close()

    runner.run(scenario())


async def _slot_of_b(r: Region) -> int:
    return int((await fetch(r.a, "SELECT slot FROM interop_acquirers WHERE code = 'SH'"))[0][0])


async def _void_state(r: Region, tid: int, seq: int) -> list[tuple]:
    return await fetch(r.b, "SELECT state, refused_code, code FROM standin_taps WHERE terminal_id = $1 AND seq = $2",
                       tid, seq)


def test_a_charge_answered_too_late_for_a_refused_tap_is_reversed_by_void_advice(region) -> None:  # noqa: ANN001
    """A charges the tap but answers after B's timeout; B's stand-in refuses it (A suspended):
    the terminal hears no, so B records a void, and its advice makes A credit the charge back."""
    runner, r = region

    async def scenario() -> None:
        server, desk = r.a.platform.region.server, r.b.platform.region.desk
        card = plain_cards(r.a)[2]
        opening = opening_of(r.a, card)
        client = await r.b.client(r.b.terminals[3].terminal_id)
        tid = client.terminal_id
        fast = server._decide

        async def slow(taps):  # noqa: ANN001, ANN202
            outcomes = await fast(taps)  # charged and durable at A ...
            # ... the card reported lost at A since (its money must come back all the same) ...
            lost = await r.a.platform.shard_client.apply_op(SetStatus(f"lost:{card}", card, int(CardStatus.BLOCKED)))
            assert lost.result == Result.OK
            await asyncio.sleep(0.8)  # ... answered after B's 500 ms
            return outcomes

        server._decide = slow
        desk.set_suspended(["HZ"])  # no stand-in for A's cards
        try:
            ans = await client.tap(1, card, now_ms(), int(TapKind.BUS), route=ROUTE)
            assert (ans.code, ans.fare_fen) == (Result.ISSUER_NOT_ACCEPTED, 0)  # the terminal was refused

            async def resolved() -> bool:
                return (await _void_state(r, tid, 1))[0][0] != "pending"

            await until(resolved)
        finally:
            server._decide = fast
            desk.set_suspended([])
        assert await _void_state(r, tid, 1) == [("reversed", Result.ISSUER_NOT_ACCEPTED, Result.OK)]
        rows = await fetch(r.a, "SELECT seq, result, amount_fen FROM journal WHERE terminal_id = $1",
                           remote_terminal_id(await _slot_of_b(r), tid))
        fare = rows[0][2]
        assert fare > 0 and rows == [(1, Result.OK, fare)]  # the charge, once
        credits = await fetch(r.a, "SELECT kind, result, amount_fen FROM journal WHERE card_no = $1 AND op_key LIKE"
                              " 'linkrev:%'", card)
        assert credits == [(int(OpKind.CREDIT), Result.OK, -fare)]  # ... credited back, once, the card blocked
        unblock = await r.a.platform.shard_client.apply_op(SetStatus(f"found:{card}", card, int(CardStatus.ACTIVE)))
        assert unblock.result == Result.OK
        # the retry is answered from B's store, never asked again; A's balance is whole again
        again = await client.tap(1, card, now_ms(), int(TapKind.BUS), route=ROUTE)
        assert (again.code, again.replay) == (Result.ISSUER_NOT_ACCEPTED, True)
        fresh = await client.tap(2, card, now_ms(), int(TapKind.BUS), route=ROUTE)
        assert (fresh.code, fresh.balance_fen) == (Result.OK, opening - fresh.fare_fen)
        assert await fetch(r.b, "SELECT count(*) FROM remote_taps WHERE terminal_id = $1 AND seq = 1", tid) == [(0,)]
        await client.close()

    runner.run(scenario())


def test_an_issuer_error_on_a_tap_is_heard_at_once_and_its_key_is_voided(region) -> None:  # noqa: ANN001
    """A fails on the tap (its error names the key: B stops waiting at once, well before its
    timeout); B's stand-in refuses; the void advice makes A hold the key refused, so a late
    copy of the tap can never charge."""
    runner, r = region

    async def scenario() -> None:
        server, desk = r.a.platform.region.server, r.b.platform.region.desk
        card = plain_cards(r.a)[3]
        client = await r.b.client(r.b.terminals[4].terminal_id)
        tid = client.terminal_id
        fast = server._decide
        failing = [True]

        async def broken(taps):  # noqa: ANN001, ANN202
            if failing[0]:
                raise OSError("store down")
            return await fast(taps)

        server._decide = broken
        desk.set_suspended(["HZ"])
        try:
            started = time.monotonic()
            ans = await client.tap(1, card, now_ms(), int(TapKind.BUS), route=ROUTE)
            took_s = time.monotonic() - started
            assert ans.code == Result.ISSUER_NOT_ACCEPTED
            assert took_s < 0.4  # the 500 ms timeout was not waited out
            assert (await _void_state(r, tid, 1))[0][:2] == ("pending", Result.ISSUER_NOT_ACCEPTED)
            failing[0] = False  # A is well again: the advice goes through

            async def resolved() -> bool:
                return (await _void_state(r, tid, 1))[0][0] != "pending"

            await until(resolved)
        finally:
            server._decide = fast
            desk.set_suspended([])
        assert await _void_state(r, tid, 1) == [("voided", Result.ISSUER_NOT_ACCEPTED, Result.CARD_BLOCKED)]
        shard_tid = remote_terminal_id(await _slot_of_b(r), tid)
        assert await fetch(r.a, "SELECT seq, result, amount_fen FROM journal WHERE terminal_id = $1", shard_tid) == [
            (1, Result.CARD_BLOCKED, 0)]
        # a late copy of the tap reaching A now is that refusal again: it can never charge
        [late] = await fast([server._shard_tap(await _slot_of_b(r), tid, 1, card, now_ms(), 200, ROUTE)])
        assert (late.result, late.fare_fen, late.replay) == (Result.CARD_BLOCKED, 0, True)
        await client.close()

    runner.run(scenario())
