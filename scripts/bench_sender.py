"""What the load lab's generator costs: one sender process against a fake gateway that answers
at once (in its own process, so its CPU is not counted), at several rates.

    .venv/bin/python scripts/bench_sender.py [--rates 10000,30000,60000] [--terminals 32] [--linger-ms 10]

Prints, per rate: taps answered, the sender's CPU us per tap (its own process_time), the
accepted rate, and how far it fell behind its schedule (max send lag).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citycard.loadtest.city import CardNumbers, TerminalPlan  # noqa: E402
from citycard.loadtest.latency import LatencyTotals  # noqa: E402
from citycard.loadtest.schedule import Steady  # noqa: E402
from citycard.loadtest.sender import Sender, SenderSpec  # noqa: E402
from citycard.loadtest.tapmix import TapMix  # noqa: E402


def _gateway(port_out: object, stop: object) -> None:
    import uvloop

    from citycard.loadtest.fake_gateway import FakeGateway

    async def run() -> None:
        gw = FakeGateway()
        port_out.value = await gw.start()  # type: ignore[attr-defined]
        while not stop.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.1)
        await gw.stop()

    uvloop.run(run())


def bench(rate: float, terminals: int, linger_ms: float, duration_s: float, port: int) -> dict[str, float]:
    import uvloop

    reports: list[dict[str, object]] = []
    spec = SenderSpec(
        index=0, host="127.0.0.1", port=port, master_key=b"k" * 32,
        terminals=[TerminalPlan(100_000 + i, 1, 1) for i in range(terminals)], first_seq={},
        terminal_weights=[1.0] * terminals, home_cards=CardNumbers(100_000), visitor_cards=[],
        mix=TapMix(), profile=Steady(rate), max_count=int(rate * duration_s * 2), duration_ms=duration_s * 1000,
        seed=1, origin_unix_s=time.time() + 1.0, out_dir=tempfile.mkdtemp(), linger_ms=linger_ms,
        max_batch=1000, replay_share=0.0,
    )
    final = uvloop.run(Sender(spec, reports.append).run())
    totals = LatencyTotals.from_wire(final["totals"])  # type: ignore[arg-type]
    cpu_s = float(final["cpu_s"])  # type: ignore[arg-type]
    return {"rate": rate, "answered": totals.answered, "cpu_us_per_tap": cpu_s * 1e6 / max(totals.answered, 1),
            "accepted_per_s": totals.answered / duration_s, "max_send_lag_ms": totals.max_send_lag_ms,
            "p99_ms": totals.percentiles().p99_ms}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rates", default="10000,30000,60000")
    p.add_argument("--terminals", type=int, default=32)
    p.add_argument("--linger-ms", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()
    ctx = multiprocessing.get_context("spawn")
    port, stop = ctx.Value("i", 0), ctx.Event()
    gw = ctx.Process(target=_gateway, args=(port, stop), daemon=True)
    gw.start()
    deadline = time.monotonic() + 30
    while not port.value and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            r = bench(rate, args.terminals, args.linger_ms, args.duration, port.value)
            print(f"rate {r['rate']:>8,.0f}/s: answered {r['answered']:>8,.0f}, sender CPU "
                  f"{r['cpu_us_per_tap']:5.1f} us/tap, accepted {r['accepted_per_s']:>8,.0f}/s, "
                  f"max send lag {r['max_send_lag_ms']:7.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
    finally:
        stop.set()
        gw.join(timeout=10)


if __name__ == "__main__":
    main()
