"""Chaos load: terminals over real TCP that keep every tap until it has a final answer.

Each terminal sends bus taps in small batches, resends every unanswered, errored, BUSY or
RETRY tap with the same seq and fields (protocol section 7.4), reconnects after a lost
connection, and records the first final answer of every seq. Every loop is bounded in time.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.audit import UNRECORDED_CODES, check_answered, run_audit
from citycard.protocols import messages as m
from citycard.terminal.client import TerminalClient
from tests.support.clock import now_ms

NOT_FINAL = (int(Result.BUSY), int(Result.RETRY))
ANSWER_TIMEOUT_S = 30.0  # longer than the gateway's retry deadline (20 s): silence beyond it is a hang
CONNECT_TIMEOUT_S = 5.0
BACKOFF_S = 0.2


@dataclass
class Term:
    terminal_id: int
    offset: int
    client: TerminalClient | None = None
    next_seq: int = 1
    items: dict[int, m.TapItem] = field(default_factory=dict)
    sends: dict[int, int] = field(default_factory=dict)  # seq -> times sent
    pending: dict[int, None] = field(default_factory=dict)  # unanswered seqs, oldest first
    final: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # seq -> (code, fare, balance)
    first_after_fault: float | None = None  # monotonic time of its first final answer to a post-fault send


class ChaosLoad:
    def __init__(self, terminal_ids: list[int], master_key: bytes, cards: list[int],
                 port: Callable[[], int], *, batch: int = 8, pace_s: float = 0.02) -> None:
        self.key = master_key
        self.cards = cards
        self.port = port
        self.batch = batch
        self.pace_s = pace_s
        self.terms = [Term(t, i * 131) for i, t in enumerate(terminal_ids)]
        self.stopping = False
        self.fault_at: float | None = None
        self.first_final_after_fault: float | None = None
        self.last_disruption: float | None = None  # last error / RETRY / BUSY / timeout seen
        self.errors: dict[str, int] = {}
        self.hangs = 0
        # Replay answers to taps this terminal sent only once: allowed (the gateway retried the
        # batch on a restarted shard that had committed it: "this seq was decided before"), but counted.
        self.replays_of_first_sends = 0
        self._tasks: list[asyncio.Task[None]] = []

    # -- driving ---------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._run(t)) for t in self.terms]

    def mark_fault(self) -> None:
        self.fault_at = time.monotonic()

    async def drop_connections(self) -> None:
        for t in self.terms:
            if t.client is not None:
                await t.client.close()

    async def wait_all_served(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(t.first_after_fault is not None for t in self.terms):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop_and_drain(self, timeout_s: float = 45.0) -> None:
        """No new taps; resend what is unanswered until every tap has a final answer (bounded)."""
        self.stopping = True
        done, running = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in running:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in done:
            t.result()  # a bug in the load itself must not pass silently
        for term in self.terms:
            if term.client is not None:
                await term.client.close()
                term.client = None

    def _note(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_disruption = time.monotonic()

    async def _connect(self, term: Term) -> bool:
        c = TerminalClient(term.terminal_id, self.key)
        try:
            await asyncio.wait_for(c.connect("127.0.0.1", self.port()), CONNECT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - refused, reset, auth error while a part restarts
            await c.close()
            self._note(f"connect:{type(exc).__name__}")
            return False
        term.client = c
        return True

    def _new_tap(self, term: Term) -> int:
        seq = term.next_seq
        term.next_seq += 1
        card = self.cards[(term.offset + seq * 7) % len(self.cards)]
        term.items[seq] = m.TapItem(seq=seq, card=card, time_ms=now_ms(), kind=int(TapKind.BUS),
                                    route=1 + term.terminal_id % 40)
        term.pending[seq] = None
        return seq

    async def _run(self, term: Term) -> None:
        while not (self.stopping and not term.pending):
            if term.client is None or term.client.closed_error is not None:
                if term.client is not None:
                    await term.client.close()
                    term.client = None
                if not await self._connect(term):
                    await asyncio.sleep(BACKOFF_S)
                    continue
            seqs = list(term.pending)[: self.batch]
            while not self.stopping and len(seqs) < self.batch:
                seqs.append(self._new_tap(term))
            assert term.client is not None
            sent_at = time.monotonic()
            try:
                _req, fut = term.client.send_taps([term.items[s] for s in seqs])
                for s in seqs:
                    term.sends[s] = term.sends.get(s, 0) + 1
                res = await asyncio.wait_for(fut, ANSWER_TIMEOUT_S)
            except TimeoutError:
                self.hangs += 1
                self._note("timeout")
                await term.client.close()
                term.client = None
                continue
            except Exception as exc:  # noqa: BLE001 - connection lost: resend on a new connection
                self._note(f"send:{type(exc).__name__}")
                await term.client.close()
                term.client = None
                await asyncio.sleep(BACKOFF_S)
                continue
            retry_later = False
            for r in res.results:
                if r.code in NOT_FINAL:
                    self._note(Result(r.code).name)
                    retry_later = True
                    continue
                if r.seq not in term.pending:
                    continue  # not ours to decide (never happens: we resend only unanswered seqs)
                if r.replay and term.sends.get(r.seq, 0) < 2:
                    self.replays_of_first_sends += 1
                term.final[r.seq] = (int(r.code), int(r.fare_fen), int(r.balance_fen))
                del term.pending[r.seq]
                now = time.monotonic()
                if self.fault_at is not None and sent_at >= self.fault_at:
                    if self.first_final_after_fault is None:
                        self.first_final_after_fault = now
                    if term.first_after_fault is None:
                        term.first_after_fault = now
            await asyncio.sleep(BACKOFF_S if retry_later else self.pace_s)

    # -- checks ----------------------------------------------------------------------------
    async def check_replays(self, port: int, per_terminal: int = 15) -> list[str]:
        """Resend already answered taps: each must come back as a replay equal to the first answer."""
        problems: list[str] = []
        for term in self.terms:
            seqs = [s for s, a in term.final.items() if a[0] not in UNRECORDED_CODES]
            if not seqs:
                continue
            step = max(1, len(seqs) // per_terminal)
            sample = sorted(seqs)[::step][:per_terminal]
            c = TerminalClient(term.terminal_id, self.key)
            await asyncio.wait_for(c.connect("127.0.0.1", port), CONNECT_TIMEOUT_S)
            try:
                res = await asyncio.wait_for(c.taps([term.items[s] for s in sample]), ANSWER_TIMEOUT_S)
            finally:
                await c.close()
            for r in res.results:
                got = (int(r.code), int(r.fare_fen), int(r.balance_fen))
                if not r.replay or got != term.final[r.seq]:
                    problems.append(f"terminal {term.terminal_id} seq {r.seq}: first {term.final[r.seq]},"
                                    f" retry {got} replay={r.replay}")
        return problems

    def columns(self) -> list[tuple[list[int], list[int], list[int], list[int]]]:
        out = []
        for t in self.terms:
            seqs = sorted(t.final)
            out.append(([t.terminal_id] * len(seqs), seqs, [t.final[s][1] for s in seqs],
                        [t.final[s][0] for s in seqs]))
        return out

    @property
    def answered(self) -> int:
        return sum(len(t.final) for t in self.terms)

    @property
    def unanswered(self) -> int:
        return sum(len(t.pending) for t in self.terms)

    def recovery(self) -> dict[str, Any]:
        f = self.fault_at
        assert f is not None

        def rel(x: float | None) -> float | None:
            return None if x is None else round(x - f, 3)

        served = [t.first_after_fault for t in self.terms]
        return {
            "first_final_answer_s": rel(self.first_final_after_fault),
            "all_terminals_served_s": rel(max(served)) if all(s is not None for s in served) else None,
            "last_disruption_s": rel(self.last_disruption) if self.last_disruption and self.last_disruption >= f
            else None,
        }


async def verify(load: ChaosLoad, conn: Any, actor_balances: dict[int, int] | None, port: int) -> dict[str, Any]:
    """Everything the issue asks after recovery; returns the figures, asserts the invariants."""
    assert load.unanswered == 0, f"{load.unanswered} taps never got a final answer (lost or hung)"
    assert load.hangs == 0, f"{load.hangs} batches got no answer within {ANSWER_TIMEOUT_S} s"
    answered = await check_answered(conn, load.columns())
    recorded = sum(1 for t in load.terms for a in t.final.values() if a[0] not in UNRECORDED_CODES)
    assert answered.ok and answered.checked == recorded, answered
    # ... and the balance the terminal was told is the row's (a replay's too: the balance right after it)
    told = [(t.terminal_id, s, a[2]) for t in load.terms for s, a in t.final.items() if a[0] not in UNRECORDED_CODES]
    await conn.execute("CREATE TEMP TABLE told (terminal_id bigint, seq bigint, balance_fen bigint)")
    try:
        await conn.copy_records_to_table("told", records=told, columns=("terminal_id", "seq", "balance_fen"))
        wrong_balance = await conn.fetchval(
            "SELECT count(*) FROM told JOIN journal j USING (terminal_id, seq)"
            " WHERE j.balance_after_fen <> told.balance_fen")
    finally:
        await conn.execute("DROP TABLE told")
    assert wrong_balance == 0, f"{wrong_balance} answers told a balance other than the journal row's"
    audit = await run_audit(conn, actor_balances)
    assert audit.ok, audit
    # Every tap of these terminals got exactly one row, and the money they were told is the money moved.
    terminal_ids = [t.terminal_id for t in load.terms]
    rows = await conn.fetchval("SELECT count(*) FROM journal WHERE terminal_id = any($1::bigint[])", terminal_ids)
    assert rows == recorded, (rows, recorded)
    assert audit.charged_fen == answered.charged_fen, (audit.charged_fen, answered.charged_fen)
    replays = await load.check_replays(port)
    assert not replays, replays[:5]
    codes: dict[str, int] = {}
    for t in load.terms:
        for code, _fare, _bal in t.final.values():
            codes[Result(code).name] = codes.get(Result(code).name, 0) + 1
    return {"answered": load.answered, "codes": dict(sorted(codes.items())),
            "replays_of_first_sends": load.replays_of_first_sends, "journal_rows": int(rows), "charged_fen": answered.charged_fen,
            "errors": dict(sorted(load.errors.items())), **load.recovery()}


def chaos_summary(figures: dict[str, Any]) -> str:
    """The printed line of one fault's figures."""
    return (f"first final answer {figures['first_final_answer_s']} s after the fault,"
            f" all terminals served {figures['all_terminals_served_s']} s, last disruption"
            f" {figures['last_disruption_s']} s; {figures['answered']} taps answered, errors {figures['errors']}")
