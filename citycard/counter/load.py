"""Loading the city-pass at a counter: the card in the counter's reader, MAC2 from the host.

1. SELECT, READ BINARY 15 (the card number), INITIALIZE FOR LOAD (the card's balance, online
   counter, random and MAC1).
2. ``POST /cards/{no}/purse/load`` with those: the host checks MAC1, moves the money once per
   idempotency key and answers MAC2 with its date and time.
3. CREDIT FOR LOAD: the card checks MAC2, credits itself and answers the load's TAC.
4. ``POST /cards/{no}/purse/load/{key}/confirm`` with the TAC.

Safe to run again with the same key after any failure (docs/api.md, "Purse loads"): if the
credit never reached the card, the host answers a fresh MAC2 without moving money twice; if it
did, the host says "already loaded" and the card's own proof (GET TRANSACTION PROOF) confirms it.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..domain.epurse_crypto import When
from ..domain.offline import terminal_id_bytes
from ..errors import CityCardError
from ..protocols import epurse_terminal as t
from ..protocols.apdu import select_by_aid
from ..protocols.card_files import IssuerData
from ..protocols.epurse_card import CITY_PASS_AID

Transmit = Callable[[bytes], Awaitable[bytes]]
HTTP_TIMEOUT_S = 10.0


class LoadFailed(CityCardError):
    """The load did not complete; the message says where it stopped and whether money moved."""


@dataclass(frozen=True, slots=True)
class Loaded:
    card_no: int
    amount_fen: int
    balance_fen: int  # the card's purse after the load
    replay: bool  # the host had this key already: no money moved by this run
    tac_verified: bool


async def load_card(transmit: Transmit, http: httpx.AsyncClient, token: str, *, amount_fen: int, source: str,
                    key: str, terminal_id: int) -> Loaded:
    if t.ok_or_sw(await transmit(select_by_aid(CITY_PASS_AID).encode())) is not None:
        raise LoadFailed("not a city-pass card (SELECT refused); nothing loaded")
    issuer = IssuerData.decode(t.ok_data(await transmit(t.read_binary_sfi(t.SFI_ISSUER, 0, IssuerData.LENGTH).encode()),
                                         "READ BINARY 15", IssuerData.LENGTH))
    card_no = issuer.card_no
    init = t.parse_init_load(await transmit(t.init_load(amount_fen, terminal_id_bytes(terminal_id)).encode()))
    headers = {"Authorization": f"Bearer {token}"}
    answer = await http.post(f"/cards/{card_no}/purse/load", headers=headers, json={
        "amount_fen": amount_fen, "source": source, "idempotency_key": key, "terminal_id": terminal_id,
        "card_balance_fen": init.balance_fen, "card_online_counter": init.online_counter,
        "card_random": init.card_random.hex(), "card_mac1": init.mac1.hex()})
    body = _json(answer)
    if answer.status_code == 409 and body.get("result") == "ALREADY_LOADED":
        # The credit reached the card before; its TAC comes from the card's own proof.
        tac = t.parse_load_proof(await transmit(t.transaction_proof(init.online_counter - 1, t.PROOF_LOAD).encode()))
        if tac is None:
            raise LoadFailed(f"the host says card {card_no} was loaded under key {key!r}, but the card has no"
                             " proof of it: call the operator")
        confirmed = await _confirm(http, headers, card_no, key, tac)
        return Loaded(card_no, amount_fen, init.balance_fen, True, bool(confirmed.get("tac_verified")))
    if answer.status_code != 200:
        raise LoadFailed(f"the host refused the load ({answer.status_code}: {body.get('error', answer.text)});"
                         " nothing was credited to the card")
    try:
        credit = t.credit_load(When.of(body["host_date"], body["host_time"]).bcd(), bytes.fromhex(body["mac2"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadFailed(f"the host's answer has no usable MAC2 or date ({exc!r}); nothing was credited to the card:"
                         f" run the same command again") from None
    try:
        tac = t.parse_credit(await transmit(credit.encode()))
    except CityCardError as exc:
        raise LoadFailed(f"CREDIT FOR LOAD failed ({exc}); the host holds the load under key {key!r}:"
                         " present the card and run the same command again") from None
    confirmed = await _confirm(http, headers, card_no, key, tac)
    return Loaded(card_no, amount_fen, init.balance_fen + amount_fen, bool(body.get("replay")),
                  bool(confirmed.get("tac_verified")))


async def _confirm(http: httpx.AsyncClient, headers: dict[str, str], card_no: int, key: str,
                   tac: bytes) -> dict[str, Any]:
    answer = await http.post(f"/cards/{card_no}/purse/load/{key}/confirm", headers=headers, json={"tac": tac.hex()})
    body = _json(answer)
    if answer.status_code != 200:
        raise LoadFailed(f"the card is loaded but the host did not take its TAC ({answer.status_code}:"
                         f" {body.get('error', answer.text)}); run the same command again to confirm")
    return body


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
