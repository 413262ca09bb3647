"""Terminal security against the live gateway (issue 6, part 2).

Unknown, disabled and wrong-key terminals, a replayed authentication, taps before
authentication and seqs of another terminal's session are refused, each with its own code
(docs/protocol.md sections 5, 6, 10), and nothing they send reaches the journal. Findings are
fixed in the product: a terminal disabled in Postgres is refused at its next authentication
(the session re-reads it), and a per-terminal rate limit answers BUSY to a flooding terminal. tests/e2e/test_bad_input.py checks the AUTH_FAILED and UNKNOWN_TERMINAL codes once;
here each refusal also has to close the connection and leave no trace.
"""

import asyncio
import os
from typing import Any

import pytest

from citycard.actors.terminal_session import NONCE_MEMORY
from citycard.domain.results import Result
from citycard.domain.shard import session_shard_of
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.client import ClientConnection
from citycard.protocols.codes import ErrorCode
from tests.support.city import plain_cards
from tests.support.clock import now_ms
from tests.support.live import LiveCity, live_city, start_canary
from tests.support.results import ROBUSTNESS_RESULTS
from tests.support.terminal import RawConn, assert_documented_error, encode

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("ray_cluster")]

UNKNOWN_TERMINAL_ID = 99_999
FINDINGS: dict[str, Any] = {}
TERMINAL_TAPS_PER_S = 200.0
TERMINAL_BURST_TAPS = 500


@pytest.fixture(scope="module")
def live(configured_services, ray_cluster):
    # A per-terminal limit as production would set it (default.toml: off for the demo and lab).
    with live_city(configured_services, n_cards=400, n_terminals=12,
                   gateway={"terminal_max_taps_per_s": TERMINAL_TAPS_PER_S,
                            "terminal_burst_taps": TERMINAL_BURST_TAPS}) as city:
        yield city


@pytest.fixture(scope="module")
def canary(live: LiveCity):
    can = start_canary(live, max_taps=600)
    yield can
    can.stop()


def tid(live: LiveCity, i: int) -> int:
    return live.c.terminals[i].terminal_id


def key_of(live: LiveCity, terminal_id: int) -> bytes:
    return terminal_key(live.c.settings.city.master_key, terminal_id)


async def handshake(port: int, terminal_id: int, key: bytes | None, nonce: bytes | None = None,
                    mac: bytes | None = None, then: bytes = b"") -> tuple[RawConn, dict[str, Any], bytes, bytes]:
    """hello, challenge, auth (``then`` appended to the auth write) by a client connection with
    ``key`` (None: a random MAC) or the recorded ``nonce`` and ``mac``; (conn, answer to auth,
    nonce, mac sent)."""
    conn = await RawConn.open(port, client=ClientConnection(terminal_id, key or b""))
    nonce = await conn.hello(nonce)
    ch = await conn.read(5)
    assert ch is not None and ch["t"] == "challenge", ch
    if mac is None and key is None:
        mac = os.urandom(32)
    sent = await conn.auth(mac, then)
    if then:  # a tap right behind auth arrives in VERIFYING: refused first, not processed
        early = await conn.read(5)
        assert early is not None and early.get("code") == ErrorCode.NOT_AUTHENTICATED, early
    answer = await conn.read(5)
    assert answer is not None, "no answer to auth"
    return conn, answer, nonce, m.client_decoder.decode(sent[4:]).mac  # recorded, to replay


async def refused(conn: RawConn, answer: dict[str, Any], code: ErrorCode) -> int:
    """The answer is ``error`` ``code`` and the server closes the connection."""
    got = assert_documented_error(answer)
    assert got == code, f"expected {code.name}, got {ErrorCode(got).name}: {answer}"
    assert await conn.wait_closed(3), f"{code.name} must close the connection"
    await conn.close()
    return got


def bus_tap(seq: int, card: int) -> m.Tap:
    return m.Tap(seq=seq, card=card, time_ms=now_ms(), kind=1, route=3)


def tap_frame(seq: int, card: int) -> bytes:
    """A tap built by hand: sent before authentication on purpose, which a client refuses."""
    return encode(bus_tap(seq, card))


def test_each_refusal_has_its_own_code_and_leaves_no_trace(live, canary):
    c = live.c
    card = plain_cards(c)[10]
    codes: dict[str, int] = {}
    disabled, wrong_key, replayed, early = tid(live, 2), tid(live, 3), tid(live, 4), tid(live, 5)

    async def go() -> None:
        # A tap pipelined behind each refused auth must not be processed.
        sneak = tap_frame(424_242, card)

        conn, ans, _, _ = await handshake(c.port, UNKNOWN_TERMINAL_ID, key_of(live, UNKNOWN_TERMINAL_ID), then=sneak)
        codes["unknown terminal"] = await refused(conn, ans, ErrorCode.UNKNOWN_TERMINAL)

        await set_enabled(live, disabled, False, reload=True)
        conn, ans, _, _ = await handshake(c.port, disabled, key_of(live, disabled), then=sneak)
        codes["disabled terminal"] = await refused(conn, ans, ErrorCode.TERMINAL_DISABLED)

        conn, ans, _, _ = await handshake(c.port, wrong_key, terminal_key(b"\x42" * 32, wrong_key), then=sneak)
        codes["wrong MAC"] = await refused(conn, ans, ErrorCode.AUTH_FAILED)

        # Record a real exchange, then replay its hello nonce and MAC on a new connection.
        conn, ans, nonce, mac = await handshake(c.port, replayed, key_of(live, replayed))
        assert ans["t"] == "auth_ok", ans
        await conn.close()
        conn, ans, _, _ = await handshake(c.port, replayed, None, nonce=nonce, mac=mac, then=sneak)
        codes["replayed authentication"] = await refused(conn, ans, ErrorCode.AUTH_REPLAY)
        # The recorded MAC with a fresh nonce: the server nonce differs, so the MAC is wrong.
        conn, ans, _, _ = await handshake(c.port, replayed, None, mac=mac, then=sneak)
        await refused(conn, ans, ErrorCode.AUTH_FAILED)

        # Taps before authentication: NOT_AUTHENTICATED, not fatal; the 11th error is fatal.
        conn = await RawConn.open(c.port)
        await conn.send(tap_frame(424_242, card))
        first = await conn.read(5)
        assert first is not None
        codes["tap before authentication"] = assert_documented_error(first)
        assert codes["tap before authentication"] == ErrorCode.NOT_AUTHENTICATED
        await conn.send(ClientConnection(early, key_of(live, early)).hello(os.urandom(16)))
        ch = await conn.read(5)
        assert ch is not None and ch["t"] == "challenge"  # still open, handshake still possible
        for i in range(9):
            await conn.send(tap_frame(424_243 + i, card))
            e = await conn.read(5)
            assert e is not None and e["code"] == ErrorCode.NOT_AUTHENTICATED, (i, e)
        await conn.send(tap_frame(424_299, card))
        last = await conn.read(5)
        assert last is not None and last["code"] == ErrorCode.TOO_MANY_ERRORS, last
        assert await conn.wait_closed(3)
        await conn.close()

        for t in (UNKNOWN_TERMINAL_ID, disabled, wrong_key, replayed, early):
            assert await live_journal(live, t) == {}, f"terminal {t}: a refused connection's tap was journaled"

    asyncio.run(asyncio.wait_for(go(), 60))
    assert len(set(codes.values())) == len(codes), codes  # each case its own code
    FINDINGS["refusal_codes"] = {k: ErrorCode(v).name for k, v in codes.items()}


async def live_journal(live: LiveCity, terminal_id: int) -> dict[int, tuple[int, int, int]]:
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.journal(terminal_id), live.loop))  # type: ignore[arg-type]


async def set_enabled(live: LiveCity, terminal_id: int, enabled: bool, *, reload: bool) -> None:
    async def on_city() -> None:
        conn = await live.c.conn()
        try:
            await conn.execute("UPDATE terminals SET enabled = $2 WHERE terminal_id = $1", terminal_id, enabled)
        finally:
            await conn.close()
        if reload:
            sessions = live.c.platform.sessions
            await sessions[session_shard_of(terminal_id, len(sessions))].reload.remote()

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_city(), live.loop))  # type: ignore[arg-type]


def test_replay_after_the_nonce_memory_is_still_refused(live, canary):
    """The server remembers the last NONCE_MEMORY (64) nonces per terminal, in memory only. A
    recorded exchange replayed after 65 newer sessions is no longer AUTH_REPLAY, but still
    refused (AUTH_FAILED): the server's fresh nonce is in the MAC."""
    c = live.c
    t = tid(live, 6)

    async def go() -> int:
        conn, ans, nonce, mac = await handshake(c.port, t, key_of(live, t))
        assert ans["t"] == "auth_ok"
        await conn.close()
        for _ in range(NONCE_MEMORY + 1):  # bounded: 65 short sessions
            conn, ans, _, _ = await handshake(c.port, t, key_of(live, t))
            assert ans["t"] == "auth_ok"
            await conn.close()
        conn, ans, _, _ = await handshake(c.port, t, None, nonce=nonce, mac=mac)
        code = assert_documented_error(ans)
        assert code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REPLAY), ans
        assert await conn.wait_closed(3)
        await conn.close()
        return code

    code = asyncio.run(asyncio.wait_for(go(), 60))
    FINDINGS["replay_after_nonce_memory"] = ErrorCode(code).name
    assert code == ErrorCode.AUTH_FAILED


def test_seqs_of_another_terminal_are_that_terminals_own(live, canary):
    """A terminal cannot name another terminal's seq: ``(terminal_id, seq)`` is the key and the
    id is the one authenticated. B sending A's seqs (same or other cards) gets fresh decisions
    of its own (no replay of A's outcome, no DUPLICATE_SEQ), and A's retry still gets A's first
    outcome. There is no refusal code for it because there is nothing to refuse (finding)."""
    c = live.c
    a_id, b_id = tid(live, 7), tid(live, 8)
    cards = plain_cards(c)[20:24]

    async def go() -> None:
        a, ans, _, _ = await handshake(c.port, a_id, key_of(live, a_id))
        assert ans["t"] == "auth_ok"
        b, ans, _, _ = await handshake(c.port, b_id, key_of(live, b_id))
        assert ans["t"] == "auth_ok"
        first: dict[int, dict[str, Any]] = {}
        for seq in (1, 2):
            await a.send(a.client.tap(bus_tap(seq, cards[seq - 1])))
            r = await a.read(10)
            assert r is not None and r["t"] == "result" and r["code"] == Result.OK, r
            first[seq] = r
        # B: A's seq 1 with A's card, A's seq 2 with another card.
        for seq, card in ((1, cards[0]), (2, cards[3])):
            await b.send(b.client.tap(bus_tap(seq, card)))
            r = await b.read(10)
            assert r is not None and r["t"] == "result", r
            assert r["code"] not in (Result.DUPLICATE_SEQ, Result.SEQ_TOO_OLD), r
            assert not r.get("replay", False), f"B got A's outcome as a replay: {r}"
        # A's retry of seq 1: A's first outcome, as a replay.
        await a.send(a.client.tap(bus_tap(1, cards[0])))
        r = await a.read(10)
        assert r is not None and r.get("replay") is True and r["balance_fen"] == first[1]["balance_fen"], r
        await a.close()
        await b.close()
        ja, jb = await live_journal(live, a_id), await live_journal(live, b_id)
        assert {s: v[0] for s, v in ja.items()} == {1: cards[0], 2: cards[1]}
        assert {s: v[0] for s, v in jb.items()} == {1: cards[0], 2: cards[3]}

    asyncio.run(asyncio.wait_for(go(), 60))


def test_terminal_disabled_in_postgres_is_refused_at_its_next_authentication(live, canary):
    c = live.c
    t = tid(live, 9)

    async def go() -> dict[str, Any]:
        conn, ans, _, _ = await handshake(c.port, t, key_of(live, t))
        assert ans["t"] == "auth_ok"  # loaded and enabled
        await conn.close()
        await set_enabled(live, t, False, reload=False)
        await asyncio.sleep(0.5)
        conn, ans, _, _ = await handshake(c.port, t, key_of(live, t))
        await conn.close()
        return ans

    ans = asyncio.run(asyncio.wait_for(go(), 30))
    FINDINGS["disabled_without_reload"] = ans.get("t") if ans["t"] != "error" else ErrorCode(ans["code"]).name
    assert ans["t"] == "error" and ans["code"] == ErrorCode.TERMINAL_DISABLED, ans


def test_one_terminal_flooding_is_limited_per_terminal(live, canary):
    """Expected: a terminal offering far more than any real terminal (3 batches of 1000 taps at
    once, ~3000 taps/s; a bus validator sees ~1 tap/s) gets BUSY (or an error) for the excess
    while the shard queues are far from full, so it cannot starve the others."""
    c = live.c
    t = tid(live, 10)

    async def go() -> list[int]:
        conn, ans, _, _ = await handshake(c.port, t, key_of(live, t))
        assert ans["t"] == "auth_ok"
        batches = [m.TapBatch(req=r + 1, taps=[
            m.TapItem(seq=r * 1000 + i + 1, card=10**15 + r * 1000 + i, time_ms=now_ms(), kind=4, amount_fen=1)
            for i in range(1000)]) for r in range(3)]
        await conn.send(b"".join(conn.client.taps(b.taps, b.req)[1] for b in batches), frames=3)
        codes: list[int] = []
        for _ in range(3):
            msg = await conn.read(30)
            assert msg is not None, "no answer to a batch"
            if msg["t"] == "error":
                codes.append(-assert_documented_error(msg))
            else:
                codes.extend(r["code"] for r in msg["results"])
        await conn.close()
        return codes

    codes = asyncio.run(asyncio.wait_for(go(), 90))
    limited = sum(1 for x in codes if x == Result.BUSY or x < 0)
    FINDINGS["one_terminal_3000_taps_limited"] = limited
    assert limited > 0, f"all {len(codes)} taps of one terminal processed; none limited"


def test_zz_good_terminal_served_throughout(live, canary):
    canary.stop()
    summary = canary.check(live)
    assert live.loop_errors == [], live.loop_errors[:5]
    ROBUSTNESS_RESULTS.record("terminal_security", {**FINDINGS, "canary": summary})
