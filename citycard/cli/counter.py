"""``citycard counter load``: put money on a card's city-pass at a counter with a reader."""

import argparse
import asyncio
import os

import httpx

from ..errors import CityCardError
from .validator import _positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cp = sub.add_parser("counter", help="counter tasks on a card in the counter's reader")
    csub = cp.add_subparsers(dest="counter_command", required=True)
    ld = csub.add_parser("load", help="load the card's city-pass purse (MAC2 from the host); safe to run again")
    ld.add_argument("--reader", required=True, help="the counter's PC/SC reader, as `citycard readers list` shows it")
    ld.add_argument("--amount-fen", type=_positive_int, required=True, help="how much to load, in fen")
    ld.add_argument("--source", choices=["account", "cash"], required=True,
                    help="account: from the holder's account purse; cash: paid at the counter")
    ld.add_argument("--key", required=True, help="the load's idempotency key: run again with the same key after"
                                                 " any failure")
    ld.add_argument("--terminal-id", type=_positive_int, required=True, help="the counter terminal's id")
    ld.add_argument("--api", default="http://127.0.0.1:7780", help="the card-services API (default %(default)s)")
    ld.add_argument("--token-env", default="CITYCARD_TOKEN",
                    help="environment variable holding a clerk's API token (default %(default)s)")
    ld.add_argument("--timeout-s", type=float, default=10.0, help="wait this long for a card (default 10)")
    ld.set_defaults(func=cmd_counter_load)


def cmd_counter_load(args: argparse.Namespace) -> int:
    from ..counter.load import HTTP_TIMEOUT_S, load_card
    from ..reader_pool import ReaderPool

    token = os.environ.get(args.token_env, "")
    if not token:
        raise CityCardError(f"set {args.token_env} to a clerk's API token (citycard token create --role clerk)")

    async def main() -> int:
        async with ReaderPool(lambda name: name == args.reader) as pool, \
                httpx.AsyncClient(base_url=args.api, timeout=HTTP_TIMEOUT_S) as http:
            session = await pool.card(args.reader, timeout_ms=int(args.timeout_s * 1000))
            done = await load_card(session.transmit, http, token, amount_fen=args.amount_fen, source=args.source,
                                   key=args.key, terminal_id=args.terminal_id)
        again = " (already loaded before: no money moved now)" if done.replay else ""
        print(f"loaded {done.amount_fen / 100:.2f} yuan onto card {done.card_no}: balance"
              f" {done.balance_fen / 100:.2f} yuan{again}; TAC {'verified' if done.tac_verified else 'NOT verified'}")
        return 0

    return asyncio.run(main())
