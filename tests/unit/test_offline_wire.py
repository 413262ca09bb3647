"""Offline uploads on the wire (docs/protocol.md, section 15): the codec, the wire <-> domain
records, the batch MAC over wire items, the server and client connections, TerminalClient."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgpack
import msgspec
import pytest

from citycard.domain.epurse_crypto import When
from citycard.domain.offline import OfflineRecord, batch_key, batch_mac
from citycard.errors import LocalProtocolError
from citycard.protocols import messages as m
from citycard.protocols.client import ClientState, ErrorReceived, OfflineAnswered, Violation
from citycard.protocols.codes import ErrorCode, OfflineCode
from citycard.protocols.connection import OfflineReceived, ServerConnection
from citycard.protocols.frames import encode_frame
from citycard.protocols.offline import (
    item_of,
    items_mac,
    items_mac_ok,
    record_of,
    when_digits,
    when_of,
)
from citycard.terminal.client import ServerError, TerminalClient
from tests.support.protocol_pair import (
    BATCH_MASTER_KEY,
    MASTER_KEY,
    MODES,
    TERMINAL_ID,
    Pair,
    Server,
)

KEY = batch_key(BATCH_MASTER_KEY, TERMINAL_ID)
pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def served() -> AsyncIterator[int]:
    """A port where each connection is answered by a fresh in-memory ``Server`` shell."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = Server()
        try:
            while data := await reader.read(65536):
                writer.write(server.feed(data))
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            await scenario()

    asyncio.run(bounded())


def record(counter: int, card: int = 33_010_000_000_000_173) -> OfflineRecord:
    return OfflineRecord(card, counter, 200, 800 - 200 * counter, 0x06, TERMINAL_ID, 70 + counter,
                         When.of("20261206", "081500"), bytes([1, 2, 3, counter]), kind=1, route=12)


def test_items_round_trip_to_domain_records_and_through_msgpack() -> None:
    r = record(3)
    item = item_of(r)
    assert item.when == 20261206081500 and item.seq == 73 and item.counter == 3
    assert record_of(item, TERMINAL_ID) == r
    body = m.encoder.encode(m.OfflineUpload(req=5, batch_seq=9, records=[item], mac=bytes(32)))
    plain = msgpack.unpackb(body)
    assert plain["t"] == "offline" and plain["records"][0]["tac"] == bytes([1, 2, 3, 3])
    decoded = m.client_decoder.decode(body)
    assert isinstance(decoded, m.OfflineUpload) and decoded.records == [item]
    ack = m.server_decoder.decode(m.encoder.encode(m.OfflineAck(req=5, batch_seq=9, codes=[0, 1])))
    assert ack == m.OfflineAck(req=5, batch_seq=9, codes=[0, 1])


@pytest.mark.parametrize(("field", "value"), [("counter", 0x10000), ("tac", b"\x00" * 5), ("when", 2026),
                                              ("card", 0), ("type", 256), ("amount_fen", -1)])
def test_the_schema_refuses_a_field_out_of_range(field: str, value: object) -> None:
    raw = msgspec.to_builtins(item_of(record(1)))
    raw[field] = value
    body = msgpack.packb({"t": "offline", "req": 1, "batch_seq": 1, "records": [raw], "mac": bytes(32)})
    with pytest.raises(msgspec.ValidationError, match=field):
        m.client_decoder.decode(body)


def test_batch_bounds_are_in_the_schema() -> None:
    raw = msgspec.to_builtins(item_of(record(1)))
    for records in ([], [raw] * (m.MAX_OFFLINE_RECORDS + 1)):
        body = msgpack.packb({"t": "offline", "req": 1, "batch_seq": 1, "records": records, "mac": bytes(32)})
        with pytest.raises(msgspec.ValidationError):
            m.client_decoder.decode(body)


def test_when_digits_must_be_a_calendar_date() -> None:
    assert when_digits(when_of(20240229235959)) == 20240229235959
    with pytest.raises(ValueError, match="date"):
        when_of(20230229120000)
    with pytest.raises(ValueError, match="time"):
        when_of(20230228126000)


def test_the_mac_over_wire_items_is_the_domain_batch_mac() -> None:
    records = [record(i) for i in range(4)]
    items = [item_of(r) for r in records]
    mac = batch_mac(KEY, TERMINAL_ID, 7, records)
    assert items_mac(KEY, TERMINAL_ID, 7, items) == mac
    assert items_mac_ok(KEY, TERMINAL_ID, 7, items, mac)
    assert not items_mac_ok(KEY, TERMINAL_ID, 8, items, mac)  # batch_seq covered
    assert not items_mac_ok(KEY, TERMINAL_ID + 1, 7, items, mac)  # terminal covered
    swapped = [items[1], items[0], *items[2:]]
    assert not items_mac_ok(KEY, TERMINAL_ID, 7, swapped, mac)  # order covered
    # A record whose date is no calendar date still has a MAC: refused per record, not per batch.
    odd = msgspec.structs.replace(items[0], when=20231345000000)
    assert len(items_mac(KEY, TERMINAL_ID, 7, [odd])) == 32


@pytest.mark.parametrize("mode", MODES)
def test_an_upload_is_answered_by_its_ack(mode: str) -> None:
    pair = Pair(mode)
    pair.connect()
    client = pair.client
    records = [record(i) for i in range(3)]
    items = [item_of(r) for r in records]
    data = client.upload(None, 11, items, batch_mac(KEY, TERMINAL_ID, 11, records))
    req = client.last_req
    assert client.pending == 1
    [answer] = pair.send(data)
    assert isinstance(answer, OfflineAnswered)
    assert answer.ack == m.OfflineAck(req=req, batch_seq=11, codes=[OfflineCode.ACCEPTED] * 3)
    [event] = [e for e in pair.server.seen if isinstance(e, OfflineReceived)]
    assert (event.terminal_id, event.req, event.batch_seq, list(event.records)) == (TERMINAL_ID, req, 11, items)
    assert client.pending == 0


def test_a_bad_batch_mac_is_an_error_naming_the_upload_and_not_fatal() -> None:
    pair = Pair("whole")
    pair.connect()
    client = pair.client
    data = client.upload(77, 1, [item_of(record(1))], bytes(32))
    [error] = pair.send(data)
    assert isinstance(error, ErrorReceived)
    assert (error.error.code, error.req, error.fatal) == (ErrorCode.BAD_BATCH_MAC, 77, False)
    assert client.state is ClientState.READY and client.pending == 0


def test_an_ack_that_does_not_answer_the_batch_is_a_fatal_violation() -> None:
    pair = Pair("whole")
    pair.connect()
    client = pair.client
    client.upload(3, 4, [item_of(record(1)), item_of(record(2))], bytes(32))
    [v] = pair.deliver(encode_frame(m.encoder.encode(m.OfflineAck(req=3, batch_seq=4, codes=[0]))))
    assert isinstance(v, Violation) and v.fatal and client.closed
    other = Pair("whole")
    other.connect()
    [u] = other.deliver(encode_frame(m.encoder.encode(m.OfflineAck(req=9, batch_seq=4, codes=[0]))))
    assert isinstance(u, Violation) and not u.fatal and u.code == ErrorCode.UNEXPECTED_MESSAGE


def test_the_client_refuses_to_send_what_the_protocol_forbids() -> None:
    pair = Pair("whole")
    with pytest.raises(LocalProtocolError):  # not authenticated
        pair.client.upload(1, 1, [item_of(record(1))], bytes(32))
    pair.connect()
    with pytest.raises(LocalProtocolError, match="1 to 1000"):
        pair.client.upload(1, 1, [], bytes(32))
    pair.client.upload(1, 1, [item_of(record(1))], bytes(32))
    with pytest.raises(LocalProtocolError, match="outstanding"):
        pair.client.upload(1, 2, [item_of(record(2))], bytes(32))


def test_an_upload_before_authentication_is_refused_by_the_server() -> None:
    conn = ServerConnection()
    body = m.encoder.encode(m.OfflineUpload(req=1, batch_seq=1, records=[item_of(record(1))], mac=bytes(32)))
    [v] = conn.receive_data(encode_frame(body))
    assert v.code == ErrorCode.NOT_AUTHENTICATED  # type: ignore[union-attr]


def test_terminal_client_upload_returns_the_ack_or_raises_the_error() -> None:
    async def scenario() -> None:
        async with served() as port:
            client = TerminalClient(TERMINAL_ID, MASTER_KEY)
            try:
                await client.connect("127.0.0.1", port)
                records = [record(i) for i in range(2)]
                good = asyncio.ensure_future(client.upload(5, records, batch_mac(KEY, TERMINAL_ID, 5, records)))
                with pytest.raises(ServerError) as err:
                    await client.upload(6, records, bytes(32))
                assert err.value.error.code == ErrorCode.BAD_BATCH_MAC
                ack = await good
                assert (ack.batch_seq, ack.codes) == (5, [0, 0])
                assert client.conn.pending == 0
            finally:
                await client.close()

    run(scenario)


def test_the_fast_when_equals_when_of_and_refuses_what_it_refuses() -> None:
    import random

    rng = random.Random(14)
    for _ in range(3000):
        digits = rng.randrange(10**13, 10**14)
        s = f"{digits:014d}"
        try:
            want: When | None = When.of(s[:8], s[8:])
        except ValueError:
            want = None
        try:
            got: When | None = when_of(digits)
        except ValueError:
            got = None
        assert got == want, digits
    from datetime import datetime, timedelta

    for _ in range(500):
        t = datetime(1990, 1, 1) + timedelta(seconds=rng.randrange(60 * 365 * 86400))
        s = t.strftime("%Y%m%d%H%M%S")
        assert when_of(int(s)) == When.of(s[:8], s[8:])
    for good in (20240229000000, 20261231235959, 10000101000000):
        s = f"{good:014d}"
        assert when_of(good) == When.of(s[:8], s[8:]) and when_of(good).bcd() == bytes.fromhex(s)
    for bad in (20230229120000, 20261301000000, 20261200000000, 20261206240000, 20261206236000, 20261206235960,
                999, 10**14, True):
        with pytest.raises(ValueError):
            when_of(bad)  # type: ignore[arg-type]
