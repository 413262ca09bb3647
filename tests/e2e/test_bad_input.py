"""Bad input on a real socket gets a clear error code or a closed connection, and the
gateway keeps serving the other terminals."""

import asyncio
import os
import time

import msgpack
import pytest

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.protocols import messages as m
from citycard.protocols.codes import ErrorCode
from citycard.protocols.frames import encode_frame
from citycard.terminal.client import ServerError, TerminalClient
from tests.support.city import running_city
from tests.support.terminal import raw_exchange

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_bad_input_gets_errors_and_others_are_still_served(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            good = await city.client(city.terminals[1].terminal_id)
            card = city.cards[0][0]

            # Each bad input below is built by hand on purpose; the good terminals use the client.
            # Wrong MAC: AUTH_FAILED, then the server closes.
            bad = TerminalClient(city.terminals[0].terminal_id, b"\x99" * 32)
            with pytest.raises(ServerError) as err:
                await bad.connect("127.0.0.1", city.port)
            assert err.value.error.code == ErrorCode.AUTH_FAILED
            await bad.close()

            # Unknown terminal.
            stranger = TerminalClient(99_999, city.settings.city.master_key)
            with pytest.raises(ServerError) as err:
                await stranger.connect("127.0.0.1", city.port)
            assert err.value.error.code == ErrorCode.UNKNOWN_TERMINAL
            await stranger.close()

            # Oversized frame: refused from the header alone, connection closed.
            frames, closed = await raw_exchange(city.port, (10**9).to_bytes(4, "big") + b"x" * 10)
            assert frames[0]["t"] == "error" and frames[0]["code"] == ErrorCode.FRAME_TOO_LARGE
            assert closed

            # Garbage bytes in a frame: BAD_MESSAGE, connection stays open.
            frames, closed = await raw_exchange(city.port, encode_frame(b"\xc1\xff\x00garbage"))
            assert frames[0]["code"] == ErrorCode.BAD_MESSAGE and not closed

            # An unknown message type.
            frames, closed = await raw_exchange(city.port, encode_frame(msgpack.packb({"t": "teleport"})))
            assert frames[0]["code"] == ErrorCode.UNKNOWN_MESSAGE and not closed

            # A tap before authentication (by hand: a client connection refuses to send it).
            tap = m.Tap(seq=1, card=card, time_ms=1, kind=int(TapKind.BUS), route=1)
            frames, _ = await raw_exchange(city.port, encode_frame(m.encoder.encode(tap)))
            assert frames[0]["code"] == ErrorCode.NOT_AUTHENTICATED

            # A hello with a wrong-length nonce breaks the schema.
            body = msgpack.packb({"t": "hello", "terminal_id": 5, "nonce": b"short", "version": 1})
            frames, _ = await raw_exchange(city.port, encode_frame(body))
            assert frames[0]["code"] == ErrorCode.BAD_MESSAGE

            # Pure noise with no sane length prefix.
            frames, closed = await raw_exchange(city.port, os.urandom(64) + b"\xff\xff\xff\xff")
            assert closed or frames

            # Through all of that, an authenticated terminal keeps being served.
            r = await good.tap(1, card, int(time.time() * 1000), int(TapKind.BUS), route=5)
            assert r.code == Result.OK
            await good.close()
            assert city.platform.metrics.protocol_errors.labels("AUTH_FAILED")._value.get() == 1

    asyncio.run(scenario())
