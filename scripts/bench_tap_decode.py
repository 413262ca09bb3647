"""What the protocol fixes of issue 16 add to a tap at the gateway, in us a tap (CPU time,
best of 7 rounds: the machine is shared):

- the typed decode of a tap frame (what the gateway paid before) and the repeated-key check
  added after it (protocols/dupkeys.py), for a single "tap" and a 1000-tap "taps" batch, each
  as this product's client encodes it (fields in struct order: the check's first tier) and
  as another encoder may (keys in another order, defaults left out: its second tier);
- ServerConnection.receive_data whole (framing, decode, check, event);
- SeqBook.claim, one tap a call, with the terminal's book full (the cross-shard seq memory).

    PYTHONPATH=. .venv/bin/python scripts/bench_tap_decode.py
"""

import time
from collections.abc import Callable

import msgpack

from citycard.domain.taps import Tap
from citycard.gateway.seqbook import SeqBook
from citycard.protocols import messages as m
from citycard.protocols.connection import ServerConnection, State
from citycard.protocols.dupkeys import repeats_key

NOW_MS = 1_765_000_000_000
ROUNDS = 7


def _best_us(f: Callable[[], object], n: int, per: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(n):
            f()
        best = min(best, (time.process_time() - t0) / n / per * 1e6)
    return best


def _item(seq: int) -> dict[str, int]:
    return {"kind": 1, "route": 42, "time_ms": NOW_MS, "card": 3_101_000_000_012_345 + seq, "seq": seq}


def _ready() -> ServerConnection:
    conn = ServerConnection(max_frame_bytes=1 << 20)
    conn.state = State.READY  # the handshake is not what is measured
    conn._frames.max_frame_bytes = 1 << 20
    return conn


def main() -> None:
    items = [m.TapItem(seq=1000 + i, card=3_101_000_000_012_345 + i, time_ms=NOW_MS, kind=1, route=42)
             for i in range(1000)]
    bodies = [
        ("tap, own encoder", m.encoder.encode(m.Tap(seq=123456, card=3_101_000_000_012_345, time_ms=NOW_MS,
                                                   kind=1, route=42)), 1),
        ("tap, other encoder", msgpack.packb({"t": "tap", **_item(123456)}), 1),
        ("taps x1000, own encoder", m.encoder.encode(m.TapBatch(req=7, taps=items)), 1000),
        ("taps x1000, other encoder", msgpack.packb({"taps": [_item(1000 + i) for i in range(1000)], "req": 7,
                                                     "t": "taps"}), 1000),
    ]
    call = _best_us(lambda: None, 100_000, 1)  # a call of the loop itself, taken off single taps
    dec, enc = m.client_decoder.decode, m.encoder.encode
    for name, body, per in bodies:
        n = 100_000 if per == 1 else 300
        msg = dec(body)
        frame = len(body).to_bytes(4, "big") + body
        conn = _ready()
        off = call if per == 1 else 0.0
        decode = _best_us(lambda b=body: dec(b), n, per) - off  # type: ignore[misc]
        lists = "taps" if per > 1 else ""
        check = _best_us(lambda b=body, g=msg, f=lists: repeats_key(b, enc(g), f), n, per) - off  # type: ignore[misc]
        whole = _best_us(lambda f=frame, c=conn: c.receive_data(f), n, per) - off  # type: ignore[misc]
        print(f"{name}: typed decode {decode:.3f}, repeated-key check +{check:.3f}, receive_data {whole:.3f} us/tap")
    book = SeqBook()
    taps = [[Tap(7, s, 3_101_000_000_000_017, 0, 1, 1)] for s in range(1, 200_001)]
    t0 = time.process_time()
    for one in taps:
        book.claim(7, one)
    print(f"SeqBook.claim, one tap a call, the terminal's book full: {(time.process_time() - t0) / len(taps) * 1e6:.3f}"
          " us/tap")


if __name__ == "__main__":
    main()
