"""The load lab's offline generator, pure parts: chips, records, batches, the audit's verdict."""

import random
from argparse import Namespace
from dataclasses import replace

import pytest

from citycard.cli.main import _check_offline_args
from citycard.domain.epurse_crypto import (
    COMPOUND_PURCHASE,
    PURCHASE_EP,
    PurchaseInput,
    When,
    purchase_tac,
)
from citycard.domain.offline import IssuerKeys, batch_key, batch_mac_ok, tac_ok, terminal_id_bytes
from citycard.domain.taps import MAX_TERMINAL_ID
from citycard.errors import CityCardError
from citycard.loadtest.audit import OfflineAudit
from citycard.loadtest.city import FIRST_TERMINAL_ID, city_for_scale
from citycard.loadtest.offline_gen import (
    FARES_FEN,
    VALIDATOR_FIRST_ID,
    VALIDATOR_MAX,
    CardDeck,
    CardPurse,
    CardTacs,
    DtkCache,
    ValidatorBook,
    WhenCache,
    forge_times_ms,
    is_validator,
    validator_ids,
    when_at,
)
from citycard.loadtest.summary import offline_section

ISSUER = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                           "F0E0D0C0B0A090807060504030201000")  # the demo keys (docs/protocol.md 15.5)
CARD = 33010000000000173
T0_MS = 1_796_000_000_000.0


def _deck(*purses: CardPurse, seed: int = 1) -> CardDeck:
    return CardDeck(list(purses), DtkCache(ISSUER), random.Random(seed))


def test_validator_ids_never_collide_with_a_megacitys_terminals():
    ids = validator_ids(VALIDATOR_MAX)
    biggest_city = city_for_scale(10)
    assert FIRST_TERMINAL_ID + biggest_city.n_terminals < VALIDATOR_FIRST_ID
    assert ids[0] == VALIDATOR_FIRST_ID and ids[-1] <= MAX_TERMINAL_ID
    assert all(is_validator(t) for t in ids) and not is_validator(FIRST_TERMINAL_ID)
    assert not is_validator(ids[-1] + 1)
    for bad in (0, VALIDATOR_MAX + 1):
        with pytest.raises(ValueError, match="offline terminals"):
            validator_ids(bad)


def test_a_purchase_debits_the_chip_and_its_tac_checks_with_the_issuers_keys():
    deck = _deck(CardPurse(CARD, 1000, 7))
    when = when_at(T0_MS)
    made = deck.purchase(VALIDATOR_FIRST_ID, 41, when, 1, 3)
    assert made is not None and not made.forged
    r = made.record
    assert r.card_no == CARD and r.offline_counter == 7 and r.amount_fen in FARES_FEN
    assert r.balance_after_fen == 1000 - r.amount_fen and r.terminal_seq == 41 and (r.kind, r.route) == (1, 3)
    assert tac_ok(ISSUER.dtk(CARD), r)
    assert not tac_ok(ISSUER.dtk(CARD + 10), r)  # another card's key does not check it
    p = deck.by_card[CARD]
    assert (p.balance_fen, p.counter, p.records, p.spent_fen, p.first_counter) == (
        r.balance_after_fen, 8, 1, r.amount_fen, 7)


def test_chips_stay_consistent_over_many_purchases_and_refuse_what_they_cannot_pay():
    purses = [CardPurse(CARD + 17 * i, 500 + 100 * i, 0) for i in range(5)]
    deck = _deck(*purses, seed=3)
    made = [deck.purchase(VALIDATOR_FIRST_ID + i % 3, i + 1, when_at(T0_MS), 1, 1) for i in range(200)]
    records = [m.record for m in made if m is not None]
    assert deck.refused == len(made) - len(records) > 0  # small purses run dry: the card says no
    for i, p in enumerate(purses):
        mine = [r for r in records if r.card_no == p.card_no]
        assert [r.offline_counter for r in mine] == list(range(len(mine))) == list(range(p.counter))
        assert p.balance_fen == 500 + 100 * i - sum(r.amount_fen for r in mine)
        assert p.balance_fen >= 0 and all(r.balance_after_fen >= 0 for r in mine)
        if mine:
            assert mine[-1].balance_after_fen == p.balance_fen


def test_a_forged_record_fails_its_tac_leaves_the_chip_alone_and_the_card_rides_no_more():
    deck = _deck(CardPurse(CARD, 10_000, 3), CardPurse(CARD + 17, 10_000, 0))
    made = deck.purchase(VALIDATOR_FIRST_ID, 9, when_at(T0_MS), 1, 1, forge=True)
    assert made is not None and made.forged
    r = made.record
    assert not tac_ok(ISSUER.dtk(r.card_no), r)
    p = deck.by_card[r.card_no]
    assert p.records == 0 and p.spent_fen == 0 and p.balance_fen == 10_000
    assert deck.forged == [(r.card_no, r.offline_counter)]
    others = {deck.purchase(VALIDATOR_FIRST_ID, 10 + i, when_at(T0_MS), 1, 1).record.card_no for i in range(20)}
    assert others == {CARD + 17 if r.card_no == CARD else CARD}
    deck.purchase(VALIDATOR_FIRST_ID, 99, when_at(T0_MS), 1, 1, forge=True)
    assert deck.purchase(VALIDATOR_FIRST_ID, 100, when_at(T0_MS), 1, 1) is None  # no card left


def test_batches_close_full_or_after_linger_signed_with_the_sams_key():
    key = batch_key(bytes(range(16)), VALIDATOR_FIRST_ID)
    book = ValidatorBook(VALIDATOR_FIRST_ID, key, 1, 5, max_batch=3, linger_ms=100.0, batch_seq=40, terminal_seq=7)
    deck = _deck(CardPurse(CARD, 10_000, 0))
    closed = []
    for i in range(4):
        m = deck.purchase(book.terminal_id, book.next_seq(), when_at(T0_MS), 1, 5)
        b = book.add(m, 10.0 * i)
        if b:
            closed.append(b)
    assert len(closed) == 1
    first = closed[0]
    assert first.batch_seq == 41 and first.due_ms == 20.0 and len(first.records) == 3
    assert [r.terminal_seq for r in first.records] == [8, 9, 10]
    assert batch_mac_ok(key, book.terminal_id, 41, first.records, first.mac)
    assert not batch_mac_ok(key, book.terminal_id, 42, first.records, first.mac)
    assert not book.due(129.0) and book.due(130.0)  # the 4th record waited since 30 ms
    second = book.close(130.0)
    assert second.batch_seq == 42 and len(second.records) == 1 and book.close(131.0) is None
    with pytest.raises(ValueError, match="1..1000"):
        ValidatorBook(1, key, 1, 1, max_batch=1001, linger_ms=1.0)


def test_the_generators_tac_is_purchase_tac():
    tacs = CardTacs(DtkCache(ISSUER), max_cards=3)
    rng = random.Random(11)
    for _ in range(300):
        card = CARD + 17 * rng.randrange(6)
        amount, seq, counter = rng.randrange(2**32), rng.randrange(2**32), rng.randrange(2**16)
        tid = terminal_id_bytes(rng.randrange(1, 2**48))
        typ = rng.choice((PURCHASE_EP, COMPOUND_PURCHASE))
        when = When.of(f"{rng.randrange(2000, 2100)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
                       f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}")
        want = purchase_tac(ISSUER.dtk(card), PurchaseInput(amount, tid, seq, when, bytes(4), counter, typ))
        assert tacs.tac(card, amount, typ, tid, seq, when) == want
        assert len(tacs) <= 3


def test_tac_keys_are_kept_bounded():
    cache = DtkCache(ISSUER, max_cards=2)
    for card in (CARD, CARD + 17, CARD + 34, CARD):
        assert cache(card) == ISSUER.dtk(card)
        assert len(cache) <= 2


def test_the_validators_clock_is_the_citys_local_time_cached_per_second():
    when = when_at(0.0)
    assert (when.date.hex(), when.time.hex()) == ("19700101", "080000")
    cache = WhenCache()
    a, b, c = cache(T0_MS), cache(T0_MS + 999), cache(T0_MS + 1000)
    assert a is b and c != a


def test_forged_records_are_spread_over_the_run():
    assert forge_times_ms(3, 4000.0) == [1000.0, 2000.0, 3000.0]
    assert forge_times_ms(0, 4000.0) == []


_GOOD = OfflineAudit(cards=3, records_made=10, forged_made=1, journaled=10, journaled_matching=10, missing=0,
                     extra=0, keys_twice=0, not_accepted_rows=0, shadow_mismatches=0, chip_mismatches=0,
                     tacs_checked=10, tacs_bad=0, rejects=1, forged_rejected=1, unexpected_rejects=0,
                     forged_hotlisted=1)


@pytest.mark.parametrize("change", [
    {"missing": 1}, {"extra": 1}, {"keys_twice": 1}, {"journaled_matching": 9}, {"journaled": 11},
    {"shadow_mismatches": 1}, {"chip_mismatches": 1}, {"tacs_checked": 9}, {"tacs_bad": 1},
    {"forged_rejected": 0}, {"forged_hotlisted": 0}, {"unexpected_rejects": 1}, {"not_accepted_rows": 1},
])
def test_the_offline_audit_fails_on_any_discrepancy(change):
    assert _GOOD.ok and _GOOD.as_dict()["ok"]
    bad = replace(_GOOD, **change)
    assert not bad.ok and bad.as_dict()["ok"] is False


def _uploader(**over):
    up = {"records_made": 11, "records_acked": 11, "forged_made": 1, "batches_acked": 2, "codes": {"ACCEPTED": 10,
          "BAD_TAC": 1}, "latency_ms": {"p50": 3.0, "p99": 9.0}, "replays_sent": 1, "replays_matched": 1,
          "failed_batches": 0, "unexpected_codes": [], "cpu_s": 0.0011, "last_ack_ms": 2500.0}
    return up | over


@pytest.mark.parametrize(("over", "failing"), [
    ({}, None),
    ({"replays_matched": 0}, "replays answered identically"),
    ({"records_acked": 10}, "every record answered"),
    ({"unexpected_codes": ["card 1 counter 0: DUPLICATE, expected ACCEPTED"]}, "codes as expected"),
    ({"failed_batches": 1}, "no batch left unanswered"),
])
def test_the_reports_offline_section_says_what_failed(over, failing):
    sec = offline_section({"spec": {"rate_per_s": 5.0}, "uploader": _uploader(**over), "audit": _GOOD.as_dict()},
                          duration_s=2.0)
    assert sec["rate_per_s"] == 5.0 and sec["offered_records_per_s"] == 5.5
    assert sec["acked_records_per_s"] == pytest.approx(sec["records_acked"] / 2.5)
    assert sec["generator_cpu_us_per_record"] == pytest.approx(100.0)
    assert sec["ok"] is (failing is None)
    assert [k for k, v in sec["checks"].items() if not v] == ([] if failing is None else [failing])
    bad_audit = offline_section({"uploader": _uploader(), "audit": replace(_GOOD, tacs_bad=1).as_dict()}, 2.0)
    assert not bad_audit["ok"] and not bad_audit["checks"]["audit passed"]


def _args(**over):
    base = {"offline_rate": 100.0, "offline_batch": 500, "offline_terminals": 8, "offline_cards": 10,
            "offline_forged": 0, "offline_linger_ms": 1000.0, "offline_replay_share": 0.02, "find_max": False}
    return Namespace(**(base | over))


@pytest.mark.parametrize("over", [{"offline_rate": -1.0}, {"offline_batch": 0}, {"offline_batch": 1001},
                                  {"offline_terminals": 0}, {"offline_cards": 0}, {"offline_forged": -1},
                                  {"offline_replay_share": 1.5}, {"find_max": True},
                                  {"offline_rate": 0.0, "offline_forged": 2}])
def test_bad_offline_arguments_are_refused(over):
    _check_offline_args(_args())
    with pytest.raises(CityCardError, match="--offline"):
        _check_offline_args(_args(**over))
