"""``citycard validator run``: a validator on a PC/SC reader (docs/validator.md)."""

import argparse
import asyncio
import signal
from pathlib import Path

from ..config.fare_table import load_fare_tables
from ..config.settings import Settings, load_settings
from ..domain.taps import TapKind
from ..errors import CityCardError
from ..validator.run import ValidatorApp, ValidatorSettings, validator_state_dir

SELLING_KINDS = {"bus": TapKind.BUS, "water-bus": TapKind.WATER_BUS}


def _gateway(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"a gateway is HOST:PORT, e.g. 127.0.0.1:7700; got {text!r}")
    return host, int(port)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    vp = sub.add_parser("validator", help="a validator that sells offline from the card (city-pass) on a reader")
    vsub = vp.add_subparsers(dest="validator_command", required=True)
    run = vsub.add_parser("run", help="wait for cards in READER, sell each a ride offline, upload the records")
    run.add_argument("--reader", required=True, help="the PC/SC reader's name, as `citycard readers list` shows it")
    run.add_argument("--terminal-id", type=_positive_int, required=True, help="this validator's terminal id")
    run.add_argument("--kind", choices=sorted(SELLING_KINDS), default="bus", help="what it sells (default bus)")
    run.add_argument("--route", type=_positive_int, required=True, help="the route (or pier) it stands on")
    run.add_argument("--gateway", type=_gateway, help="HOST:PORT of the gateway (default: gateway.host/port)")
    run.add_argument("--offline", action="store_true", help="never connect: sell and keep records only")
    run.add_argument("--state-dir", type=Path,
                     help="where the store lives (default: <state dir>/validators/<terminal id>)")
    run.add_argument("--max-records", type=_positive_int, default=100_000,
                     help="records kept waiting for upload before it stops selling (default 100000)")
    run.add_argument("--upload-batch", type=_positive_int, default=500, help="records per upload (max 1000)")
    run.add_argument("--apdu-timeout-ms", type=_positive_int, default=1000, help="per APDU (default 1000)")
    run.add_argument("--for-s", type=float, default=0.0, help="stop after this many seconds (default: never)")
    run.add_argument("--max-sales", type=int, default=0, help="stop after this many cards (default: no limit)")
    run.set_defaults(func=cmd_validator_run)


def settings_for(args: argparse.Namespace, settings: Settings) -> ValidatorSettings:
    if args.upload_batch > 1000:
        raise CityCardError("--upload-batch is at most 1000 (the protocol's limit)")
    gateway = None if args.offline else (args.gateway or (_local(settings.gateway.host), settings.gateway.port))
    return ValidatorSettings(
        terminal_id=args.terminal_id, kind=int(SELLING_KINDS[args.kind]), route=args.route,
        state_dir=args.state_dir or validator_state_dir(settings.state.path, args.terminal_id), gateway=gateway,
        terminal_key_master=bytes.fromhex(settings.city.master_key_hex),
        issuer_mpk=bytes.fromhex(settings.card.issuer_mpk_hex),
        batch_master_key=bytes.fromhex(settings.card.batch_master_key_hex),
        max_records=args.max_records, upload_batch=args.upload_batch, for_s=args.for_s, max_sales=args.max_sales)


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def cmd_validator_run(args: argparse.Namespace) -> int:
    from ..validator.pcsc import PcscCardReader

    settings = load_settings(args.config)
    cfg = settings_for(args, settings)
    tables = load_fare_tables(settings.fare_table_path())

    async def main() -> int:
        async with PcscCardReader(args.reader, args.apdu_timeout_ms) as reader:
            app = ValidatorApp(cfg, tables, reader, out=lambda line: print(line, flush=True))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, app.stop)
            print(f"validator {cfg.terminal_id} on {args.reader!r}: selling {args.kind} route {cfg.route};"
                  f" store {cfg.state_dir}", flush=True)
            return await app.run()

    return asyncio.run(main())
