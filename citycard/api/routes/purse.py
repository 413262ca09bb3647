"""Loads onto the city-pass's purse at a counter (docs/api.md, "Purse loads"); the card-services
layer (cards/purse_loads.py) does the work."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from ...cards import purse_loads
from ...domain.epurse_crypto import MAX_AMOUNT_FEN
from ...offline.desk import issuer_keys
from ..auth import Operator, Perm, require
from ..strict_route import StrictRoute
from .common import CardNo, IdempotencyKey, Text, ctx_of

router = APIRouter(tags=["money"], route_class=StrictRoute)
Hex4 = Annotated[str, Field(pattern="^[0-9A-Fa-f]{8}$", description="4 bytes, hex")]
KeyPath = Annotated[Text, Path(min_length=1, max_length=100, description="the load's idempotency key")]


class LoadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_fen: int = Field(strict=True, gt=0, le=MAX_AMOUNT_FEN)
    source: Literal["account", "cash"]
    idempotency_key: IdempotencyKey
    terminal_id: int = Field(strict=True, ge=1, le=2**48 - 1, description="the counter terminal's id")
    card_balance_fen: int = Field(strict=True, ge=0, le=MAX_AMOUNT_FEN, description="INITIALIZE FOR LOAD: balance")
    card_online_counter: int = Field(strict=True, ge=0, le=0xFFFF, description="INITIALIZE FOR LOAD: online counter")
    card_random: Hex4
    card_mac1: Hex4


class LoadOut(BaseModel):
    card_no: int
    idempotency_key: str
    state: Literal["pending", "confirmed"]
    amount_fen: int
    source: str
    online_counter: int
    mac2: str = Field(description="for CREDIT FOR LOAD, 4 bytes hex")
    host_date: str = Field(description="YYYYMMDD, for CREDIT FOR LOAD")
    host_time: str = Field(description="hhmmss, for CREDIT FOR LOAD")
    replay: bool = Field(description="true: a retry; no money moved by this call")
    shadow_balance_fen: int = Field(description="the host's shadow of the card's purse, this load included")


class ConfirmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tac: Hex4


class ConfirmOut(BaseModel):
    card_no: int
    idempotency_key: str
    state: Literal["confirmed"]
    tac_verified: bool
    replay: bool


@router.post("/cards/{card_no}/purse/load", response_model=LoadOut)
async def load(card_no: CardNo, body: LoadIn, request: Request,
               op: Operator = Depends(require(Perm.MONEY))) -> LoadOut:  # noqa: B008
    """Load the card's purse: checks the card's MAC1, moves the money once per key, answers MAC2."""
    ctx = ctx_of(request)
    init = purse_loads.CardLoadInit(body.card_balance_fen, body.card_online_counter, bytes.fromhex(body.card_random),
                                    bytes.fromhex(body.card_mac1))
    done = await purse_loads.load(ctx.shards, ctx.pool, issuer_keys(ctx.settings), op, card_no, body.amount_fen,
                                  body.source, body.idempotency_key, body.terminal_id, init, ctx.now_ms())
    return LoadOut(**done.__dict__)


@router.post("/cards/{card_no}/purse/load/{key}/confirm", response_model=ConfirmOut)
async def confirm(card_no: CardNo, key: KeyPath, body: ConfirmIn, request: Request,
                  op: Operator = Depends(require(Perm.MONEY))) -> ConfirmOut:  # noqa: B008
    """The card's load TAC from CREDIT FOR LOAD: the load confirmed."""
    ctx = ctx_of(request)
    done = await purse_loads.confirm(ctx.pool, issuer_keys(ctx.settings), op, card_no, key, bytes.fromhex(body.tac))
    return ConfirmOut(**done.__dict__)
