"""End to end: a terminal on a real socket, through Ray actors, to Postgres and back."""

import asyncio
import os
import signal
import time
import urllib.request

import pytest

from citycard.domain.cards import Category
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.audit import run_audit
from citycard.protocols import messages as m
from tests.support.city import COL, City, actor_balances, journal_rows, running_city
from tests.support.clock import now_ms
from tests.support.waiting import until_available

pytestmark = pytest.mark.usefixtures("ray_cluster")


def bus(seq: int, card: int, route: int = 12) -> m.TapItem:
    return m.TapItem(seq=seq, card=card, time_ms=now_ms(), kind=int(TapKind.BUS), route=route)


def plain_fare_cards(city: City, shard_id: int = 0) -> list[tuple[int, int]]:
    """(card_no, e-purse opening) of one shard's adult cards with no monthly pass and no
    transport allowance: their bus rides cost the card fare, from the e-purse."""
    return [(c[COL["card_no"]], c[COL["opening_fen"]]) for c in city.cards
            if c[COL["shard_id"]] == shard_id and c[COL["category"]] == Category.ADULT
            and c[COL["monthly_pass_from"]] is None and c[COL["opening_allowance_fen"]] == 0]


def test_taps_are_durable_and_retries_are_not_charged_twice(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            client = await city.client()
            # two cards of one shard: a shard detects a seq reused by another of its cards
            (card, opening), (other, _) = plain_fare_cards(city)[:2]
            # a minute before the next ride on this bus: not within the anti-passback window
            single = await client.tap(1, card, now_ms() - 60_000, int(TapKind.BUS), route=7)
            assert (single.code, single.fare_fen, single.balance_fen, single.replay) == (
                Result.OK, 182, opening - 182, False)
            batch = await client.taps([bus(2, card), bus(3, other), bus(4, 999_999_999)])
            assert [r.code for r in batch.results] == [Result.OK, Result.OK, Result.CARD_UNKNOWN]
            assert batch.results[0].balance_fen == opening - 364
            # The terminal did not hear the answer and sends seq 2 again: first outcome, no debit.
            again = await client.taps([bus(2, card)])
            assert again.results[0].replay is True
            assert again.results[0].balance_fen == opening - 364
            # A different card on a used seq is refused.
            clash = await client.taps([bus(3, card)])
            assert clash.results[0].code == Result.DUPLICATE_SEQ
            rows = await journal_rows(city, client.terminal_id)
            assert [(r[0], r[2], r[3]) for r in rows] == [
                (1, Result.OK, 182), (2, Result.OK, 182), (3, Result.OK, 182), (4, Result.CARD_UNKNOWN, 0)]
            await client.close()

    asyncio.run(scenario())


def test_hotlisted_card_is_refused_at_the_gateway(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            client = await city.client()
            card = city.cards[5][0]
            paid = await client.tap(10, card, now_ms(), int(TapKind.BUS), route=3)
            assert paid.code == Result.OK
            await city.platform.hotlist_add(card, "reported lost")
            deadline = time.monotonic() + 1.0
            while card not in city.platform.hotlist.cards and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            r = await client.tap(11, card, now_ms(), int(TapKind.BUS), route=3)
            assert r.code == Result.CARD_BLOCKED and r.fare_fen == 0
            # A retry of the tap charged before the loss report gets its first outcome.
            retry = await client.tap(10, card, now_ms(), int(TapKind.BUS), route=3)
            assert (retry.code, retry.fare_fen, retry.replay) == (Result.OK, paid.fare_fen, True)
            await city.platform.hotlist_remove(card, "found")
            deadline = time.monotonic() + 1.0
            while card in city.platform.hotlist.cards and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # Accepted again (on another bus: on this one, within 30 s, it would be a passback).
            other_bus = await city.client(city.terminals[1].terminal_id)
            r = await other_bus.tap(12, card, now_ms(), int(TapKind.BUS), route=3)
            assert r.code == Result.OK
            await other_bus.close()
            await client.close()

    asyncio.run(scenario())


def test_account_shard_killed_mid_load_loses_and_doubles_nothing(configured_services, schema):
    """kill -9 of an AccountShard's process under load: Ray restarts it, it rebuilds from
    Postgres, the gateway retries; every answered tap is in Postgres exactly once."""

    async def scenario() -> None:
        async with running_city(configured_services, schema, n_cards=400, n_terminals=4,
                                city={"account_shards": 2}) as city:
            clients = [await city.client(t.terminal_id) for t in city.terminals]
            cards = [c[0] for c in city.cards]
            victim = city.platform.shards[0]
            pid = await victim.pid.remote()
            answered: dict[tuple[int, int], tuple[int, int, bool]] = {}
            stop_at = time.monotonic() + 30

            async def load(client, offset: int) -> None:
                seq = 0
                for round_no in range(40):
                    items = []
                    for i in range(25):
                        seq += 1
                        items.append(bus(seq, cards[(offset + round_no * 25 + i) % len(cards)]))
                    res = await client.taps(items)
                    for r in res.results:
                        if r.code != Result.RETRY:
                            answered[(client.terminal_id, r.seq)] = (r.code, r.fare_fen, r.replay)
                    if time.monotonic() > stop_at:
                        return

            async def killer() -> None:
                await asyncio.sleep(0.5)
                os.kill(pid, signal.SIGKILL)

            await asyncio.gather(killer(), *[load(c, i * 97) for i, c in enumerate(clients)])
            new_pid = await until_available(victim.pid.remote)
            assert new_pid != pid  # it really died and came back
            stats = await victim.stats.remote()
            assert stats["recoveries"] >= 1
            conn = await city.conn()
            try:
                rows = await conn.fetch("SELECT terminal_id, seq, result, amount_fen FROM journal")
                counts: dict[tuple[int, int], int] = {}
                for r in rows:
                    counts[(r[0], r[1])] = counts.get((r[0], r[1]), 0) + 1
                assert all(n == 1 for n in counts.values()), "a (terminal, seq) was written twice"
                by_key = {(r[0], r[1]): (r[2], r[3]) for r in rows}
                for key, (code, fare, _replay) in answered.items():
                    assert by_key.get(key) == (code, fare), f"answered tap {key} not durable as answered"
                audit = await run_audit(conn, await actor_balances(city))
            finally:
                await conn.close()
            assert audit.ok, audit
            assert len(answered) >= 3000
            for c in clients:
                await c.close()

    asyncio.run(scenario())


def test_metrics_endpoint_shows_taps(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            client = await city.client()
            await client.taps([bus(i, city.cards[i][0]) for i in range(1, 11)])
            url = f"http://127.0.0.1:{city.platform.metrics_port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            for name in ("citycard_taps_total", "citycard_tap_latency_seconds_bucket",
                         "citycard_shard_batch_taps_bucket", "citycard_commit_latency_seconds_bucket",
                         "citycard_shard_queue_taps", "citycard_connected_terminals"):
                assert name in body, name
            assert 'citycard_taps_total{kind="BUS",result="OK"} 10.0' in body
            assert "citycard_connected_terminals 1.0" in body
            await client.close()

    asyncio.run(scenario())


def test_overload_gets_busy_and_busy_taps_can_be_retried(configured_services, schema):
    """A full shard queue answers BUSY at once; nothing is charged for a BUSY tap, and the
    same seq sent again later is decided normally."""

    async def scenario() -> None:
        async with running_city(configured_services, schema, n_cards=1000,
                                gateway={"shard_queue_max_taps": 20, "shard_queue_pause_taps": 0,
                                         "shard_inflight_calls": 1,
                                         "shard_batch_max_taps": 10}) as city:
            client = await city.client()
            items = [bus(i + 1, city.cards[i][0]) for i in range(1000)]
            first = await client.taps(items)
            busy = [r.seq for r in first.results if r.code == Result.BUSY]
            done = {r.seq for r in first.results if r.code == Result.OK}
            assert busy and done and len(busy) + len(done) == 1000
            rows = {r[0] for r in await journal_rows(city, client.terminal_id)}
            assert rows == done  # BUSY taps left no row and charged nothing
            retry = await client.taps([items[s - 1] for s in busy[:15]])
            assert all(r.code == Result.OK and not r.replay for r in retry.results)
            assert city.platform.metrics.busy._value.get() == len(busy)
            await client.close()

    asyncio.run(scenario())
