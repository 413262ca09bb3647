"""Loading the city-pass's purse at a counter (docs/api.md, "Purse loads").

The card answers INITIALIZE FOR LOAD with its balance, online counter, a random and MAC1 under
its load key; the host checks MAC1 with the card's DLK, moves the money (from the holder's
account purse through its shard, or records cash), journals the load as pending once per
idempotency key, raises the card's shadow balance, and answers MAC2 and the date and time it
used, for CREDIT FOR LOAD. The card's load TAC then confirms it.

A retry with the same key and the card's same online counter (the credit never reached the
card) gets a fresh MAC2 for the card's new random and moves no money; once the card's online
counter moved past the load's, the answer is "already loaded".
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ..actors.shard_client import ShardClient
from ..domain import epurse_crypto as ec
from ..domain.cards import CardStatus
from ..domain.offline import IssuerKeys, terminal_id_bytes
from ..domain.ops import Refund
from ..domain.purses import Purse
from ..domain.results import Result
from ..persistence import audit
from ..persistence import offline as offline_store
from ..protocols.offline import when_digits, when_of
from .errors import Conflict, Invalid, NotFound, Refused, check_result
from .lookup import card
from .money import op_key
from .who import Who

CITY_UTC_OFFSET = timedelta(hours=8)  # the card's date and time are the city's local time (China)


def when_at(now_ms: int, offset: timedelta = CITY_UTC_OFFSET) -> ec.When:
    """The host's date and time for CREDIT FOR LOAD, in the city's local time."""
    t = datetime.fromtimestamp(now_ms / 1000, UTC) + offset
    return ec.When.of(t.strftime("%Y%m%d"), t.strftime("%H%M%S"))


@dataclass(frozen=True)
class CardLoadInit:
    """The card's INITIALIZE FOR LOAD answer, as the counter terminal read it."""

    balance_fen: int
    online_counter: int
    random: bytes  # 4
    mac1: bytes  # 4


@dataclass(frozen=True)
class LoadAnswer:
    card_no: int
    idempotency_key: str
    state: str  # "pending" (send CREDIT FOR LOAD, then confirm) or "confirmed"
    amount_fen: int
    source: str
    online_counter: int
    mac2: str  # hex, 4 bytes, for CREDIT FOR LOAD
    host_date: str  # YYYYMMDD, for CREDIT FOR LOAD
    host_time: str  # hhmmss
    replay: bool  # a retry: no money moved by this call
    shadow_balance_fen: int


def _load_input(amount_fen: int, terminal_id: int, init: CardLoadInit, when: ec.When) -> ec.LoadInput:
    try:
        return ec.LoadInput(amount_fen, init.balance_fen, terminal_id_bytes(terminal_id), when, init.random,
                            init.online_counter)
    except ValueError as exc:
        raise Invalid(str(exc), "card") from None


async def load(shards: ShardClient, pool: asyncpg.Pool, issuer: IssuerKeys, who: Who, card_no: int, amount_fen: int,
               source: str, key: str, terminal_id: int, init: CardLoadInit, now_ms: int) -> LoadAnswer:
    view = await card(shards, card_no)
    if view.status != CardStatus.ACTIVE:
        raise Refused(Result.CARD_CANCELLED if view.status == CardStatus.CANCELLED else Result.CARD_BLOCKED)
    when = when_at(now_ms)
    ld = _load_input(amount_fen, terminal_id, init, when)
    dlk = issuer.for_card(card_no).dlk
    seslk = ec.load_session_key(dlk, init.random, init.online_counter)
    if not ec.same_mac(ec.load_mac1(seslk, ld), init.mac1):
        raise Invalid("MAC1 does not check: not this card's answer to INITIALIZE FOR LOAD for this amount and "
                      "terminal", "mac1")
    async with pool.acquire() as conn, conn.transaction():
        # The card's offline row lock orders its loads; loads own loaded_fen (only ever raised), the
        # offline desk the row's other columns (docs/architecture.md, "the path of an offline record").
        await conn.execute("INSERT INTO offline_cards (card_no) VALUES ($1) ON CONFLICT DO NOTHING", card_no)
        await conn.execute("SELECT 1 FROM offline_cards WHERE card_no = $1 FOR UPDATE", card_no)
        row = await conn.fetchrow("SELECT * FROM purse_loads WHERE card_no = $1 AND idem_key = $2", card_no, key)
        if row is not None:
            _same_load(row, amount_fen, source, terminal_id)
            if init.online_counter > row["online_counter"]:
                raise Conflict(f"already loaded: the card's online counter moved past {row['online_counter']}, "
                               "the load reached the card", result="ALREADY_LOADED", state=row["state"])
            if init.online_counter < row["online_counter"]:
                raise Conflict("the card's online counter is below this load's: not the same card state",
                               result="STALE_CARD_STATE")
            await conn.execute("UPDATE purse_loads SET host_when = $3 WHERE card_no = $1 AND idem_key = $2",
                               card_no, key, when_digits(when))
            replay, state = True, row["state"]
        else:
            other = await conn.fetchval("SELECT idem_key FROM purse_loads WHERE card_no = $1 AND online_counter = $2",
                                        card_no, init.online_counter)
            if other is not None:
                raise Conflict(f"a load at this online counter is under key {other!r}: retry it with that key",
                               result="LOAD_PENDING", idempotency_key=other)
            if source == "account":
                # The holder's account purse pays, through the card's shard: once per key, journaled.
                out = await shards.apply_op(Refund(op_key("purseload", card_no, key), card_no, int(Purse.GENERAL),
                                                   amount_fen))
                check_result(out.result, card_no)
            await conn.execute(
                "INSERT INTO purse_loads (card_no, idem_key, amount_fen, source, terminal_id, online_counter,"
                " balance_before_fen, host_when, operator) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                card_no, key, amount_fen, source, terminal_id, init.online_counter, init.balance_fen,
                when_digits(when), who.name)
            await conn.execute("UPDATE offline_cards SET loaded_fen = loaded_fen + $2, updated_at = now()"
                               " WHERE card_no = $1", card_no, amount_fen)
            await audit.record(conn, who.name, who.role, "purse.load", f"card:{card_no}", None,
                               {"amount_fen": amount_fen, "source": source, "terminal_id": terminal_id,
                                "online_counter": init.online_counter, "balance_before_fen": init.balance_fen,
                                "state": "pending"}, op_key=op_key("purseload", card_no, key))
            replay, state = False, "pending"
        shadow = await conn.fetchval(offline_store.shadow_balance_sql(), card_no)  # the journal's, not the lagging row
    mac2 = ec.load_mac2(seslk, ld)
    digits = f"{when_digits(when):014d}"
    return LoadAnswer(card_no, key, state, amount_fen, source, init.online_counter, mac2.hex(), digits[:8],
                      digits[8:], replay, int(shadow))


def _same_load(row: asyncpg.Record, amount_fen: int, source: str, terminal_id: int) -> None:
    if (row["amount_fen"], row["source"], row["terminal_id"]) != (amount_fen, source, terminal_id):
        raise Conflict("the idempotency key was already used for a different load", result="DUPLICATE_KEY")


@dataclass(frozen=True)
class Confirmed:
    card_no: int
    idempotency_key: str
    state: str
    tac_verified: bool
    replay: bool


def _load_tac(dtk: bytes, ld: ec.LoadInput) -> bytes | None:
    """The card's load TAC, or None where epurse_crypto has no load_tac yet."""
    fn: Any = getattr(ec, "load_tac", None)
    return None if fn is None else bytes(fn(dtk, ld))


async def confirm(pool: asyncpg.Pool, issuer: IssuerKeys, who: Who, card_no: int, key: str, tac: bytes) -> Confirmed:
    """The card's load TAC from CREDIT FOR LOAD: checked under the card's TAC key, the load
    confirmed. Once: a retry answers as the first did."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT * FROM purse_loads WHERE card_no = $1 AND idem_key = $2 FOR UPDATE",
                                  card_no, key)
        if row is None:
            raise NotFound(f"no load of card {card_no} under key {key!r}")
        if row["state"] == "confirmed":
            if bytes(row["tac"]) != tac:
                raise Conflict("this load was confirmed with another TAC", result="CONFIRMED")
            return Confirmed(card_no, key, "confirmed", row["tac_verified"], True)
        ld = ec.LoadInput(row["amount_fen"], row["balance_before_fen"], terminal_id_bytes(row["terminal_id"]),
                          when_of(row["host_when"]), bytes(4), row["online_counter"])
        expected = _load_tac(issuer.dtk(card_no), ld)
        # TODO(issue 14): always verified once epurse_crypto.load_tac is on this branch.
        verified = expected is not None
        if expected is not None and not ec.same_mac(expected, tac):
            raise Invalid("the load TAC does not check: not this card's certificate of this load", "tac")
        await conn.execute(
            "UPDATE purse_loads SET state = 'confirmed', tac = $3, tac_verified = $4, confirmed_at = now()"
            " WHERE card_no = $1 AND idem_key = $2", card_no, key, tac, verified)
        await audit.record(conn, who.name, who.role, "purse.load_confirm", f"card:{card_no}", {"state": "pending"},
                           {"state": "confirmed", "tac": tac.hex(), "tac_verified": verified},
                           op_key=op_key("purseload-confirm", card_no, key))
    return Confirmed(card_no, key, "confirmed", verified, False)
