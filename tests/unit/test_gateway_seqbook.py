"""SeqBook: a (terminal, seq) reused for another card is refused across shards; bounded;
never refuses a seq it does not hold (issue 16)."""

import tracemalloc

from citycard.domain.taps import Tap
from citycard.gateway.seqbook import SeqBook


def taps(*pairs: tuple[int, int], terminal: int = 7) -> list[Tap]:
    return [Tap(terminal, seq, card, 0, 1, 1) for seq, card in pairs]


def test_reuse_for_another_card_is_refused_a_retry_is_not() -> None:
    book = SeqBook()
    assert book.claim(7, taps((1, 100), (2, 200))) == []
    assert book.claim(7, taps((1, 100))) == []  # a retry: its shard answers the first outcome
    assert book.claim(7, taps((1, 999), (3, 300), (2, 201))) == [0, 2]
    assert book.claim(8, taps((1, 999), terminal=8)) == []  # another terminal's seq 1


def test_the_same_seq_twice_in_one_batch() -> None:
    assert SeqBook().claim(7, taps((5, 100), (5, 101), (5, 100))) == [1]


def test_release_lets_through_only_cards_of_the_shard_that_decided() -> None:
    """Review finding: release forgot the claim, so a card of another shard then claimed the
    seq and had it decided a second time, there."""
    book = SeqBook(home=lambda card: card % 2)
    book.claim(7, taps((1, 999)))  # shard 1 says seq 1 was decided for another card long ago
    book.release(7, 1, 999, 1)
    assert book.holds(7, 1) == -2 and len(book) == 1  # the marker of shard 1, still counted
    assert book.claim(7, taps((1, 101), (1, 999))) == []  # shard 1's cards: it decides
    assert book.claim(7, taps((1, 100))) == [0]  # shard 0 never saw the seq: refused here
    book.release(7, 1, 101, 1)  # not the holder: nothing changes
    assert book.holds(7, 1) == -2


def test_a_marker_refuses_every_card_without_home() -> None:
    book = SeqBook()
    book.claim(7, taps((1, 999)))
    book.release(7, 1, 999, 0)
    assert book.claim(7, taps((1, 999), (1, 100))) == [0, 1]


def test_an_old_backlog_after_a_live_tap_is_never_refused() -> None:
    """Only another card's claim is refused: the seqs of an offline backlog uploaded after a
    live tap (more than the book holds) all go to their shards."""
    book = SeqBook(per_terminal=64, total=1000)
    assert book.claim(7, taps((5000, 1))) == []
    for start in range(1, 3000, 500):
        assert book.claim(7, taps(*((s, s) for s in range(start, start + 500)))) == []
    assert len(book) <= 64 + 64 // 8


def test_bounded_per_terminal_and_in_total() -> None:
    book = SeqBook(per_terminal=10, total=100)
    for terminal in range(1, 51):
        book.claim(terminal, taps(*((s, s) for s in range(1, 26)), terminal=terminal))
        assert len(book) <= 100
    assert len(book) == 100
    assert book.holds(1, 25) is None  # the least recently tapping terminals went first
    assert book.holds(50, 25) == 25 and book.holds(50, 15) is None  # the oldest seqs went first
    book.claim(41, taps((99, 1), terminal=41))  # tapping again: the most recent
    book.claim(51, taps(*((s, s) for s in range(1, 11)), terminal=51))
    assert book.holds(41, 99) == 1 and book.holds(42, 25) is None


def test_memory_is_sparse() -> None:
    """A terminal costs what it holds, not a window up front: 20,000 terminals of one tap each."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book = SeqBook()
    for terminal in range(1, 20_001):
        book.claim(terminal, taps((1, 3_101_000_000_000_017), terminal=terminal))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / 20_000 < 600, used  # bytes a terminal


def test_one_tap_at_a_time_stays_within_an_eighth_over_the_bound() -> None:
    book = SeqBook(per_terminal=16, total=1000)
    for seq in range(1, 501):
        book.claim(7, taps((seq, 1)))
        assert len(book) <= 16 + 2
    assert book.holds(7, 500) == 1 and book.holds(7, 400) is None
