"""A bare Ray async-actor call on this machine: sequential echo calls, a call that awaits 4 ms
(like a group commit), and three of those in flight. What the gateway pays per shard call
before any work is done.

    .venv/bin/python scripts/bench_ray_call.py
"""

import asyncio
import statistics
import time

import ray

CALLS = 300
PAYLOAD = b"x" * 3000  # ~30 taps, msgpack


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Echo:
    async def echo(self, x: bytes) -> bytes:
        return x

    async def commit_like(self, x: bytes) -> bytes:
        await asyncio.sleep(0.004)
        return x


def _line(name: str, lat_ms: list[float]) -> str:
    lat_ms.sort()
    return (f"{name}: mean {statistics.mean(lat_ms):.2f} ms, p50 {lat_ms[len(lat_ms) // 2]:.2f}, "
            f"p99 {lat_ms[int(len(lat_ms) * 0.99)]:.2f}")


async def main() -> None:
    actor = Echo.remote()  # type: ignore[attr-defined]
    await actor.echo.remote(b"")
    for name in ("echo", "commit_like"):
        lat = []
        for _ in range(CALLS):
            started = time.perf_counter()
            await getattr(actor, name).remote(PAYLOAD)
            lat.append((time.perf_counter() - started) * 1000)
        print(_line(name, lat))
    lat = []

    async def one() -> None:
        started = time.perf_counter()
        await actor.commit_like.remote(PAYLOAD)
        lat.append((time.perf_counter() - started) * 1000)

    for _ in range(CALLS // 3):
        await asyncio.gather(one(), one(), one())
    print(_line("commit_like, 3 in flight", lat))


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        asyncio.run(main())
    finally:
        ray.shutdown()
