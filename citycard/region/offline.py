"""The region lab's offline visitors (issue 15 item 2, "offline"; docs/interop.md, "The region
lab"): cards of one city sold rides from their own purse (city-pass) at another city's
validators, uploaded in signed batches over the terminal protocol to that city's gateway,
which keeps each once for its issuer and answers FORWARDED; the acquirer puts them in its
clearing file; after the window closes each issuer runs ``citycard clearing verify``'s code
against the house and rejects the forged ones, which come back as chargebacks next window.

The records are made as the load lab's offline uploader makes them (``loadtest.offline_gen``:
the chip's purse and counter, its TAC under the *issuer city's* card keys, the SAM's batch MAC
under the acquirer's batch key). A share of them is forged (a TAC that does not check): the
acquirer cannot tell (it has no other issuer's keys), only the issuer can.
"""

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..cli.clearing import verify
from ..domain.clearing_records import ClearingRecord, record_id_of
from ..domain.offline import batch_key
from ..domain.offline_book import OfflineCode
from ..domain.taps import TapKind
from ..errors import CityCardError
from ..loadtest.offline_gen import (
    VALIDATOR_FIRST_ID,
    Batch,
    CardDeck,
    CardPurse,
    DtkCache,
    ValidatorBook,
    when_at,
)
from ..offline.desk import issuer_keys
from ..persistence.clearing_export import offline_records
from ..protocols.codes import ErrorCode
from ..terminal.client import ServerError, TerminalClient
from .cities import LabCity

VALIDATORS_PER_CITY = 2  # offline validators each city runs (ids from VALIDATOR_FIRST_ID: no online terminal's)
MIN_CARDS_PER_ISSUER = 60  # each issuer's cards that ride offline elsewhere, at least
PURSE_FEN = 10_000  # each such card's purse at the start (100 yuan): ~50 rides of 100..300 fen
RIDES_PER_PURSE = 40  # cards enough that purses last the run (a forged record's card leaves it)
MAX_BATCH = 8  # records a validator's batch holds at most
LINGER_MS = 1000.0  # a batch closes when its oldest record waited this long
MAX_ATTEMPTS = 12  # an unanswered batch is sent again (the same batch) at most this often
MAX_BACKOFF_S = 3.0
UPLOAD_TIMEOUT_S = 10.0
_FWD = int(OfflineCode.FORWARDED)
_NAMES = {int(c): c.name for c in OfflineCode}


@dataclass(frozen=True)
class OfflinePlan:
    per_s: float  # offline visitor records a second per city (at its validators)
    forged_share: float  # of them, forged (bad TAC); at least one per city when > 0
    duration_s: float
    seed: int = 11


@dataclass(frozen=True, slots=True)
class Upload:
    """One record a validator made and uploaded, and what the acquirer's gateway answered."""

    acquirer: str
    issuer: str
    terminal_id: int
    terminal_seq: int
    card_no: int
    counter: int
    amount_fen: int
    tac: str  # hex
    forged: bool
    code: int  # OfflineCode; -1: never answered

    @property
    def record_id(self) -> str:
        return record_id_of(self.acquirer, self.terminal_id, self.terminal_seq)


@dataclass
class OfflineRun:
    uploads: list[Upload] = field(default_factory=list)
    batches: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    decks: dict[str, CardDeck] = field(default_factory=dict)  # by issuer


async def prepare(cities: list[LabCity]) -> None:
    """Each city's offline validators registered as its terminals (the gateway authenticates them)."""
    for c in cities:
        await c.platform.pool.executemany(
            "INSERT INTO terminals (terminal_id, kind, enabled, name, route) VALUES ($1, $2, true, $3, $4)"
            " ON CONFLICT (terminal_id) DO NOTHING",
            [(tid, int(TapKind.BUS), f"offline-validator-{tid}", 1) for tid in _validator_ids()])


def _validator_ids() -> list[int]:
    return [VALIDATOR_FIRST_ID + i for i in range(VALIDATORS_PER_CITY)]


def decks(cities: list[LabCity], plan: OfflinePlan) -> dict[str, CardDeck]:
    """Each issuer's riding cards, their chips' state and TACs under that issuer's keys; about
    ``per_s * duration_s`` records fall on each issuer's cards."""
    out = {}
    records = plan.per_s * plan.duration_s
    want = max(MIN_CARDS_PER_ISSUER, int(records / RIDES_PER_PURSE + records * plan.forged_share) + 10)
    for c in cities:
        rng = random.Random(plan.seed * 7_919 + c.spec.index)
        cards = sorted(rng.sample(c.cards, min(want, len(c.cards))))
        out[c.code] = CardDeck([CardPurse(n, PURSE_FEN, 1) for n in cards], DtkCache(issuer_keys(c.settings)),
                               random.Random(plan.seed * 104_729 + c.spec.index))
    return out


async def _upload(city: LabCity, v: dict[str, Any], batch: Batch, run: OfflineRun) -> list[int] | None:
    """The same batch until answered (bounded): a lost answer or a gateway away is a resend."""
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            run.retries += 1
            await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), MAX_BACKOFF_S))
        try:
            if v["client"] is None:
                client = TerminalClient(batch.terminal_id, city.settings.city.master_key)
                await asyncio.wait_for(client.connect("127.0.0.1", city.platform.gateway_port), UPLOAD_TIMEOUT_S)
                v["client"] = client
            ack = await asyncio.wait_for(v["client"].upload(batch.batch_seq, batch.records, batch.mac),
                                         UPLOAD_TIMEOUT_S)
        except ServerError as exc:
            if exc.error.code == ErrorCode.INTERNAL:
                continue  # not processed: the same batch later
            run.errors.append(f"{city.code} batch {batch.terminal_id}/{batch.batch_seq}: {exc}")
            return None
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if len(run.errors) < 50:
                run.errors.append(f"{city.code} validator {batch.terminal_id}: {exc!r}")
            old, v["client"] = v["client"], None
            if old is not None:
                await old.close()
            continue
        run.batches += 1
        return list(ack.codes)
    run.errors.append(f"{city.code} batch {batch.terminal_id}/{batch.batch_seq} unanswered after {MAX_ATTEMPTS} tries")
    return None


async def _validator(city: LabCity, others: list[LabCity], tid: int, first: bool, deck: dict[str, CardDeck],
                     plan: OfflinePlan, t0: float, run: OfflineRun) -> None:
    rng = random.Random(plan.seed * 1_000_003 + city.spec.index * 100 + tid % 100)
    book = ValidatorBook(tid, batch_key(bytes.fromhex(city.settings.card.batch_master_key_hex), tid),
                         int(TapKind.BUS), 1, MAX_BATCH, LINGER_MS)
    v: dict[str, Any] = {"client": None}
    issuer_of: dict[tuple[int, int], str] = {}  # (terminal seq) -> issuer city, for the run's list
    rate = plan.per_s / VALIDATORS_PER_CITY
    end = t0 + plan.duration_s
    made = 0

    async def send(batch: Batch | None) -> None:
        if batch is None:
            return
        codes = await _upload(city, v, batch, run)
        for i, r in enumerate(batch.records):
            code = codes[i] if codes is not None and len(codes) == len(batch.records) else -1
            run.uploads.append(Upload(city.code, issuer_of[(r.terminal_id, r.terminal_seq)], r.terminal_id,
                                      r.terminal_seq, r.card_no, r.offline_counter, r.amount_fen, r.tac.hex(),
                                      batch.forged[i], code))

    try:
        await asyncio.sleep(rng.expovariate(rate))
        while time.perf_counter() < end:
            issuer = rng.choice(others)
            forge = plan.forged_share > 0 and ((first and made == 1) or rng.random() < plan.forged_share)
            now_ms = time.time() * 1000.0
            # the card's date and time in UTC: the lab's windows are UTC days (clearing.window_of)
            m = deck[issuer.code].purchase(tid, book.next_seq(), when_at(now_ms, timedelta(0)), book.kind, book.route,
                                           forge)
            if m is not None:
                made += 1
                issuer_of[(tid, m.record.terminal_seq)] = issuer.code
                await send(book.add(m, now_ms))
            if book.due(time.time() * 1000.0):
                await send(book.close(time.time() * 1000.0))
            await asyncio.sleep(min(rng.expovariate(rate), max(0.0, end - time.perf_counter())))
        await send(book.close(time.time() * 1000.0))
    finally:
        if v["client"] is not None:
            await v["client"].close()


async def drive_offline(cities: list[LabCity], plan: OfflinePlan, t0: float) -> OfflineRun:
    """Every city's offline validators for ``plan.duration_s``, visiting cards only."""
    run = OfflineRun()
    if plan.per_s <= 0:
        return run
    deck = decks(cities, plan)
    run.decks = deck
    tasks = [_validator(c, [o for o in cities if o is not c], tid, i == 0, deck, plan, t0, run)
             for c in cities for i, tid in enumerate(_validator_ids())]
    bound_s = plan.duration_s + MAX_ATTEMPTS * (UPLOAD_TIMEOUT_S + MAX_BACKOFF_S) + 30
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), bound_s)
    except TimeoutError:
        run.errors.append(f"offline uploads did not finish within {bound_s:.0f} s")
    return run


async def acquirer_offline(conn: Any, city: LabCity, window: str, codes: dict[int, str]) -> list[ClearingRecord]:
    """The acquirer's offline visitor records for its clearing file: persistence.clearing_export's
    own selection (kept for their issuers, received before now)."""
    recs, _held = await offline_records(conn, city.code, window, 0, int(time.time() * 1000) + 1000,
                                        city.spec.prefix, codes)
    return recs


async def verify_all(cities: list[LabCity], house_url: str, window: str, house: Any) -> dict[str, Any]:
    """Each issuer, as ``citycard clearing verify`` does (the same function), over HTTP; and the
    offline records the house gave it, which it now owes for (its own books)."""
    out: dict[str, Any] = {}
    for c in cities:
        try:
            got = await asyncio.to_thread(verify, house_url, c.code, window, c.spec.key, issuer_keys(c.settings))
        except CityCardError as exc:  # its records refused: the audit fails on it, the lab goes on
            got = {"offline": 0, "online": 0, "rejected": 0, "rejected_before": 0, "failed": [str(exc)]}
        recs = [r for r in await house.records(c.spec.key, c.code, window) if r.kind == "offline"]
        out[c.code] = {**got, "records": [(r.record_id, r.acquirer, r.amount_fen) for r in recs]}
    return out


def figures(run: OfflineRun, verified: dict[str, Any]) -> dict[str, Any]:
    forged = [u for u in run.uploads if u.forged]
    genuine = [u for u in run.uploads if not u.forged]
    codes: dict[str, int] = {}
    for u in run.uploads:
        name = _NAMES.get(u.code, "NO_ANSWER")
        codes[name] = codes.get(name, 0) + 1
    return {"records": len(run.uploads), "genuine": len(genuine), "genuine_fen": sum(u.amount_fen for u in genuine),
            "forged": len(forged), "forged_fen": sum(u.amount_fen for u in forged), "batches": run.batches,
            "retries": run.retries, "refused_by_cards": sum(d.refused for d in run.decks.values()),
            "cards": sum(len(d.purses) for d in run.decks.values()), "codes": codes, "errors": run.errors[:20],
            "issuers": {c: {k: g[k] for k in ("offline", "online", "rejected", "rejected_before", "failed")}
                        | {"offline_fen": sum(r[2] for r in g["records"])} for c, g in verified.items()}}


__all__ = ["OfflinePlan", "OfflineRun", "Upload", "acquirer_offline", "drive_offline", "figures", "prepare",
           "verify_all"]
