"""``citycard readers list``: the attached PC/SC readers, their cards' ATRs and, on request,
each card's answer to a SELECT. ``citycard readers watch``: readers and cards coming and
going, one line each, as they happen."""

import argparse
import asyncio
import json
import signal
from dataclasses import asdict

from ..errors import CityCardError
from ..reader_pool.probe import look_all

MAX_WATCH_S = 7 * 24 * 3600.0


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
    w = rsub.add_parser("watch", help="readers and cards coming and going, one line each, until Ctrl-C")
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.add_argument("--select", type=_aid, metavar="AID",
                   help="send each inserted card SELECT of this AID (hex) and show its status word")
    w.add_argument("--reader", metavar="TEXT", help="watch only readers whose name contains TEXT")
    w.add_argument("--for-s", type=float, metavar="S", help="stop after S seconds")
    w.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
    w.add_argument("--timeout-ms", type=int, default=2000, help="the SELECT's timeout (ms)")
    w.set_defaults(func=cmd_readers_watch)


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


def cmd_readers_watch(args: argparse.Namespace) -> int:
    if args.for_s is not None and not 0 < args.for_s <= MAX_WATCH_S:
        raise CityCardError(f"--for-s must be in (0, {MAX_WATCH_S:g}]")
    if args.max_events is not None and args.max_events < 1:
        raise CityCardError("--max-events must be at least 1")
    if not 1 <= args.timeout_ms <= 60_000:
        raise CityCardError("--timeout-ms must be in [1, 60000]")
    return asyncio.run(_watch(args))


async def _watch(args: argparse.Namespace) -> int:
    from ..protocols.apdu import describe, select_by_aid
    from ..reader_pool import CardInserted, ReaderPool, ReaderPoolError
    from ..reader_pool.events import SelectAnswer, event_json, event_line

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    select = select_by_aid(args.select).encode() if args.select is not None else None
    wanted = args.reader

    async def answer_to_select(pool: ReaderPool, reader: str) -> SelectAnswer:
        assert select is not None
        try:
            session = await pool.card(reader, timeout_ms=args.timeout_ms)
            raw = await session.transmit(select, timeout_ms=args.timeout_ms)
        except ReaderPoolError as exc:
            return SelectAnswer(error=str(exc))
        sw = int.from_bytes(raw[-2:], "big")
        return SelectAnswer(f"{sw:04X}", describe(sw))

    async def show(pool: ReaderPool) -> None:
        seen = 0
        async for event in pool.events():
            answer = await answer_to_select(pool, event.reader) if select and isinstance(event, CardInserted) else None
            print(event_json(event, answer) if args.json else event_line(event, answer), flush=True)
            seen += 1
            if args.max_events is not None and seen >= args.max_events:
                break
        stop.set()

    try:
        async with ReaderPool(lambda name: wanted is None or wanted in name, apdu_timeout_ms=args.timeout_ms) as pool:
            shower = asyncio.create_task(show(pool))
            try:
                await asyncio.wait_for(stop.wait(), args.for_s)
            except TimeoutError:
                pass
            shower.cancel()
            try:
                await shower
            except asyncio.CancelledError:
                pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
