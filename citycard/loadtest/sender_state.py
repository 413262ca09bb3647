"""What one sender process of the load lab is given and keeps: its spec, its counters, the
state of each of its virtual terminals, and the file of the final answers it received (read
back by the audit). The sending itself is in ``sender``."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.results import Result
from ..protocols import messages as m
from ..terminal.client import TerminalClient
from .city import TerminalPlan
from .schedule import RateProfile
from .tapmix import TapMix

RETRYABLE = frozenset((int(Result.BUSY), int(Result.RETRY)))
N_CODES = 256
SEQ_BITS = 32


def tap_key(terminal_id: int, seq: int) -> int:
    """One int per (terminal, seq): cheaper to hash than a tuple, on the per-tap path."""
    return (terminal_id << SEQ_BITS) | seq


@dataclass(frozen=True)
class SenderSpec:
    index: int
    host: str
    port: int
    master_key: bytes
    terminals: list[TerminalPlan]  # this sender's terminals
    first_seq: dict[int, int]  # terminal id -> first seq to use (after what the record holds)
    terminal_weights: list[float]  # relative tap rate of each terminal
    home_cards: Sequence[int]
    visitor_cards: Sequence[int]
    mix: TapMix
    profile: RateProfile  # this sender's share of the rate
    max_count: int
    duration_ms: float
    seed: int
    origin_unix_s: float  # the run's t = 0 on the wall clock, shared by every sender
    out_dir: str  # answered keys are written here for the audit
    linger_ms: float = 2.0
    max_batch: int = 200
    timeout_ms: float = 10_000.0
    retry_after_ms: float = 1000.0
    max_attempts: int = 5
    replay_share: float = 0.0  # share of answered batches sent again on purpose (idempotency)
    max_outstanding: int = 500_000
    connect_concurrency: int = 32
    report_every_ms: float = 1000.0
    interval_ms: float = 1000.0
    # The loop wakes at most this often: taps due within a tick go out together, each on its own
    # terminal's connection, and each one's latency still counts from its intended time. One
    # wake-up a tap (Poisson arrivals ~0.1 ms apart) was the generator's largest cost.
    tick_ms: float = 1.0


@dataclass
class SenderTerminal:
    """One virtual terminal of a sender: its connection, its queued and unanswered taps."""

    index: int
    plan: TerminalPlan
    seq: int
    client: TerminalClient | None = None
    queue: list[m.TapItem] = field(default_factory=list)
    first_queued_ms: float = math.inf
    inflight: dict[int, list[m.TapItem]] = field(default_factory=dict)
    resend: list[m.TapItem] = field(default_factory=list)
    reconnecting: bool = False
    dead: bool = False


@dataclass
class SenderState:
    """Counters shipped to the parent: deltas in ``tick`` reports, all of it at the end."""

    offered: dict[int, int] = field(default_factory=dict)  # interval index -> taps scheduled
    codes: list[int] = field(default_factory=lambda: [0] * N_CODES)  # final answers by code
    retryable: int = 0  # BUSY / RETRY answers (sent again)
    charged_fen: int = 0
    replays_sent: int = 0
    replays_matched: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    replay_mismatches: list[str] = field(default_factory=list)
    sent_codes: list[int] = field(default_factory=lambda: [0] * N_CODES)  # as of the last report
    sent_offered: dict[int, int] = field(default_factory=dict)

    def take_deltas(self) -> tuple[dict[int, int], dict[int, int]]:
        """Final answers by code and offered taps by interval since the last call: what a
        report carries."""
        codes = {c: n - self.sent_codes[c] for c, n in enumerate(self.codes) if n != self.sent_codes[c]}
        self.sent_codes = list(self.codes)
        offered = {i: n - self.sent_offered.get(i, 0) for i, n in self.offered.items()
                   if n != self.sent_offered.get(i, 0)}
        self.sent_offered = dict(self.offered)
        return codes, offered

    def check_replays(self, results: list[m.ResultItem], first: list[Any]) -> None:
        """Answers to taps sent again on purpose: each a replay of the first answer."""
        by_seq = {r.seq: (r.code, r.fare_fen) for r in first}
        for r in results:
            if r.code in RETRYABLE:
                self.replays_sent -= 1  # not processed (overload): no replay to check
            elif r.replay and by_seq.get(r.seq) == (r.code, r.fare_fen):
                self.replays_matched += 1
            elif len(self.replay_mismatches) < 20:
                self.replay_mismatches.append(
                    f"seq {r.seq}: first {by_seq.get(r.seq)}, again code {r.code} fare {r.fare_fen} "
                    f"replay {r.replay}")


@dataclass
class AnsweredColumns:
    """The first final answer to each tap, one column each (arrays: 25 bytes a tap)."""

    terminal: array[int] = field(default_factory=lambda: array("q"))
    seq: array[int] = field(default_factory=lambda: array("q"))
    code: array[int] = field(default_factory=lambda: array("b"))
    fare: array[int] = field(default_factory=lambda: array("q"))

    def write(self, path: Path) -> str:
        with path.open("wb") as f:
            n = array("q", [len(self.terminal)])
            n.tofile(f)
            self.terminal.tofile(f)
            self.seq.tofile(f)
            self.fare.tofile(f)
            self.code.tofile(f)
        return str(path)


def read_answered(path: str) -> tuple[array[int], array[int], array[int], array[int]]:
    """(terminal ids, seqs, fares, codes) of the first final answers a sender received."""
    with open(path, "rb") as f:
        n_arr = array("q")
        n_arr.fromfile(f, 1)
        n = n_arr[0]
        cols = []
        for typecode in ("q", "q", "q", "b"):
            col = array(typecode)
            col.fromfile(f, n)
            cols.append(col)
    return cols[0], cols[1], cols[2], cols[3]
