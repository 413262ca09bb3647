"""``citycard readers list``: the attached PC/SC readers, their cards' ATRs and, on request,
each card's answer to a SELECT."""

import argparse
import json
from dataclasses import asdict

from ..errors import CityCardError
from ..reader_pool.probe import look_all


def _aid(text: str) -> bytes:
    try:
        aid = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an AID is hex digits, e.g. A000000632010105; got {text!r}") from None
    if not 5 <= len(aid) <= 16:
        raise argparse.ArgumentTypeError(f"an AID has 5 to 16 bytes, not {len(aid)}")
    return aid


def add_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("readers", help="attached smart-card readers (PC/SC, through pcscd)")
    rsub = rp.add_subparsers(dest="readers_command", required=True)
    ls = rsub.add_parser("list", help="each reader, whether a card is in it, the card's ATR in hex")
    ls.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    ls.add_argument("--select", type=_aid, metavar="AID",
                    help="also send each card SELECT of this AID (hex) and show its status word")
    ls.add_argument("--timeout-s", type=float, default=5.0, help="how long to wait for all readers (s)")
    ls.set_defaults(func=cmd_readers_list)


def cmd_readers_list(args: argparse.Namespace) -> int:
    if not 0 < args.timeout_s <= 60:
        raise CityCardError("--timeout-s must be in (0, 60]")
    looks = look_all(args.select, args.timeout_s)
    if args.json:
        print(json.dumps([asdict(look) for look in looks], indent=2))
        return 0
    if not looks:
        print("no readers attached")
        return 0
    for look in looks:
        card = f"card, ATR {look.atr_hex}" if look.card_present else "no card"
        sw = f", SELECT -> {look.select_sw} ({look.select_meaning})" if look.select_sw else ""
        err = f" ({look.error})" if look.error else ""
        print(f"{look.reader}: {card}{sw}{err}")
    return 0
