"""The emulator's state file: the whole card as JSON (protocols/card_store.py), written
atomically and durably: a temporary file in the same directory, fsync, rename, fsync of the
directory. A crash leaves the old file or the new one, never half of one."""

import json
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path

from ..domain.cards import HANGZHOU_ISSUER, issuer_of
from ..domain.offline import IssuerKeys
from ..errors import CityCardError
from ..protocols.card_files import personalise
from ..protocols.card_store import card_from_dict, card_to_dict
from ..protocols.epurse_card import EpurseCard

MAX_STATE_BYTES = 1 << 20  # a card's state is a few KB; anything this big is not one
CARD_YEARS = 6  # a new card's validity


class CardStateError(CityCardError):
    """The state file is missing, unreadable, or not this card's."""


def default_path(state_dir: Path, card_no: int) -> Path:
    return state_dir / "cards" / f"{card_no}.json"


def load(path: Path, random4: Callable[[], bytes], card_no: int | None = None) -> EpurseCard:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except OSError as e:
        raise CardStateError(f"cannot read card state {path}: {e.strerror or e}") from None
    if len(raw) > MAX_STATE_BYTES:
        raise CardStateError(f"{path} is not a card state: larger than {MAX_STATE_BYTES} bytes")
    try:
        card = card_from_dict(json.loads(raw), random4)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise CardStateError(f"{path} is not a valid card state: {e}") from None
    assert card.files.issuer is not None  # card_from_dict always sets it
    if card_no is not None and card.files.issuer.card_no != card_no:
        raise CardStateError(f"{path} holds card {card.files.issuer.card_no}, not card {card_no}")
    return card


def save(path: Path, card: EpurseCard) -> None:
    """Atomically and durably: when this returns, the new state survives a crash."""
    data = json.dumps(card_to_dict(card), indent=1, sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CardStateError(f"cannot write card state {path}: {e.strerror or e}") from None


def new_card(keys: IssuerKeys, card_no: int, balance_fen: int, category: int, today: date,
             random4: Callable[[], bytes]) -> EpurseCard:
    """A freshly personalised card of the card number's issuer (the city's code)."""
    issuer = issuer_of(card_no)
    issuer_code = issuer if 100000 <= issuer <= 999999 else HANGZHOU_ISSUER
    try:
        expiry = today.replace(year=today.year + CARD_YEARS)
    except ValueError:  # 29 February
        expiry = today.replace(year=today.year + CARD_YEARS, day=28)
    try:
        image = personalise(keys, card_no, balance_fen, category, issuer_code, today, expiry)
    except ValueError as e:
        raise CardStateError(f"cannot personalise card {card_no}: {e}") from None
    return EpurseCard.from_image(image, random4)


def load_or_create(path: Path, card_no: int, create: Callable[[], EpurseCard],
                   random4: Callable[[], bytes]) -> tuple[EpurseCard, bool]:
    """(the card, whether it was created now)."""
    if path.exists():
        return load(path, random4, card_no), False
    card = create()
    save(path, card)
    return card, True
