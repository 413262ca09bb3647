"""PIN hashing: scrypt with a random salt, its parameters stored beside the hash.

A 6-digit PIN has only 10**6 values, so no hash makes a stolen table safe on its own; a slow
KDF makes each guess cost ~0.1 s and the lockout bounds online guesses. The parameters are
kept per row (``scrypt:n=16384,r=8,p=1``) so the cost can be raised later: a row is verified
with its own parameters and rehashed with the current ones on the next right PIN.

The functions here are pure (salt comes in as an argument); ``KdfGate`` runs them off the
event loop, a bounded number at a time.
"""

import asyncio
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

PIN_PATTERN = r"^[0-9]{6}$"  # for the OpenAPI document; ASCII only: "\d" admits other scripts' digits
SALT_BYTES = 16
DKLEN_BYTES = 32
# fullmatch, not "$": "$" also matches before a trailing newline
_PIN = re.compile(r"[0-9]{6}")
_KDF = re.compile(r"scrypt:n=([0-9]{1,8}),r=([0-9]{1,3}),p=([0-9]{1,3})")
# Bounds on stored parameters, so a corrupt row cannot make one check take gigabytes; the
# largest cost settings allow (n=2**20, r=8: ~1 GiB) still fits.
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
_MAX_MEM_BYTES = 1100 * 2**20

T = TypeVar("T")


@dataclass(frozen=True)
class KdfParams:
    n: int
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (2 <= self.n <= MAX_N and self.n & (self.n - 1) == 0):
            raise ValueError(f"scrypt n must be a power of two in [2, {MAX_N}]")
        if not (1 <= self.r <= MAX_R and 1 <= self.p <= MAX_P):
            raise ValueError(f"scrypt r must be in [1, {MAX_R}], p in [1, {MAX_P}]")
        if self.mem_bytes > _MAX_MEM_BYTES:
            raise ValueError("scrypt parameters need too much memory")

    @property
    def mem_bytes(self) -> int:
        # what OpenSSL allocates: V (128*r*(n+2)) and B (128*r*p), plus slack
        return 128 * self.r * (self.n + 2 + self.p) + 65536

    def text(self) -> str:
        return f"scrypt:n={self.n},r={self.r},p={self.p}"


def parse_kdf(text: str) -> KdfParams:
    """The parameters a ``kdf`` column names; ValueError for anything else."""
    m = _KDF.fullmatch(text)
    if m is None:
        raise ValueError(f"unknown PIN KDF {text[:60]!r}")
    return KdfParams(int(m[1]), int(m[2]), int(m[3]))


def pin_well_formed(pin: str) -> bool:
    return _PIN.fullmatch(pin) is not None


def derive(pin: str, salt: bytes, params: KdfParams) -> bytes:
    if not pin_well_formed(pin):
        raise ValueError("a PIN is 6 ASCII digits")
    return hashlib.scrypt(pin.encode("ascii"), salt=salt, n=params.n, r=params.r, p=params.p,
                          dklen=DKLEN_BYTES, maxmem=params.mem_bytes)


def hash_pin(pin: str, salt: bytes, params: KdfParams) -> tuple[bytes, str]:
    """(hash, kdf text) to store beside ``salt``."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    return derive(pin, salt, params), params.text()


def pin_matches(pin: str, salt: bytes, stored_hash: bytes, kdf: str) -> bool:
    """True if ``pin`` derives ``stored_hash`` under the stored parameters (constant-time compare)."""
    if not pin_well_formed(pin):
        return False
    return hmac.compare_digest(derive(pin, salt, parse_kdf(kdf)), stored_hash)


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


class KdfBusy(Exception):
    """No place for another PIN check: ``per_source`` when the asking source has its share in
    progress (429 for it alone), else the whole gate is full (503). No try is counted."""

    def __init__(self, per_source: bool) -> None:
        super().__init__("this source has its share of PIN checks in progress" if per_source
                         else "too many PIN checks in progress")
        self.per_source = per_source


class KdfGate:
    """Runs KDF calls in threads (scrypt releases the GIL), at most ``workers`` at once so PIN
    checks cannot take every core from the gateway, with at most ``capacity`` requests inside
    (running or waiting) so a flood gets refused instead of an unbounded queue, and at most
    ``per_source`` of them from one source, so one client cannot fill the gate for everyone."""

    def __init__(self, workers: int, capacity: int, per_source: int) -> None:
        if not 1 <= workers <= capacity or not 1 <= per_source <= capacity:
            raise ValueError("need 1 <= workers <= capacity and 1 <= per_source <= capacity")
        self.capacity = capacity
        self.per_source = per_source
        self._sem = asyncio.Semaphore(workers)
        self._inside = 0
        self._by_source: dict[str, int] = {}  # only sources with a check inside: bounded by capacity

    @contextmanager
    def ticket(self, source: str | None) -> Iterator[None]:
        """Hold a place for one request's whole check; KdfBusy when there is none. ``source``
        None: an operator token's request (a counter, a payment system), held to the whole
        gate only: their tokens are few, known and limited per token."""
        held = self._by_source.get(source, 0) if source is not None else 0
        if source is not None and held >= self.per_source:
            raise KdfBusy(per_source=True)
        if self._inside >= self.capacity:
            raise KdfBusy(per_source=False)
        self._inside += 1
        if source is None:
            try:
                yield
            finally:
                self._inside -= 1
            return
        self._by_source[source] = held + 1
        try:
            yield
        finally:
            self._inside -= 1
            left = self._by_source[source] - 1
            if left:
                self._by_source[source] = left
            else:
                del self._by_source[source]

    @property
    def inside(self) -> int:
        return self._inside

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._sem:
            return await asyncio.to_thread(fn, *args)
