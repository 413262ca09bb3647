"""Finding a card: its number checked, then its shard asked."""

from ..actors.shard_client import ShardClient
from ..domain.cards import CardStatus, card_no_valid
from ..domain.views import CardView
from .errors import Invalid, NotFound

STATUS_NAMES = {int(s): s.name.lower() for s in CardStatus}


def check_card_no(card_no: int) -> None:
    if not card_no_valid(card_no):
        raise Invalid("card_no: check digit does not match", field="card_no")


async def card(shards: ShardClient, card_no: int) -> CardView:
    """The card as its shard holds it; Invalid for a bad check digit, NotFound for no card."""
    check_card_no(card_no)
    view = await shards.card_view(card_no)
    if view is None:
        raise NotFound(f"card {card_no} not found")
    return view
