"""The reader pool through the real PC/SC stack (pcscd + vpcd): virtual cards put into and
pulled out of vpcd's second reader, a card pulled mid-APDU, a slow card, a broken card, a card
of another application, and ``citycard readers watch`` as a subprocess.

The reader is a parameter (``READER_UNDER_TEST``/``PORT``) so these tests stay off the reader
another suite uses; the pool watches only that reader.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from citycard.protocols.apdu import read_binary
from citycard.reader_pool import (
    ApduTimeout,
    BadResponse,
    CardInserted,
    CardRemoved,
    CardRemovedEvent,
    NoCard,
    ReaderAdded,
    ReaderError,
    ReaderEvent,
    ReaderGone,
    ReaderPool,
)
from tests.support.pcsc import PORTS, READER2, PrivatePcscd, VirtualCard

READER_UNDER_TEST = READER2
PORT = PORTS[READER_UNDER_TEST]
ATR = bytes.fromhex("3B8880010000000000718100F9")
OTHER_ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")  # a contactless storage card's
SELECT = bytes.fromhex("00A4040008A00000063201010500")
GET_CHALLENGE = bytes.fromhex("0084000004")
EVENT_WAIT_S = 5.0
ROOT = Path(__file__).resolve().parents[2]




def ours(apdu: bytes) -> bytes:
    if apdu[1] == 0xA4:
        return bytes.fromhex("6F0A8408A000000632010105") + b"\x90\x00"
    if apdu[1] == 0x84:
        return bytes.fromhex("010203049000")
    if apdu[1] == 0xB0:  # a T=0 card: asks for the exact length, then answers in two parts
        return bytes.fromhex("AABBCC6103") if apdu[-1] == 0x06 else bytes.fromhex("6C06")
    if apdu[1] == 0xC0:
        return bytes.fromhex("DDEEFF9000")
    return bytes.fromhex("6D00")


def another_application(apdu: bytes) -> bytes:
    return bytes.fromhex("6A82") if apdu[1] == 0xA4 else bytes.fromhex("6E00")


def pool_for_test(**kw: object) -> ReaderPool:
    return ReaderPool(lambda name: name == READER_UNDER_TEST, monitor_wait_ms=500, **kw)  # type: ignore[arg-type]


async def next_event(events: "asyncio.Queue[ReaderEvent]", kind: type, wait_s: float = EVENT_WAIT_S) -> ReaderEvent:
    """The next event of ``kind`` (others skipped), or a failure after ``wait_s``."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"no {kind.__name__} within {wait_s} s"
        event = await asyncio.wait_for(events.get(), left)
        if isinstance(event, kind):
            return event


def collect(pool: ReaderPool) -> tuple["asyncio.Queue[ReaderEvent]", "asyncio.Task[None]"]:
    q: asyncio.Queue[ReaderEvent] = asyncio.Queue()

    async def pump() -> None:
        async for event in pool.events():
            q.put_nowait(event)

    return q, asyncio.create_task(pump())


async def insert(atr: bytes, answer) -> VirtualCard:  # noqa: ANN001
    return await asyncio.to_thread(VirtualCard, atr, answer, PORT)


async def pull(card: VirtualCard) -> None:
    await asyncio.to_thread(card.remove)


def sample(pool: ReaderPool, name: str, **labels: str) -> float:
    return pool.metrics.registry.get_sample_value(name, labels) or 0.0


def test_inserted_and_removed_cards_are_events_and_a_session_talks_to_the_card(pcscd: None) -> None:
    async def run() -> None:
        async with pool_for_test() as pool:
            events, pump = collect(pool)
            assert (await next_event(events, ReaderAdded)).reader == READER_UNDER_TEST
            assert pool.readers() == [READER_UNDER_TEST]
            card = await insert(ATR, ours)
            inserted = await next_event(events, CardInserted)
            assert (inserted.reader, inserted.atr) == (READER_UNDER_TEST, ATR)
            session = await pool.card(READER_UNDER_TEST, timeout_ms=2000)
            assert session.atr == ATR
            assert (await session.transmit(SELECT)).endswith(b"\x90\x00")
            assert await session.transmit(GET_CHALLENGE) == bytes.fromhex("010203049000")
            assert card.apdus == [SELECT, GET_CHALLENGE]
            answer = await session.exchange(read_binary())  # 6Cxx and 61xx followed
            assert (answer.data, answer.sw) == (bytes.fromhex("AABBCCDDEEFF"), 0x9000)
            assert card.apdus[2:] == [bytes.fromhex("00B0000000"), bytes.fromhex("00B0000006"),
                                      bytes.fromhex("00C0000003")]
            await pull(card)
            assert (await next_event(events, CardRemovedEvent)).reader == READER_UNDER_TEST
            with pytest.raises(CardRemoved):  # the session's card is gone, whatever comes next
                await session.transmit(SELECT)
            with pytest.raises(NoCard):
                await pool.card(READER_UNDER_TEST, timeout_ms=200)
            with pytest.raises(ReaderGone):
                await pool.card("No Such Reader 00 00", timeout_ms=100)
            assert sample(pool, "citycard_reader_cards_seen_total", reader=READER_UNDER_TEST) == 1
            assert sample(pool, "citycard_reader_apdus_total", reader=READER_UNDER_TEST, sw="9000") == 3
            assert sample(pool, "citycard_reader_apdus_total", reader=READER_UNDER_TEST, sw="6CXX") == 1
            assert sample(pool, "citycard_reader_apdus_total", reader=READER_UNDER_TEST, sw="61XX") == 1
            assert sample(pool, "citycard_reader_apdu_seconds_count") == 5
            assert sample(pool, "citycard_readers_present") == 1
            pump.cancel()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_card_pulled_mid_apdu_raises_card_removed(pcscd: None) -> None:
    answering = threading.Event()
    release = threading.Event()

    def stalls(apdu: bytes) -> bytes:
        answering.set()
        release.wait(5)  # until pulled
        return bytes.fromhex("9000")

    async def run() -> None:
        async with pool_for_test(apdu_timeout_ms=4000) as pool:
            card = await insert(ATR, stalls)
            session = await pool.card(READER_UNDER_TEST, timeout_ms=EVENT_WAIT_S * 1000)
            sent = asyncio.create_task(session.transmit(SELECT))
            assert await asyncio.to_thread(answering.wait, 5)
            pulling = asyncio.create_task(pull(card))  # mid-APDU: the card has the command, no answer yet
            await asyncio.sleep(0.1)
            release.set()  # the card's thread may end now; its answer goes nowhere
            await pulling
            started = time.monotonic()
            with pytest.raises(CardRemoved) as caught:
                await sent
            assert time.monotonic() - started < 4, "reported as a removal, not as a timeout"
            assert READER_UNDER_TEST in str(caught.value)
            assert sample(pool, "citycard_reader_errors_total", reader=READER_UNDER_TEST, kind="card_removed") >= 1

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_slow_card_times_out_and_the_next_card_in_that_reader_works(pcscd: None) -> None:
    release = threading.Event()

    def slow(apdu: bytes) -> bytes:
        release.wait(3)
        return bytes.fromhex("9000")

    async def run() -> None:
        async with pool_for_test(apdu_timeout_ms=300) as pool:
            events, pump = collect(pool)
            card = await insert(ATR, slow)
            session = await pool.card(READER_UNDER_TEST, timeout_ms=EVENT_WAIT_S * 1000)
            started = time.monotonic()
            with pytest.raises(ApduTimeout):
                await session.transmit(SELECT)
            assert time.monotonic() - started < 1.5
            release.set()
            await pull(card)
            await next_event(events, CardRemovedEvent)
            good = await insert(ATR, ours)
            try:
                session = await pool.card(READER_UNDER_TEST, timeout_ms=EVENT_WAIT_S * 1000)
                assert (await session.transmit(GET_CHALLENGE, timeout_ms=3000)) == bytes.fromhex("010203049000")
            finally:
                await pull(good)
            assert sample(pool, "citycard_reader_errors_total", reader=READER_UNDER_TEST, kind="timeout") == 1
            pump.cancel()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_reader_that_never_answers_is_bounded_to_two_abandoned_threads(pcscd: None) -> None:
    release = threading.Event()

    def hangs(apdu: bytes) -> bytes:
        release.wait(10)
        return bytes.fromhex("9000")

    async def run() -> None:
        async with pool_for_test(apdu_timeout_ms=200) as pool:
            events, pump = collect(pool)
            card = await insert(ATR, hangs)
            session = await pool.card(READER_UNDER_TEST, timeout_ms=EVENT_WAIT_S * 1000)
            for _ in range(2):  # each abandons the stuck worker and the next gets a fresh one
                with pytest.raises(ApduTimeout):
                    await session.transmit(SELECT)
            with pytest.raises(ReaderError, match="wedged"):  # no third thread piled on
                await session.transmit(SELECT)
            release.set()
            await pull(card)
            await next_event(events, CardRemovedEvent)
            good = await insert(ATR, ours)
            try:  # the abandoned threads return once the card is gone; the reader works again
                session = await pool.card(READER_UNDER_TEST, timeout_ms=EVENT_WAIT_S * 1000)
                assert (await session.transmit(GET_CHALLENGE, timeout_ms=3000)) == bytes.fromhex("010203049000")
            finally:
                await pull(good)
            pump.cancel()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_broken_answer_is_a_clear_error_and_another_application_is_a_status_word(pcscd: None) -> None:
    async def run() -> None:
        async with pool_for_test() as pool:
            events, pump = collect(pool)
            card = await insert(ATR, lambda apdu: b"\x90")  # 1 byte: no status word
            try:
                await next_event(events, CardInserted)
                session = await pool.card(READER_UNDER_TEST, timeout_ms=2000)
                with pytest.raises(BadResponse, match="not a response APDU"):
                    await session.transmit(SELECT)  # vpcd refuses it: PC/SC says the transaction failed
                assert (await pool.card(READER_UNDER_TEST, timeout_ms=100)).atr == ATR  # still there, still usable
            finally:
                await pull(card)
            await next_event(events, CardRemovedEvent)
            other = await insert(OTHER_ATR, another_application)
            try:
                assert (await next_event(events, CardInserted)).atr == OTHER_ATR
                session = await pool.card(READER_UNDER_TEST, timeout_ms=2000)
                assert session.atr == OTHER_ATR
                assert await session.transmit(SELECT) == bytes.fromhex("6A82")
                assert await session.transmit(bytes.fromhex("80CA9F7900")) == bytes.fromhex("6E00")
            finally:
                await pull(other)
            assert sample(pool, "citycard_reader_apdus_total", reader=READER_UNDER_TEST, sw="6A82") == 1
            assert sample(pool, "citycard_reader_apdus_total", reader=READER_UNDER_TEST, sw="6EXX") == 0
            assert sample(pool, "citycard_reader_apdus_total", reader=READER_UNDER_TEST, sw="6E00") == 1
            assert sample(pool, "citycard_reader_errors_total", reader=READER_UNDER_TEST, kind="bad_response") == 1
            pump.cancel()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_readers_watch_prints_an_insert_and_a_removal(pcscd: None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "citycard.cli.main", "readers", "watch", "--json", "--reader", READER_UNDER_TEST,
         "--select", "A000000632010105", "--for-s", "15", "--max-events", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the reader, present at start
        assert (first["event"], first["reader"]) == ("reader_added", READER_UNDER_TEST), first
        card = VirtualCard(OTHER_ATR, another_application, PORT)
        inserted = json.loads(proc.stdout.readline())
        card.remove()
        removed = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert inserted["event"] == "card_inserted" and inserted["atr_hex"] == OTHER_ATR.hex().upper(), inserted
    assert (inserted["select_sw"], inserted["select_meaning"]) == ("6A82", "file not found"), inserted
    assert (removed["event"], removed["reader"]) == ("card_removed", READER_UNDER_TEST), removed


def test_readers_watch_stops_at_sigint_and_says_when_pcscd_is_not_there(pcscd: None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "citycard.cli.main", "readers", "watch", "--reader", READER_UNDER_TEST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert "reader_added" in proc.stdout.readline()  # up and watching
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    # pcsc-lite's client finds pcscd by this socket path: a path with nobody behind it is no pcscd
    gone = subprocess.run(cmd + ["--for-s", "5"], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**env, "PCSCLITE_CSOCK_NAME": "/nonexistent/pcscd.comm"})
    assert gone.returncode == 2, gone
    assert "no PC/SC service" in gone.stderr and "is pcscd running?" in gone.stderr, gone.stderr


def test_readers_unplugged_and_plugged_back_are_seen_and_their_cards_work_again(tmp_path: Path) -> None:
    """pcscd's vpcd readers cannot be unplugged one by one; a pcscd of the test's own, stopped
    and started again, unplugs every reader and plugs it back (the shared pcscd is untouched)."""
    why_not = PrivatePcscd.why_not()
    if why_not is not None:
        if os.environ.get("CI"):
            pytest.fail(why_not)
        pytest.skip(why_not)
    private = PrivatePcscd(str(tmp_path))
    reader, port = PrivatePcscd.READERS[1], private.port + 1
    env = {**private.env, "PYTHONPATH": str(ROOT)}
    with private:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citycard.cli.main", "readers", "watch", "--json", "--reader", reader,
             "--select", "A000000632010105", "--for-s", "25", "--max-events", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            seen = [json.loads(proc.stdout.readline())]  # present at start
            private.stop()  # unplugged
            seen.append(json.loads(proc.stdout.readline()))
            private.start()  # plugged back
            seen.append(json.loads(proc.stdout.readline()))
            card = VirtualCard(OTHER_ATR, another_application, port)
            try:
                seen.append(json.loads(proc.stdout.readline()))
            finally:
                card.remove()
            assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    assert [(e["event"], e["reader"]) for e in seen] == [
        ("reader_added", reader), ("reader_removed", reader), ("reader_added", reader), ("card_inserted", reader)]
    assert (seen[3]["atr_hex"], seen[3]["select_sw"]) == (OTHER_ATR.hex().upper(), "6A82"), seen[3]
