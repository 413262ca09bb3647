"""Card replacement end to end (HTTP, Ray shards, gateway, Postgres, Redis): everything on the
old card moves to the new one exactly once, under concurrent retries, taps in flight and a
crash between steps, and no fen is created or lost."""

import asyncio
import time
from typing import Any

import pytest

from citycard.api.auth import Operator, Role
from citycard.cards import replacement as replace
from citycard.domain.cards import make_card_no
from citycard.domain.ops import Credit, TransferIn, TransferOut
from citycard.domain.purses import PURSE_NAMES, Purse
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.domain.views import CardView
from tests.support.city import ApiCity, api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")

DAY_MS = 86_400_000
CLERK = Operator("test-clerk", (Role.CLERK,))
DELTAS = "d_epurse + d_general + d_voucher + d_allowance + d_medical + d_deposit"


async def loaded_card(api: ApiCity, serial: int, tag: str) -> tuple[int, int]:
    """A card holding money in every purse, a deposit, both passes and several applications;
    returns (card_no, fen put on it)."""
    h = api.auth()
    holder = await api.new_holder(serial)
    r = await api.http.post(f"/holders/{holder['holder_id']}/cards", headers=h, json={
        "apps": {"library": True, "merchant_member": True, "medical": True, "insurance": "employee"},
        "credit_good": False})  # bad credit: the library borrow below holds a deposit
    assert r.status_code == 201, r.text
    card = int(r.json()["card_no"])
    assert (await api.top_up(card, 60_000, f"{tag}-e")).status_code == 200
    assert (await api.top_up(card, 30_000, f"{tag}-g", purse="general")).status_code == 200
    until_ms = int(time.time() * 1000) + 30 * DAY_MS
    ctx = api.city.platform.api.ctx
    outs = await ctx.run_ops([
        Credit(f"{tag}-v", card, int(Purse.VOUCHER), 2_000, until_ms, ("retail",)),
        Credit(f"{tag}-a", card, int(Purse.ALLOWANCE), 100_000, until_ms),
        Credit(f"{tag}-m", card, int(Purse.MEDICAL), 4_000),
    ])
    assert [o.result for o in outs] == [Result.OK] * 3
    for product in ("monthly_pass", "park_pass"):
        r = await api.http.put(f"/cards/{card}/products/{product}", headers=h, json={
            "valid_from": "2020-01-01T00:00:00+08:00", "valid_until": "2099-01-01T00:00:00+08:00"})
        assert r.status_code == 200, r.text
    client = await api.city.client(api.city.terminals[-1].terminal_id)
    try:  # a library borrow: 100 yuan deposit held out of the e-purse
        res = await client.tap(serial, card, int(time.time() * 1000), int(TapKind.LIBRARY), 1)
        assert res.code == Result.OK, res
    finally:
        await client.close()
    view = await ctx.card_view(card)
    assert view is not None and view.purses["deposit"] == 10_000, view
    return card, 60_000 + 30_000 + 2_000 + 100_000 + 4_000


async def journal(api: ApiCity, card_no: int) -> list[dict[str, Any]]:
    conn = await api.city.conn()
    try:
        rows = await conn.fetch(f"SELECT lsn, kind, result, op_key, {DELTAS} AS delta_fen, d_epurse, d_general,"
                                " d_voucher, d_allowance, d_medical, d_deposit"
                                " FROM journal WHERE card_no = $1 ORDER BY lsn", card_no)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def charged_fen(rows: list[dict[str, Any]]) -> int:
    """Money that left the card's purses through taps (deposits stay on the card)."""
    return -sum(r["delta_fen"] for r in rows if r["kind"] < 100 and r["result"] == Result.OK)


async def tapper(api: ApiCity, terminal_id: int, card: int, stop: asyncio.Event,
                 log: list[tuple[int, int, int, int]]) -> None:
    """Bus taps on ``card`` until ``stop``: distinct seqs, 40 s apart (no anti-passback)."""
    client = await api.city.client(terminal_id)
    base_ms = int(time.time() * 1000)
    try:
        seq = 0
        while not stop.is_set():
            seq += 1
            res = await client.tap(seq, card, base_ms + seq * 40_000, int(TapKind.BUS), 12)
            log.append((terminal_id, seq, res.code, res.fare_fen))
            await asyncio.sleep(0.003)
    finally:
        await client.close()


async def post_replace(api: ApiCity, card: int, reason: str = "lost on bus 12") -> Any:
    return await api.http.post(f"/cards/{card}/replace", headers=api.auth(), json={"reason": reason})


def purses(view: CardView | None) -> dict[str, int]:
    assert view is not None
    return dict(view.purses)


def test_replace_moves_everything_once_under_taps_and_concurrent_retries(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, n_terminals=6) as api:
            ctx = api.city.platform.api.ctx
            old, put_fen = await loaded_card(api, 11, "load")
            before = (await api.http.get(f"/cards/{old}", headers=api.auth())).json()

            stop = asyncio.Event()
            log: list[tuple[int, int, int, int]] = []
            tappers = [asyncio.create_task(tapper(api, t.terminal_id, old, stop, log))
                       for t in api.city.terminals[:4]]
            await asyncio.sleep(0.3)  # taps are flowing
            answers = await asyncio.gather(*(post_replace(api, old) for _ in range(5)))
            replaced_at = time.perf_counter()
            await asyncio.sleep(1.2)  # taps keep coming while the hotlist spreads
            stop.set()
            await asyncio.gather(*tappers)
            for r in answers:
                assert r.status_code == 201, r.text
            new = answers[0].json()["card_no"]
            assert {r.json()["card_no"] for r in answers} == {new} and new != old
            print(f"\n{len(log)} taps on the old card, {sum(1 for x in log if x[2] == Result.OK)} charged;"
                  f" taps for {time.perf_counter() - replaced_at:.2f} s after the replacement")

            # exactly one new card, for the same holder; the replacement is done
            conn = await api.city.conn()
            try:
                holder_cards = await conn.fetch("SELECT card_no, status FROM cards WHERE holder_id = $1"
                                                " ORDER BY issued_at", before["holder_id"])
                reps = await conn.fetch("SELECT old_card_no, new_card_no, state, moved FROM replacements")
                listed = await conn.fetchval("SELECT reason FROM hotlist WHERE card_no = $1", old)
            finally:
                await conn.close()
            assert [tuple(r) for r in holder_cards] == [(old, 2), (new, 0)]
            assert [tuple(r) for r in reps] == [(old, new, "done", None)]
            assert listed == f"replaced by {new}"
            assert old in api.city.platform.hotlist.cards

            # the new card holds exactly what the old held at the transfer, deposit as e-purse
            old_rows, new_rows = await journal(api, old), await journal(api, new)
            [out] = [r for r in old_rows if r["op_key"] and r["op_key"].startswith("replace:")]
            assert out["op_key"] == f"replace:{old}:out" and out["result"] == Result.OK
            at_transfer = {n: -out[f"d_{n}"] for n in PURSE_NAMES}
            expected = {**at_transfer, "epurse": at_transfer["epurse"] + at_transfer["deposit"], "deposit": 0}
            [into] = [r for r in new_rows if r["op_key"] and r["op_key"].startswith("replace:")]
            assert into["op_key"] == f"replace:{old}:in" and into["result"] == Result.OK
            new_view = await ctx.card_view(new)
            assert purses(new_view) == expected
            assert all(v > 0 for k, v in expected.items() if k != "deposit"), expected
            old_view = await ctx.card_view(old)
            assert old_view is not None and old_view.status == 2 and old_view.total_fen == 0
            got = answers[0].json()
            for field in ("apps", "category", "monthly_pass", "park_pass", "voucher_categories",
                          "voucher_until_ms", "allowance_until_ms", "credit_good"):
                assert got[field] == before[field], field
            assert got["holder_id"] == before["holder_id"] and got["status"] == "active"

            # taps: every charge came before the transfer in the shard's order; none after it
            taps = [r for r in old_rows if r["kind"] < 100]
            charged = [r for r in taps if r["result"] == Result.OK]
            assert all(r["lsn"] < out["lsn"] for r in charged)
            after = [r for r in taps if r["lsn"] > out["lsn"]]
            assert after and all(r["result"] in (Result.CARD_CANCELLED, Result.CARD_BLOCKED)
                                 and r["delta_fen"] == 0 for r in after)
            answered_ok = [x for x in log if x[2] == Result.OK]
            assert len(answered_ok) == len(charged) - 1  # the library borrow was not a bus tap
            assert sum(x[3] for x in answered_ok) == charged_fen(old_rows)
            assert all(x[3] == 0 for x in log if x[2] != Result.OK)
            assert log[-1][2] in (Result.CARD_CANCELLED, Result.CARD_BLOCKED)

            # money conserved to the fen: both cards + fares charged = what was put on
            total = sum(purses(old_view).values()) + sum(purses(new_view).values())
            assert total + charged_fen(old_rows) + charged_fen(new_rows) == put_fen

            # later: the old card refused at the gateway, the new one rides; a retry changes nothing
            client = await api.city.client(api.city.terminals[4].terminal_id)
            try:
                now_ms = int(time.time() * 1000)
                res = await client.tap(1, old, now_ms, int(TapKind.BUS), 12)
                assert res.code == Result.CARD_BLOCKED and res.fare_fen == 0, res
                res = await client.tap(2, new, now_ms + 40_000, int(TapKind.BUS), 12)
                assert res.code == Result.OK and res.fare_fen == 100, res  # monthly pass: 50 %
            finally:
                await client.close()
            again = await post_replace(api, old, "asked again")
            assert again.status_code == 201 and again.json()["card_no"] == new, again.text
            assert len([r for r in await journal(api, new) if r["op_key"]]) == 1

            entries = (await api.http.get(f"/audit?subject=card:{old}", headers=api.auth("auditor"))).json()
            [entry] = [e for e in entries if e["action"] == "card.replace"]
            assert entry["before"]["purses"] == expected and entry["after"]["new_card_no"] == new
            entries = (await api.http.get(f"/audit?subject=card:{new}", headers=api.auth("auditor"))).json()
            assert [e["action"] for e in entries] == ["card.issue"]

    asyncio.run(scenario())


def test_a_replacement_stopped_between_steps_completes_exactly_once(configured_services, schema):
    """A crash after each step is simulated by running the steps (or their ops) directly;
    POST replace then finishes each one, moving the money once."""

    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            ctx = api.city.platform.api.ctx
            cards = {}
            for serial, name in enumerate(("started", "out_applied", "moved_out", "in_applied"), 21):
                old, put_fen = await loaded_card(api, serial, name)
                cards[name] = (old, put_fen, purses(await ctx.card_view(old)))

            reps = {name: await replace.start(ctx.services, CLERK, old, "damaged") for name, (old, _, _) in cards.items()}
            for name in ("out_applied", "moved_out", "in_applied"):  # the op ran; the row never heard
                rep = reps[name]
                out = await ctx.run_op(TransferOut(replace.step_key(rep.old_card_no, "out"), rep.old_card_no,
                                                   rep.new_card_no))
                assert out.result == Result.OK
            for name in ("moved_out", "in_applied"):
                await replace.move_out(ctx.services, reps[name])  # a replay: stores moved
            rep = reps["in_applied"]
            stored = await replace.find(ctx.pool, rep.old_card_no)
            assert stored is not None and stored.state == "moved_out" and stored.moved is not None
            into = await ctx.run_op(TransferIn(replace.step_key(rep.old_card_no, "in"), rep.new_card_no,
                                               rep.old_card_no, stored.moved))
            assert into.result == Result.OK and not into.replay

            for name, (old, _, held) in cards.items():
                r = await post_replace(api, old)
                assert r.status_code == 201, (name, r.text)
                new = r.json()["card_no"]
                assert new == reps[name].new_card_no
                expected = {**held, "epurse": held["epurse"] + held["deposit"], "deposit": 0}
                assert r.json()["purses"] == expected, name
                rows = [x for x in await journal(api, new) if x["op_key"]]
                assert [(x["op_key"], x["result"]) for x in rows] == [(f"replace:{old}:in", Result.OK)], name
                old_view = await ctx.card_view(old)
                assert old_view is not None and old_view.total_fen == 0
                stored = await replace.find(ctx.pool, old)
                assert stored is not None and stored.state == "done", name
                r = await post_replace(api, old)  # and again: nothing moves
                assert r.status_code == 201 and r.json()["purses"] == expected, name

    asyncio.run(scenario())


def test_replace_refuses_without_writing_anything(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            ctx = api.city.platform.api.ctx

            async def state() -> tuple[int, int, int]:
                conn = await api.city.conn()
                try:
                    return (await conn.fetchval("SELECT count(*) FROM cards"),
                            await conn.fetchval("SELECT count(*) FROM replacements"),
                            await conn.fetchval("SELECT count(*) FROM hotlist"))
                finally:
                    await conn.close()

            assert (await post_replace(api, make_card_no(4_999_999_999))).status_code == 404
            assert (await post_replace(api, make_card_no(1) + 1)).status_code == 422  # check digit
            seeded = api.city.cards[0][0]
            r = await api.http.post(f"/cards/{seeded}/replace", headers=api.auth("read_only"), json={"reason": "x"})
            assert r.status_code == 403
            r = await api.http.post(f"/cards/{seeded}/replace", headers=h, json={})
            assert r.status_code == 422 and r.json()["field"] == "reason", r.text
            start = await state()
            r = await post_replace(api, seeded)  # a bulk-loaded card: no cardholder
            assert r.status_code == 409 and "cardholder" in r.json()["error"], r.text
            assert await state() == start

            cancelled = await api.new_card(31)
            r = await api.http.post(f"/cards/{cancelled}/cancel", headers=h, json={"reason": "moved away",
                                                                                    "idempotency_key": "c"})
            assert r.status_code == 200, r.text
            start = await state()
            r = await post_replace(api, cancelled)
            assert r.status_code == 409 and r.json()["result"] == "CARD_CANCELLED", r.text
            assert await state() == start

            biker = await api.new_card(32)
            parker = await api.new_card(33)
            assert (await api.top_up(parker, 5_000, "p")).status_code == 200
            client = await api.city.client()
            try:
                now_ms = int(time.time() * 1000)
                assert (await client.tap(1, biker, now_ms, int(TapKind.BIKE_RENT), 3)).code == Result.OK
                assert (await client.tap(2, parker, now_ms, int(TapKind.PARKING_ENTRY), 7)).code == Result.OK
                start = await state()
                r = await post_replace(api, biker)
                assert r.status_code == 409 and r.json()["result"] == "RENTAL_OPEN", r.text
                r = await post_replace(api, parker)
                assert r.status_code == 409 and r.json()["result"] == "PARKING_SESSION_OPEN", r.text
                assert await state() == start  # nothing half-written

                # A rental opened after the checks (simulated: step 1 ran, then the bike went out):
                # the move out is refused, nothing is hotlisted; once the bike is back, a retry
                # finishes on a fresh key.
                assert (await client.tap(3, biker, now_ms + 600_000, int(TapKind.BIKE_RETURN), 3)).code == Result.OK
                rep = await replace.start(ctx.services, CLERK, biker, "worn out")
                assert (await client.tap(4, biker, now_ms + 700_000, int(TapKind.BIKE_RENT), 3)).code == Result.OK
                for _ in range(2):  # the second answer comes from the remembered refusal
                    r = await post_replace(api, biker)
                    assert r.status_code == 409 and r.json()["result"] == "RENTAL_OPEN", r.text
                conn = await api.city.conn()
                try:
                    assert await conn.fetchval("SELECT count(*) FROM hotlist WHERE card_no = $1", biker) == 0
                finally:
                    await conn.close()
                assert (await client.tap(5, biker, now_ms + 800_000, int(TapKind.BIKE_RETURN), 3)).code == Result.OK
                r = await post_replace(api, biker)
                assert r.status_code == 201 and r.json()["card_no"] == rep.new_card_no, r.text
                keys = [x["op_key"] for x in await journal(api, biker) if x["op_key"]
                        and x["op_key"].startswith("replace:")]
                assert keys == [f"replace:{biker}:out", f"replace:{biker}:out:1"]
            finally:
                await client.close()

            # A card still receiving a replacement cannot itself be replaced yet.
            first = await api.new_card(34)
            rep = await replace.start(ctx.services, CLERK, first, "lost")
            r = await post_replace(api, rep.new_card_no)
            assert r.status_code == 409 and r.json()["replacing"] == first, r.text
            assert (await post_replace(api, first)).status_code == 201
            r = await post_replace(api, rep.new_card_no)
            assert r.status_code == 201, r.text

    asyncio.run(scenario())
