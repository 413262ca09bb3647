"""Issue 16, the protocol holes, on a real gateway over real TCP (Postgres, Redis, Ray):
a tap whose map repeats a key is refused and charged nothing; a read that ends in a closing
error still gets every answer and the error frame, in order, and nothing escapes the
gateway's callbacks; a (terminal, seq) reused for a card of another shard is decided once;
the terminal's totals do not count DUPLICATE_SEQ and see a gap inside one reporting round."""

import asyncio
import logging
import time
from typing import Any

import msgpack
import pytest

from citycard.domain.results import Result
from citycard.domain.shard import session_shard_of, shard_of
from citycard.domain.taps import TapKind
from citycard.persistence import terminals
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.codes import ErrorCode
from citycard.protocols.frames import encode_frame
from tests.support.city import City, journal_rows, plain_cards, running_city
from tests.support.terminal import RawConn, ride

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _body(*pairs: tuple[str, Any]) -> bytes:
    """A map with the pairs as given, a repeated key included (no encoder writes one)."""
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)


def _tap_pairs(seq: int, card: int) -> list[tuple[str, Any]]:
    return [("t", "tap"), ("seq", seq), ("card", card), ("time_ms", int(time.time() * 1000) + seq * 40_000),
            ("kind", int(TapKind.BUS)), ("route", 12)]


async def _raw(city: City, terminal_id: int) -> RawConn:
    conn = await RawConn.authenticated(city.port, terminal_id, terminal_key(city.settings.city.master_key, terminal_id))
    conn._client = None  # from here on raw frames: the client connection would track nothing
    return conn


async def _until_eof(conn: RawConn, limit: int = 40) -> list[dict[str, Any]]:
    frames = []
    for _ in range(limit):
        msg = await conn.read(10.0)
        if msg is None:
            break
        frames.append(msg)
    assert conn.closed, f"no EOF after {frames}"
    return frames


class _LoopErrors:
    """What the event loop's exception handler was given (an exception escaping a callback)."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []
        self.loop = asyncio.get_running_loop()
        self._before = self.loop.get_exception_handler()
        self.loop.set_exception_handler(lambda _loop, ctx: self.contexts.append(ctx))

    def close(self) -> None:
        self.loop.set_exception_handler(self._before)


def test_a_read_ending_in_a_closing_error_gets_every_answer_in_order(configured_services, schema, caplog):
    """Issue 16: a ping (or hello, or taps) followed in the same read by errors that close the
    connection lost every answer, the error frame too, and raised in the gateway's callback."""
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        errors = _LoopErrors()
        try:
            async with running_city(configured_services, schema) as city:
                tid = city.terminals[0].terminal_id
                card = plain_cards(city)[0]
                garbage = encode_frame(b"\xc1")  # never valid MessagePack: BAD_MESSAGE, counted
                tap = encode_frame(m.encoder.encode(m.Tap(seq=1, card=card, time_ms=int(time.time() * 1000),
                                                          kind=int(TapKind.BUS), route=12)))

                # ping, a tap, then 11 bad messages: the 11th closes (TOO_MANY_ERRORS)
                conn = await _raw(city, tid)
                await conn.send(encode_frame(m.encoder.encode(m.Ping(time_ms=5))) + tap + garbage * 11)
                frames = await _until_eof(conn)
                kinds = [(f["t"], f.get("code")) for f in frames]
                assert kinds[0] == ("pong", None)
                assert kinds[1:11] == [("error", ErrorCode.BAD_MESSAGE)] * 10
                assert kinds[11] == ("result", Result.OK) and frames[11]["seq"] == 1
                assert kinds[12:] == [("error", ErrorCode.TOO_MANY_ERRORS)]
                await conn.close()

                # a tap, then a frame header over the limit: its result, then FRAME_TOO_LARGE
                conn = await _raw(city, tid)
                tap2 = encode_frame(m.encoder.encode(m.Tap(seq=2, card=card, time_ms=int(time.time() * 1000) + 60_000,
                                                           kind=int(TapKind.BUS), route=12)))
                await conn.send(tap2 + (10**9).to_bytes(4, "big"))
                frames = await _until_eof(conn)
                assert [(f["t"], f.get("seq"), f.get("code")) for f in frames] == [
                    ("result", 2, Result.OK), ("error", 0, ErrorCode.FRAME_TOO_LARGE)]
                await conn.close()

                # before authentication: hello then a zero-length frame: challenge, then BAD_FRAME
                conn = await RawConn.open(city.port)
                hello = encode_frame(m.encoder.encode(m.Hello(terminal_id=tid, nonce=b"\x05" * 16)))
                await conn.send(hello + b"\x00\x00\x00\x00")
                frames = await _until_eof(conn)
                assert [(f["t"], f.get("code")) for f in frames] == [("challenge", None),
                                                                      ("error", ErrorCode.BAD_FRAME)]
                await conn.close()

                # before authentication, a ping with 5 as a uint 32 (non-canonical) and an unknown
                # "taps" that is no list of maps (review finding: dropped with no frame, logged)
                conn = await RawConn.open(city.port)
                ping = _body(("t", "ping"), ("time_ms", 1), ("taps", [1])).replace(b"\x01", b"\xce\x00\x00\x00\x01", 1)
                await conn.send(encode_frame(ping) + hello)
                frames = [await conn.read(10.0), await conn.read(10.0)]
                assert [(f["t"], f.get("code")) for f in frames if f is not None] == [
                    ("error", ErrorCode.NOT_AUTHENTICATED), ("challenge", None)]
                await conn.close()
                assert [(r[0], r[2]) for r in await journal_rows(city, tid)] == [(1, 0), (2, 0)]
        finally:
            errors.close()
        assert errors.contexts == [], errors.contexts

    asyncio.run(scenario())
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert tracebacks == []


def test_a_tap_repeating_a_key_is_refused_and_not_charged(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            tid = city.terminals[0].terminal_id
            a, b = plain_cards(city)[:2]
            conn = await _raw(city, tid)
            await conn.send(encode_frame(_body(*_tap_pairs(7, a), ("card", b))))
            err = await conn.read(5.0)
            assert err is not None and (err["t"], err["code"], err["seq"]) == ("error", ErrorCode.BAD_MESSAGE, 7)
            await conn.send(encode_frame(_body(*_tap_pairs(8, a), ("seq", 9))))
            err = await conn.read(5.0)
            assert err is not None and (err["code"], err["seq"]) == (ErrorCode.BAD_MESSAGE, 0)
            await conn.close()
            client = await city.client(tid)
            assert (await ride(client, 7, a)).code == Result.OK  # the seq was never decided
            await client.close()
            assert [(r[0], r[1]) for r in await journal_rows(city, tid)] == [(7, a)]

    asyncio.run(scenario())


def test_a_seq_reused_for_a_card_of_another_shard_is_decided_once(configured_services, schema):
    """Issue 16: the same (terminal, seq) for two cards on different shards was charged twice."""
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            n = city.settings.city.account_shards
            cards = plain_cards(city)
            a = cards[0]
            b = next(c for c in cards if shard_of(c, n) != shard_of(a, n))
            c2 = next(c for c in cards if shard_of(c, n) != shard_of(a, n) and c != b)
            tid = city.terminals[1].terminal_id
            client = await city.client(tid)
            first = await ride(client, 1, a)
            assert first.code == Result.OK
            second = await ride(client, 1, b)
            assert (second.code, second.fare_fen) == (Result.DUPLICATE_SEQ, 0)
            again = await ride(client, 1, a)  # a retry of the first: its outcome, once
            assert (again.code, again.replay, again.fare_fen) == (Result.OK, True, first.fare_fen)
            # in one batch (by hand: the product's client refuses to send it): the second card refused
            now = int(time.time() * 1000)
            raw = await _raw(city, tid)
            items = [m.TapItem(seq=2, card=card, time_ms=now + 200_000, kind=int(TapKind.BUS), route=12)
                     for card in (a, c2)]
            await raw.send(encode_frame(m.encoder.encode(m.TapBatch(req=3, taps=items))))
            res = await raw.read(10.0)
            assert res is not None and [r["code"] for r in res["results"]] == [Result.OK, Result.DUPLICATE_SEQ]
            await raw.close()
            # a seq skipped inside one round, reported with the rest
            assert (await ride(client, 4, a)).code == Result.OK
            await client.close()
            rows = await journal_rows(city, tid)
            assert [(r[0], r[1]) for r in rows] == [(1, a), (2, a), (4, a)]
            await city.platform.reporter.flush()
            sessions = city.platform.sessions
            totals = await sessions[session_shard_of(tid, len(sessions))].totals.remote(tid)
            assert (totals["taps"], totals["last_seq"], totals["seq_gaps"]) == (3, 4, 1)
            assert totals["charged_fen"] == sum(r[3] for r in rows)
            conn = await city.conn()
            try:
                exact = await terminals.journal_totals(conn, tid)  # `terminal show --exact`
            finally:
                await conn.close()
            assert (exact["journal_taps"], exact["journal_seq_gaps"]) == (3, 1)

    asyncio.run(scenario())
