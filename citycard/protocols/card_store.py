"""The whole card as a JSON-able dict and back, pure: what the emulator's state file holds.

Versioned (``format`` names it, ``version`` counts its changes). Loading checks every field,
and a bad or foreign file raises ValueError naming the field. Keys and files are stored as
upper-case hex: the files are stored as the bytes the card answers with, so loading them
goes through the same strict decode as READ BINARY does.
"""

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..domain.epurse_crypto import COMPOUND_PURCHASE, PURCHASE_EP
from ..domain.offline import CardKeys
from .card_files import LOG_ENTRIES, HolderData, IssuerData, LogEntry, TransitRecord
from .epurse_card import CardFiles, EpurseCard, PurseState

FORMAT = "citycard-card"
VERSION = 1
T = TypeVar("T")


def card_to_dict(card: EpurseCard) -> dict[str, Any]:
    st, f = card.state, card.files
    if f.issuer is None:
        raise ValueError("a card without issuer data (EF 15) has no state file")
    proof = None if st.last_proof is None else {
        "counter": st.last_proof[0], "mac2": st.last_proof[1].hex().upper(), "tac": st.last_proof[2].hex().upper(),
        "type": st.last_proof_type}
    load = None if st.last_load_proof is None else {
        "counter": st.last_load_proof[0], "tac": st.last_load_proof[1].hex().upper()}
    return {
        "format": FORMAT, "version": VERSION, "card_no": f.issuer.card_no,
        "keys": {"dpk": card.keys.dpk.hex().upper(), "dlk": card.keys.dlk.hex().upper(),
                 "dtk": card.keys.dtk.hex().upper()},
        "files": {"issuer": f.issuer.encode().hex().upper(),
                  "holder": None if f.holder is None else f.holder.encode().hex().upper(),
                  "transit": f.transit.encode().hex().upper()},
        "purse": {"balance_fen": st.balance_fen, "offline_counter": st.offline_counter,
                  "online_counter": st.online_counter, "last_proof": proof, "last_load_proof": load},
        "log": [e.encode().hex().upper() for e in st.log],
    }


def card_from_dict(doc: object, random4: Callable[[], bytes]) -> EpurseCard:
    """The card a state file holds; ValueError naming the field when it is not one."""
    d = _map("card state", doc)
    if d.get("format") != FORMAT:
        raise ValueError(f"not a city-pass card state: format is {d.get('format')!r}, expected {FORMAT!r}")
    if d.get("version") != VERSION:
        raise ValueError(f"card state version {d.get('version')!r} is not supported (this code reads {VERSION})")
    keys_d, files_d, purse_d = _map("keys", d.get("keys")), _map("files", d.get("files")), _map("purse", d.get("purse"))
    keys = CardKeys(_hex("keys.dpk", keys_d.get("dpk"), 16), _hex("keys.dlk", keys_d.get("dlk"), 16),
                    _hex("keys.dtk", keys_d.get("dtk"), 16))
    issuer = _decode("files.issuer", IssuerData.decode, files_d.get("issuer"))
    holder_hex = files_d.get("holder")
    holder = None if holder_hex is None else _decode("files.holder", HolderData.decode, holder_hex)
    transit = _decode("files.transit", TransitRecord.decode, files_d.get("transit"))
    if d.get("card_no") != issuer.card_no:
        raise ValueError(f"card_no {d.get('card_no')!r} is not the issuer data's serial {issuer.card_no}")
    log_raw = d.get("log")
    if not isinstance(log_raw, list) or len(log_raw) > LOG_ENTRIES:
        raise ValueError(f"log must be a list of at most {LOG_ENTRIES} entries")
    log = tuple(_decode(f"log[{i}]", LogEntry.decode, x) for i, x in enumerate(log_raw))
    st = PurseState(_int("purse.balance_fen", purse_d.get("balance_fen"), 2**32 - 1),
                    _int("purse.offline_counter", purse_d.get("offline_counter"), 0xFFFF),
                    online_counter=_int("purse.online_counter", purse_d.get("online_counter"), 0xFFFF), log=log)
    proof = purse_d.get("last_proof")
    if proof is not None:
        p = _map("purse.last_proof", proof)
        st.last_proof = (_int("purse.last_proof.counter", p.get("counter"), 0xFFFF),
                         _hex("purse.last_proof.mac2", p.get("mac2"), 4), _hex("purse.last_proof.tac", p.get("tac"), 4))
        st.last_proof_type = p.get("type")  # type: ignore[assignment]
        if st.last_proof_type not in (PURCHASE_EP, COMPOUND_PURCHASE):
            raise ValueError(f"purse.last_proof.type must be 6 or 9, got {p.get('type')!r}")
    load = purse_d.get("last_load_proof")
    if load is not None:
        ld = _map("purse.last_load_proof", load)
        st.last_load_proof = (_int("purse.last_load_proof.counter", ld.get("counter"), 0xFFFF),
                              _hex("purse.last_load_proof.tac", ld.get("tac"), 4))
    return EpurseCard(keys, st, random4, CardFiles(issuer, holder, transit))


def _map(name: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be an object, got {type(value).__name__}")
    return value


def _int(name: str, value: object, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{name} must be an int in 0..{top}, got {value!r}")
    return value


def _hex(name: str, value: object, n_bytes: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a hex string, got {type(value).__name__}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{name} is not hex: {value[:40]!r}") from None
    if n_bytes is not None and len(raw) != n_bytes:
        raise ValueError(f"{name} must be {n_bytes} bytes, got {len(raw)}")
    return raw


def _decode(name: str, decode: Callable[[bytes], T], value: object) -> T:
    try:
        return decode(_hex(name, value))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
