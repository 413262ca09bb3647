"""Hotlist deltas in params_info: the terminal's side of the rules in docs/protocol.md 11.1, the
bounds, and the gateway's sharing of answers (no services: a fake pool and a fake query)."""

import asyncio

import msgpack
import pytest

from citycard.domain.hotlist import Delta, net_changes
from citycard.gateway.hotlist import HotlistDeltas, max_hotlist_items
from citycard.protocols.connection import ParamsRequested, ServerConnection
from citycard.protocols.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from citycard.protocols.messages import (
    MAX_HOTLIST_ITEMS,
    Auth,
    AuthOk,
    Hello,
    Params,
    ParamsRequest,
    encoder,
    server_decoder,
)


class Terminal:
    """A terminal's hotlist, kept as section 11.1 says."""

    def __init__(self) -> None:
        self.cards: set[int] = set()
        self.version = 0

    def apply(self, p: Params) -> bool:
        """Apply one params_info; True: ask again now."""
        if p.hotlist_to == 0 and not p.hotlist_reset:
            return False  # no hotlist in this answer
        if p.hotlist_reset:
            self.cards.clear()
        self.cards |= set(p.hotlist_added)
        self.cards -= set(p.hotlist_removed)
        self.version = p.hotlist_to
        return p.hotlist_more


def test_net_changes_last_change_wins() -> None:
    rows = [(5, True), (6, True), (5, False), (7, False), (7, True), (8, False)]
    assert net_changes(rows) == ([6, 7], [5, 8])
    assert net_changes([]) == ([], [])


@pytest.mark.parametrize("frame_bytes", [1024, 4096, 65_536, DEFAULT_MAX_FRAME_BYTES, 16 * 1024 * 1024])
def test_an_answer_of_max_items_fits_the_frame_limit(frame_bytes: int) -> None:
    n = max_hotlist_items(frame_bytes)
    assert 1 <= n <= MAX_HOTLIST_ITEMS
    worst = Params(fare_version=2**63 - 1, hotlist_version=2**63 - 1, hotlist_to=2**63 - 1, hotlist_reset=True,
                   hotlist_added=[10**18 - 1] * (n - n // 2), hotlist_removed=[10**18 - 1] * (n // 2),
                   hotlist_more=True)
    frame = encode_frame(encoder.encode(worst))
    [body] = FrameDecoder(frame_bytes).feed(frame)  # a terminal with the same limit takes it
    assert server_decoder.decode(body) == worst


def test_params_request_carries_the_held_version_through_the_connection() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_frame(encoder.encode(Hello(terminal_id=7, nonce=bytes(16)))))
    conn.challenge(bytes(16), 0)
    conn.receive_data(encode_frame(encoder.encode(Auth(mac=bytes(32)))))
    conn.accept(AuthOk(fare_version=1, hotlist_version=9, max_batch=10, heartbeat_ms=1, server_time_ms=0))
    [event] = conn.receive_data(encode_frame(msgpack.packb({"t": "params", "hotlist_version": 4})))
    assert event == ParamsRequested(fare_version=0, hotlist_version=4)
    d = Delta(9, [11, 12], [13])
    out = conn.send(Params(fare_version=1, hotlist_version=9, hotlist_to=d.to_version,
                           hotlist_added=d.added, hotlist_removed=d.removed))
    [body] = FrameDecoder().feed(out)
    plain = msgpack.unpackb(body)
    assert plain["hotlist_added"] == [11, 12] and plain["hotlist_removed"] == [13] and plain["hotlist_to"] == 9
    t = Terminal()
    t.cards, t.version = {13, 14}, 4
    assert t.apply(server_decoder.decode(body)) is False
    assert (t.cards, t.version) == ({11, 12, 14}, 9)


def test_terminal_rules() -> None:
    t = Terminal()
    t.cards, t.version = {1, 2}, 5
    assert not t.apply(Params(fare_version=1, hotlist_version=6))  # no hotlist: keep what it holds
    assert (t.cards, t.version) == ({1, 2}, 5)
    assert t.apply(Params(fare_version=1, hotlist_version=9, hotlist_to=7, hotlist_reset=True,
                          hotlist_added=[3], hotlist_more=True))
    assert (t.cards, t.version) == ({3}, 7)
    assert not t.apply(Params(fare_version=1, hotlist_version=9, hotlist_to=9, hotlist_added=[4],
                              hotlist_removed=[3]))
    assert (t.cards, t.version) == ({4}, 9)
    assert not t.apply(Params(fare_version=1, hotlist_version=0, hotlist_to=0, hotlist_reset=True))
    assert (t.cards, t.version) == (set(), 0)  # the server's record is empty


def test_gateway_shares_answers_and_skips_the_query_when_current() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def fake_delta(from_version: int, max_items: int) -> Delta:
        calls.append(from_version)
        await gate.wait()
        return Delta(10, [from_version])

    now = [0.0]
    version = [10]

    async def run() -> None:
        deltas = HotlistDeltas(fake_delta, lambda: version[0], 100, max_queries=1, memo_s=1.0,
                               clock=lambda: now[0])
        assert await deltas(10) == Delta(10)  # current: no query at all
        waiting = [asyncio.ensure_future(deltas(9)) for _ in range(50)]  # a loss report: all ask at once
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(*waiting)
        assert answers == [Delta(10, [9])] * 50 and calls == [9]
        assert await deltas(9) == Delta(10, [9]) and calls == [9]  # memo
        now[0] = 1.5  # memo expired
        await deltas(9)
        assert calls == [9, 9]
        version[0] = 11  # the version moved: memo dropped
        await deltas(9)
        assert calls == [9, 9, 9]
        assert deltas.queries == 3

    asyncio.run(run())


def test_old_style_params_request_still_decodes() -> None:
    from citycard.protocols.messages import client_decoder

    assert client_decoder.decode(msgpack.packb({"t": "params", "fare_version": 2})) == ParamsRequest(fare_version=2)


def test_a_terminal_may_ask_for_the_fare_table_and_older_terminals_never_get_one() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_frame(encoder.encode(Hello(terminal_id=7, nonce=bytes(16)))))
    conn.challenge(bytes(16), 0)
    conn.receive_data(encode_frame(encoder.encode(Auth(mac=bytes(32)))))
    conn.accept(AuthOk(fare_version=3, hotlist_version=9, max_batch=10, heartbeat_ms=1, server_time_ms=0))
    [asked] = conn.receive_data(encode_frame(msgpack.packb({"t": "params", "fare_version": 2, "fares": True})))
    [old] = conn.receive_data(encode_frame(msgpack.packb({"t": "params", "fare_version": 2})))
    assert asked == ParamsRequested(fare_version=2, hotlist_version=0, fares=True)
    assert old == ParamsRequested(fare_version=2, hotlist_version=0, fares=False)
    [body] = FrameDecoder().feed(conn.send(Params(fare_version=3, hotlist_version=9, fare_table="city = 'x'\n")))
    plain = msgpack.unpackb(body)
    assert plain["fare_table"] == "city = 'x'\n" and plain["hotlist_to"] == 0  # no hotlist with a table
