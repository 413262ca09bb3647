"""Money on a card: top-ups and refunds through the card's shard, each once per idempotency
key and in the audit log; the balance; the history from the journal."""

from dataclasses import dataclass, field

import asyncpg

from ..actors.shard_client import ShardClient
from ..domain.ops import OpKind, OpOutcome, Refund, TopUp
from ..domain.purses import PURSE_NAMES, Purse
from ..domain.results import Result
from ..domain.taps import TapKind
from ..persistence import audit, history
from ..persistence import offline as offline_store
from .errors import check_result
from .lookup import STATUS_NAMES, card, check_card_no
from .who import Who

KIND_NAMES = {int(k): k.name.lower() for k in TapKind} | {int(k): k.name.lower() for k in OpKind}
MONEY_PURSES = {"epurse": Purse.EPURSE, "general": Purse.GENERAL}


@dataclass(frozen=True)
class Movement:
    card_no: int
    result: str
    replay: bool  # a retry, answered with the first outcome
    purses_fen: dict[str, int]  # the change per purse
    balance: dict[str, int]  # every purse after


@dataclass(frozen=True)
class Balance:
    card_no: int
    status: str
    purses: dict[str, int]
    total_fen: int


@dataclass(frozen=True)
class Txn:
    lsn: int
    kind: str
    result: str
    at_ms: int
    terminal_id: int
    amount_fen: int  # paid by the holder; negative: money in
    purses_fen: dict[str, int]
    balance_after_fen: int  # e-purse after


@dataclass(frozen=True)
class PurseTxn:
    """On the card's own purse (the city-pass chip), as the host knows it: an offline purchase
    a validator uploaded, or a load at a counter."""

    kind: str  # "offline_purchase" | "load"
    counter: int  # the card's offline counter (purchase) or online counter (load), before it
    amount_fen: int
    balance_after_fen: int  # the chip's purse after, as the card reported it (loads: as computed)
    terminal_id: int
    card_when: int  # YYYYMMDDhhmmss the card's MACs cover
    at_ms: int  # when the host recorded it
    state: str  # purchases: accepted | balance_impossible; loads: pending | confirmed


@dataclass(frozen=True)
class Page:
    card_no: int
    items: list[Txn]  # the account journal (taps and card services), ledger "account"
    next_before_lsn: int | None  # pass as before_lsn for the next (older) page
    card_purse: list[PurseTxn] = field(default_factory=list)  # first page only: the chip's purse, newest first
    shadow_balance_fen: int | None = None  # loads less offline purchases journaled; None: never loaded or used


def op_key(scope: str, card_no: int, client_key: str) -> str:
    """The client's idempotency key, scoped to the card and the service."""
    return f"{scope}:{card_no}:{client_key}"


def _movement(card_no: int, out: OpOutcome) -> Movement:
    check_result(out.result, card_no)
    assert out.view is not None  # an OK op's outcome carries its card's view
    return Movement(card_no=card_no, result=Result(out.result).name, replay=out.replay,
                    purses_fen={n: d for n, d in zip(PURSE_NAMES, out.deltas, strict=True) if d},
                    balance=dict(out.view.purses))


async def top_up(shards: ShardClient, pool: asyncpg.Pool, who: Who, card_no: int, purse: str, amount_fen: int,
                 key: str, epurse_max_fen: int) -> Movement:
    """Money onto the e-purse (up to ``epurse_max_fen``) or the account's general purse: one
    shard call, then its one audit entry."""
    check_card_no(card_no)
    cap = epurse_max_fen if purse == "epurse" else 0
    op = TopUp(op_key("topup", card_no, key), card_no, int(MONEY_PURSES[purse]), amount_fen, cap)
    return await _once(pool, who, "money.top_up", op, await shards.apply_op(op), "")


async def refund(shards: ShardClient, pool: asyncpg.Pool, who: Who, card_no: int, purse: str, amount_fen: int,
                 key: str, reason: str) -> Movement:
    """Money paid back to the holder out of a purse: one shard call, then its one audit entry."""
    check_card_no(card_no)
    op = Refund(op_key("refund", card_no, key), card_no, int(MONEY_PURSES[purse]), amount_fen)
    return await _once(pool, who, "money.refund", op, await shards.apply_op(op), reason)


async def _once(pool: asyncpg.Pool, who: Who, action: str, op: TopUp | Refund, out: OpOutcome,
                reason: str) -> Movement:
    """The op's audit entry, written once per key, and the answer: a retry gets the first
    answer as the entry holds it (the balance then, not now). A retry that finds no entry
    follows a first attempt that stopped before writing it: it writes it now."""
    movement = _movement(op.card_no, out)
    if out.replay:
        first = await audit.of_op(pool, op.key)
        if first is not None and "balance" in first["after"]:  # not a reconciled entry
            return Movement(**{**first["after"], "replay": True})
    await audit.record(pool, who.name, who.role, action, f"card:{op.card_no}", None,
                       {**movement.__dict__, "replay": False}, reason, op_key=op.key)
    return movement


async def balance(shards: ShardClient, card_no: int) -> Balance:
    view = await card(shards, card_no)
    return Balance(card_no=card_no, status=STATUS_NAMES.get(view.status, "blocked"), purses=dict(view.purses),
                   total_fen=view.total_fen)


def _result_name(code: int) -> str:
    return Result(code).name if code in Result._value2member_map_ else str(code)


async def transactions(shards: ShardClient, pool: asyncpg.Pool, card_no: int, limit: int,
                       before_lsn: int | None) -> Page:
    """Taps and card services on the card, newest first, from the journal."""
    await card(shards, card_no)
    rows = await history.card_rows(pool, shards.shard_of(card_no), card_no, limit, before_lsn)
    items = [Txn(lsn=r["lsn"], kind=KIND_NAMES.get(r["kind"], str(r["kind"])), result=_result_name(r["result"]),
                 at_ms=r["applied_ms"], terminal_id=r["terminal_id"], amount_fen=r["amount_fen"],
                 purses_fen={n: r[f"d_{n}"] for n in PURSE_NAMES if r[f"d_{n}"]},
                 balance_after_fen=r["balance_after_fen"]) for r in rows]
    purse: list[PurseTxn] = []
    shadow = None
    if before_lsn is None:
        purse = [PurseTxn(kind=r["kind"], counter=r["counter"], amount_fen=r["amount_fen"],
                          balance_after_fen=r["balance_after_fen"], terminal_id=r["terminal_id"],
                          card_when=r["card_when"], at_ms=int(r["at"].timestamp() * 1000), state=r["state"])
                 for r in await offline_store.purse_history(pool, card_no, limit)]
        s = await offline_store.shadow(pool, card_no)
        shadow = None if s is None else s.balance_fen
    return Page(card_no=card_no, items=items, next_before_lsn=items[-1].lsn if len(items) == limit else None,
                card_purse=purse, shadow_balance_fen=shadow)
