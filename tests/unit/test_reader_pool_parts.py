"""The reader pool's pure parts: event lines and JSON, metric label bucketing, the bounded
event queue (fed directly, no pcscd), argument checks."""

import asyncio
import json

import pytest

from citycard.reader_pool import CardRemoved as CardRemovedError
from citycard.reader_pool import (
    CardSession,
    ReaderError,
    ReaderGone,
    ReaderMetrics,
    ReaderPool,
    ReaderPoolError,
)
from citycard.reader_pool.events import (
    CardInserted,
    CardRemoved,
    ReaderAdded,
    ReaderRemoved,
    SelectAnswer,
    event_json,
    event_kind,
    event_line,
)
from citycard.reader_pool.metrics import OTHER_READER, ReaderLabels, sw_label

AT_S = 1_796_000_000.25  # 2026-11-30T00:53:20.250Z
ATR = bytes.fromhex("3B8880010000000000718100F9")


def test_each_event_is_one_line_with_time_kind_reader_and_atr() -> None:
    assert event_line(ReaderAdded("R 00", AT_S)) == "2026-11-30T00:53:20.250Z reader_added 'R 00'"
    assert event_line(CardInserted("R 00", ATR, AT_S)) == (
        "2026-11-30T00:53:20.250Z card_inserted 'R 00' ATR 3B8880010000000000718100F9")
    assert event_line(CardRemoved("R 00", AT_S)).endswith(" card_removed 'R 00'")
    assert event_line(ReaderRemoved("R 00", AT_S)).endswith(" reader_removed 'R 00'")
    with_sw = event_line(CardInserted("R", ATR, AT_S), SelectAnswer("6A82", "file not found"))
    assert with_sw.endswith("ATR 3B8880010000000000718100F9 SELECT -> 6A82 (file not found)")
    failed = event_line(CardInserted("R", ATR, AT_S), SelectAnswer(error="the card left"))
    assert failed.endswith("SELECT failed: the card left")
    assert "\n" not in event_line(ReaderAdded("odd\nname", AT_S))  # repr keeps it on one line


def test_an_event_as_json() -> None:
    assert json.loads(event_json(CardInserted("R", ATR, AT_S), SelectAnswer("9000", "OK"))) == {
        "time": "2026-11-30T00:53:20.250Z", "event": "card_inserted", "reader": "R",
        "atr_hex": "3B8880010000000000718100F9", "select_sw": "9000", "select_meaning": "OK", "select_error": None,
    }
    assert json.loads(event_json(CardRemoved("R", AT_S))) == {
        "time": "2026-11-30T00:53:20.250Z", "event": "card_removed", "reader": "R"}
    assert event_kind(ReaderRemoved("R", AT_S)) == "reader_removed"


@pytest.mark.parametrize(("sw", "label"), [
    (0x9000, "9000"), (0x6A82, "6A82"), (0x9401, "9401"),  # known: exact
    (0x6110, "61XX"), (0x6C00, "6CXX"), (0x63C2, "63CX"),  # families carrying a count
    (0x6A99, "6AXX"), (0x1234, "12XX"), (0x9FFF, "9FXX"),  # unknown: by class
    (-1, "invalid"), (0x10000, "invalid"),
])
def test_status_word_labels_are_exact_when_known_else_the_class(sw: int, label: str) -> None:
    assert sw_label(sw) == label


def test_status_word_labels_stay_few_whatever_cards_answer() -> None:
    assert len({sw_label(sw) for sw in range(0x10000)}) <= 256 + 40


def test_reader_labels_are_bounded() -> None:
    labels = ReaderLabels(max_readers=2)
    assert [labels("a"), labels("b"), labels("c"), labels("a")] == ["a", "b", OTHER_READER, "a"]


def test_metrics_count_apdus_by_bucketed_status_word() -> None:
    m = ReaderMetrics(max_readers=1)
    m.apdu("R", 0x9000, 0.003)
    m.apdu("R", 0x6A99, 0.003)
    m.apdu("S", 0x9000, 0.003)  # a second reader beyond max_readers: "other"
    m.error("R", "timeout")
    get = m.registry.get_sample_value
    assert get("citycard_reader_apdus_total", {"reader": "R", "sw": "9000"}) == 1
    assert get("citycard_reader_apdus_total", {"reader": "R", "sw": "6AXX"}) == 1
    assert get("citycard_reader_apdus_total", {"reader": OTHER_READER, "sw": "9000"}) == 1
    assert get("citycard_reader_apdu_seconds_count", {}) == 3
    assert get("citycard_reader_errors_total", {"reader": "R", "kind": "timeout"}) == 1


def test_a_full_event_queue_drops_the_oldest_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    pool = ReaderPool(event_queue_depth=2)  # not started: fed as the monitor would
    pool._apply([ReaderAdded("R", AT_S), CardInserted("R", ATR, AT_S), CardRemoved("R", AT_S)])
    assert [event_kind(e) for e in pool._events] == ["card_inserted", "card_removed"]
    assert pool.events_dropped == 1
    assert pool.metrics.registry.get_sample_value("citycard_reader_errors_total",
                                                  {"reader": "R", "kind": "events_dropped"}) == 1
    assert "dropped the oldest, reader_added" in caplog.text
    assert pool.readers() == ["R"] and pool.card_atr("R") is None
    assert pool.metrics.registry.get_sample_value("citycard_readers_present") == 1
    assert pool.metrics.registry.get_sample_value("citycard_reader_cards_seen_total", {"reader": "R"}) == 1


@pytest.mark.parametrize("bad", [{"apdu_timeout_ms": 0}, {"queue_depth": 0}, {"event_queue_depth": 0},
                                 {"max_readers": 65}])
def test_bad_settings_are_refused_by_name(bad: dict[str, int]) -> None:
    with pytest.raises(ReaderPoolError, match=next(iter(bad))):
        ReaderPool(**bad)  # type: ignore[arg-type]


def test_a_session_outlives_neither_its_card_nor_its_reader() -> None:
    """Fed as the monitor would, no pcscd: a session's commands fail fast, typed, once its card
    left (even if another came) or its reader went; no command reaches a worker."""
    select = bytes.fromhex("00A4040008A00000063201010500")

    async def run() -> None:
        pool = ReaderPool()
        pool._loop, pool._changed = asyncio.get_running_loop(), asyncio.Event()
        pool._apply([ReaderAdded("R", AT_S), CardInserted("R", ATR, AT_S)])
        first = CardSession(pool, "R", ATR, pool._readers["R"].generation)
        pool._apply([CardRemoved("R", AT_S), CardInserted("R", ATR, AT_S)])  # out and back in
        with pytest.raises(CardRemovedError):
            await first.transmit(select)
        second = CardSession(pool, "R", ATR, pool._readers["R"].generation)
        pool._apply([CardRemoved("R", AT_S), ReaderRemoved("R", AT_S)])
        with pytest.raises(ReaderGone):
            await second.transmit(select)
        with pytest.raises(ReaderError, match="4 to 65544 bytes"):
            await second.transmit(b"\x00\xa4")
        assert pool._readers == {}
        assert pool.metrics.registry.get_sample_value("citycard_readers_present") == 0

    asyncio.run(run())
