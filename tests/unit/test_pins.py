"""PIN hashing helpers: scrypt with the stored parameters, never a plain hash; the KDF gate."""

import asyncio
import hashlib
import threading
import time

import pytest

from citycard.cards.pin_kdf import (
    DKLEN_BYTES,
    SALT_BYTES,
    KdfBusy,
    KdfGate,
    KdfParams,
    derive,
    hash_pin,
    new_salt,
    parse_kdf,
    pin_matches,
    pin_well_formed,
)

CHEAP = KdfParams(16)  # tests only: the production cost comes from settings (16384)
SALT = bytes(range(SALT_BYTES))


def test_kdf_text_round_trips_and_names_scrypt() -> None:
    # the largest cost the settings allow (pin_kdf_n <= 2**20) is accepted
    for params in (KdfParams(16384), KdfParams(2, 1, 1), KdfParams(2**20), KdfParams(1024, 8, 2)):
        assert parse_kdf(params.text()) == params
    assert KdfParams(16384).text() == "scrypt:n=16384,r=8,p=1"


@pytest.mark.parametrize("text", [
    "", "sha256", "pbkdf2:n=16384,r=8,p=1", "scrypt:n=16384,r=8", "scrypt:n=16384,r=8,p=1,x=2",
    "scrypt:n=1000,r=8,p=1",  # not a power of two
    "scrypt:n=1,r=8,p=1", "scrypt:n=0,r=8,p=1", "scrypt:n=4194304,r=8,p=1",  # out of bounds
    "scrypt:n=1048576,r=16,p=1",  # two gigabytes per check
    "scrypt:n=16384,r=0,p=1", "scrypt:n=16384,r=8,p=0", "scrypt:n=16384,r=8,p=17",
    " scrypt:n=16384,r=8,p=1", "scrypt:n=16384,r=8,p=1\n", "SCRYPT:n=16384,r=8,p=1",
])
def test_unknown_or_unsafe_kdf_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_kdf(text)


@pytest.mark.parametrize("pin", ["482913", "000000", "999999"])
def test_well_formed_pins(pin: str) -> None:
    assert pin_well_formed(pin)


@pytest.mark.parametrize("pin", [
    "", "12345", "1234567", "12345a", " 12345", "123456 ", "123456\n", "-12345", "+12345", "12 456",
    "１２３４５６",  # fullwidth digits: str.isdigit() says yes, a keypad cannot type them
    "١٢٣٤٥٦",  # Arabic-Indic digits
])
def test_malformed_pins(pin: str) -> None:
    assert not pin_well_formed(pin)
    with pytest.raises(ValueError):
        derive(pin, SALT, CHEAP)
    assert not pin_matches(pin, SALT, b"\0" * DKLEN_BYTES, CHEAP.text())


def test_hash_is_scrypt_with_the_given_parameters_not_a_plain_hash() -> None:
    pin_hash, kdf = hash_pin("482913", SALT, CHEAP)
    assert kdf == "scrypt:n=16,r=8,p=1"
    assert len(pin_hash) == DKLEN_BYTES
    assert pin_hash == hashlib.scrypt(b"482913", salt=SALT, n=16, r=8, p=1, dklen=32)
    assert pin_hash not in (hashlib.sha256(b"482913").digest(), hashlib.sha256(SALT + b"482913").digest(),
                            hashlib.sha256(b"482913" + SALT).digest())


def test_salt_and_cost_change_the_hash() -> None:
    a, _ = hash_pin("482913", SALT, CHEAP)
    assert hash_pin("482913", SALT, CHEAP)[0] == a  # deterministic for one salt
    assert hash_pin("482913", bytes(SALT_BYTES), CHEAP)[0] != a
    assert hash_pin("482913", SALT, KdfParams(32))[0] != a
    assert hash_pin("482914", SALT, CHEAP)[0] != a


def test_salt_must_be_16_bytes() -> None:
    with pytest.raises(ValueError):
        hash_pin("482913", b"short", CHEAP)
    salts = {new_salt() for _ in range(100)}
    assert len(salts) == 100 and all(len(s) == SALT_BYTES for s in salts)


def test_verification_uses_the_stored_parameters() -> None:
    pin_hash, kdf = hash_pin("482913", SALT, KdfParams(32, 4, 1))
    assert pin_matches("482913", SALT, pin_hash, kdf)
    assert not pin_matches("482914", SALT, pin_hash, kdf)
    assert not pin_matches("482913", SALT, pin_hash, "scrypt:n=16,r=4,p=1")  # other cost: other hash
    assert not pin_matches("482913", bytes(SALT_BYTES), pin_hash, kdf)
    assert not pin_matches("482913", SALT, pin_hash[:-1] + bytes([pin_hash[-1] ^ 1]), kdf)
    with pytest.raises(ValueError):
        pin_matches("482913", SALT, pin_hash, "md5")


def test_gate_refuses_beyond_its_capacity() -> None:
    gate = KdfGate(workers=1, capacity=2, per_source=2)
    with gate.ticket("a"), gate.ticket("b"):
        assert gate.inside == 2
        with pytest.raises(KdfBusy) as busy, gate.ticket("c"):
            pass
        assert busy.value.per_source is False
    assert gate.inside == 0
    with gate.ticket("a"):  # places come back, also after an error inside
        pass
    with pytest.raises(RuntimeError), gate.ticket("a"):
        raise RuntimeError("boom")
    assert gate.inside == 0
    with pytest.raises(ValueError):
        KdfGate(workers=3, capacity=2, per_source=1)
    with pytest.raises(ValueError):
        KdfGate(workers=1, capacity=2, per_source=3)


def test_one_source_gets_only_its_share_and_others_still_get_in() -> None:
    gate = KdfGate(workers=1, capacity=64, per_source=2)
    with gate.ticket("flood"), gate.ticket("flood"):
        for _ in range(70):  # the 70-client flood of the review: all refused for this source alone
            with pytest.raises(KdfBusy) as busy, gate.ticket("flood"):
                pass
            assert busy.value.per_source is True
        with gate.ticket("holder"):
            assert gate.inside == 3
    assert gate.inside == 0
    with gate.ticket("flood"), gate.ticket("flood"):  # its places came back
        pass


def test_gate_runs_at_most_workers_at_once_off_the_loop() -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def slow(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return x * 2

    async def scenario() -> list[int]:
        gate = KdfGate(workers=2, capacity=10, per_source=10)
        loop_ticks = 0

        async def ticker() -> None:
            nonlocal loop_ticks
            while True:
                loop_ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        out = await asyncio.gather(*(gate.run(slow, i) for i in range(8)))
        t.cancel()
        assert loop_ticks >= 10  # the loop kept running while the KDF worked
        return out

    assert asyncio.run(scenario()) == [i * 2 for i in range(8)]
    assert peak == 2


def test_operator_checks_are_held_to_the_whole_gate_only() -> None:
    gate = KdfGate(workers=1, capacity=3, per_source=1)
    with gate.ticket(None), gate.ticket(None), gate.ticket("198.51.100.1"):
        assert gate.inside == 3
        with pytest.raises(KdfBusy) as busy, gate.ticket(None):
            pass
        assert busy.value.per_source is False
    assert gate.inside == 0
