"""tasks.Pacer: a paced job sleeps as long as its step took, and at least the minimum."""

import asyncio

import pytest

from citycard.tasks import Pacer


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0
        self.slept_s: list[float] = []


def _run_with_clock(clock: _Clock, body, monkeypatch):
    async def sleep(delay_s, *a, **k):
        clock.slept_s.append(delay_s)
        clock.now_s += delay_s

    async def main():
        monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: clock.now_s)  # the pacer's clock
        monkeypatch.setattr(asyncio, "sleep", sleep)
        await body(Pacer(0.02))

    asyncio.run(main())
    monkeypatch.undo()


def test_a_pause_is_as_long_as_the_step_and_at_least_the_minimum(monkeypatch):
    clock = _Clock()

    async def body(pacer):
        for step_s in (0.5, 0.001, 0.2):
            clock.now_s += step_s  # the step's work
            await pacer.pause()

    _run_with_clock(clock, body, monkeypatch)
    assert clock.slept_s == pytest.approx([0.5, 0.02, 0.2])


def test_the_pause_itself_does_not_count_as_the_next_steps_work(monkeypatch):
    clock = _Clock()

    async def body(pacer):
        clock.now_s += 1.0
        await pacer.pause()  # 1.0 s of sleep, then the mark moves past it
        clock.now_s += 0.1
        await pacer.pause()

    _run_with_clock(clock, body, monkeypatch)
    assert clock.slept_s == pytest.approx([1.0, 0.1])
