"""The gateway's decode of tap frames (ServerConnection.receive_data: framing, the typed
decode, the repeated-key check), in us a tap: a single "tap" and a 1000-tap "taps" batch,
each as this product's client encodes it (fields in struct order) and as a terminal with
another encoder may (keys in another order, defaults left out: the check's second tier).
Best of several rounds, in CPU time (process_time): the machine is shared.

    PYTHONPATH=. .venv/bin/python scripts/bench_tap_decode.py
"""

import time

import msgpack

from citycard.protocols import messages as m
from citycard.protocols.connection import ServerConnection, State

NOW_MS = 1_765_000_000_000
ROUNDS = 7


def _ready() -> ServerConnection:
    conn = ServerConnection()
    conn.state = State.READY  # the handshake is not what is measured
    conn._frames.max_frame_bytes = 1 << 20
    return conn


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _item(seq: int) -> dict[str, int]:
    return {"kind": 1, "route": 42, "time_ms": NOW_MS, "card": 3_101_000_000_012_345 + seq, "seq": seq}


def _best_us(frame: bytes, taps: int, n: int) -> float:
    conn = _ready()
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(n):
            conn.receive_data(frame)
        best = min(best, (time.process_time() - t0) / n / taps * 1e6)
    return best


def main() -> None:
    own_tap = _frame(m.encoder.encode(m.Tap(seq=123456, card=3_101_000_000_012_345, time_ms=NOW_MS, kind=1, route=42)))
    other_tap = _frame(msgpack.packb({"t": "tap", **_item(123456)}))
    items = [m.TapItem(seq=1000 + i, card=3_101_000_000_012_345 + i, time_ms=NOW_MS, kind=1, route=42)
             for i in range(1000)]
    own_batch = _frame(m.encoder.encode(m.TapBatch(req=7, taps=items)))
    other_batch = _frame(msgpack.packb({"taps": [_item(1000 + i) for i in range(1000)], "req": 7, "t": "taps"}))
    for name, frame, taps, n in (("tap, own encoder", own_tap, 1, 50_000), ("tap, other encoder", other_tap, 1, 50_000),
                                 ("taps x1000, own encoder", own_batch, 1000, 100),
                                 ("taps x1000, other encoder", other_batch, 1000, 100)):
        print(f"{name}: {_best_us(frame, taps, n):.3f} us/tap")


if __name__ == "__main__":
    main()
