"""``citycard clearing ...``: the regional clearing house (docs/clearing.md).

``up`` runs the house (its own schema, default ``clearing``) until Ctrl-C; the other commands
talk to a running house over HTTP, with the operator's token from the file ``up`` made.
Bad input or a refusal: a one-line error and exit code 2 (main.py's handler).
"""

import argparse
import asyncio
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from ..clearing import client
from ..config.settings import Settings, load_settings
from ..domain.clearing_records import check_city, window_key
from ..errors import CityCardError

DEFAULT_PORT = 7790
DEFAULT_SCHEMA = "clearing"
TOKEN_FILE = "clearing_admin.token"  # in the state dir unless --admin-token-file says otherwise


def _window(text: str) -> str:
    try:
        window_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _city(text: str) -> str:
    try:
        return check_city(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nonneg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    cp = sub.add_parser("clearing", help="the regional clearing house: run it, register cities, close windows",
                        description="The regional clearing house (docs/clearing.md).")
    csub = cp.add_subparsers(dest="clearing_command", required=True)
    up = csub.add_parser("up", help="run the clearing house until Ctrl-C")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=_nonneg, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port")
    up.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"its Postgres schema (default {DEFAULT_SCHEMA})")
    up.add_argument("--retain-windows", type=_nonneg, default=7, help="windows held in memory (default 7)")
    up.add_argument("--max-body-mb", type=_nonneg, default=64, help="largest delivery accepted, MiB (default 64)")
    _token_arg(up)
    up.set_defaults(func=_cmd_up)
    pp = csub.add_parser("participant", help="participants (cities)")
    psub = pp.add_subparsers(dest="participant_command", required=True)
    add = psub.add_parser("add", help="register a city: its manifest key, net debit cap and interchange rate")
    add.add_argument("city", type=_city, metavar="CITY")
    add.add_argument("--public-key", required=True, metavar="HEX", help="raw Ed25519 public key, 64 hex digits")
    add.add_argument("--cap-fen", type=_nonneg, required=True, help="net debit cap, fen")
    add.add_argument("--rate-bp", type=_nonneg, required=True, help="interchange it charges as issuer, basis points")
    add.add_argument("--prefix", action="append", default=[], metavar="P", help="a card-number prefix (repeatable)")
    add.set_defaults(func=_cmd_client, action="add")
    cl = csub.add_parser("close", help="close a window: net it and keep its report")
    cl.add_argument("--window", type=_window, required=True, metavar="YYYY-MM-DD")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=_cmd_client, action="close")
    st = csub.add_parser("settled", help="mark a city's debit of a closed window paid (lifts a cap suspension)")
    st.add_argument("city", type=_city, metavar="CITY")
    st.add_argument("--window", type=_window, required=True, metavar="YYYY-MM-DD")
    st.set_defaults(func=_cmd_client, action="settled")
    rp = csub.add_parser("report", help="print a closed window's report")
    rp.add_argument("--window", type=_window, required=True, metavar="YYYY-MM-DD")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=_cmd_client, action="report")
    vf = csub.add_parser("verify", help="as an issuer: check the TACs of this city's cards' offline records cleared"
                         " elsewhere in a window and reject the forged ones (chargebacks)")
    vf.add_argument("--window", type=_window, required=True, metavar="YYYY-MM-DD")
    vf.add_argument("--city", type=_city, required=True, metavar="CODE", help="this city's code at the house")
    vf.add_argument("--key-file", type=Path, metavar="FILE",
                    help="this city's Ed25519 key (default: settle_clearing's, in the state dir)")
    vf.add_argument("--json", action="store_true")
    vf.set_defaults(func=_cmd_verify)
    for p in (add, cl, st, rp, vf):
        p.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORT}", help="the running house")
        _token_arg(p)


def _token_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-token-file", type=Path, metavar="FILE",
                   help=f"the operator's token (default: {TOKEN_FILE} in the state dir, made by `up`)")


def load_or_make_token(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _token_path(settings: Settings, args: argparse.Namespace) -> Path:
    return args.admin_token_file or settings.state.path / TOKEN_FILE


def _cmd_up(args: argparse.Namespace) -> int:
    from ..clearing.server import HouseServer
    from ..clearing.service import HouseService
    from .services import resolve_services

    settings = load_settings(args.config)
    token_path = _token_path(settings, args)
    token = load_or_make_token(token_path)
    services = resolve_services(settings)

    async def main() -> int:
        house = await HouseService.open(services.db_url, args.schema, retain_windows=args.retain_windows)
        server = HouseServer(house, token, args.host, args.port, args.max_body_mb * 2**20)
        try:
            port = await server.start()
            print(f"citycard clearing: listening on http://{args.host}:{port}, schema {args.schema},"
                  f" {house.replayed} events replayed, admin token in {token_path}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            print("citycard clearing: stopping", flush=True)
        finally:
            await server.stop()
            await house.close()
        return 0

    try:
        return asyncio.run(main())
    except ValueError as exc:
        raise CityCardError(str(exc)) from None
    finally:
        services.stop()


def _cmd_client(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    settings = load_settings(args.config)
    if args.action == "report":
        status, body = client.report(base, args.window)
    else:
        token = _token_path(settings, args).read_text().strip() if _token_path(settings, args).exists() else ""
        if not token:
            raise CityCardError(f"no admin token in {_token_path(settings, args)} (run `citycard clearing up` first)")
        if args.action == "add":
            status, body = client.add_participant(base, token, args.city, args.public_key, args.cap_fen, args.rate_bp,
                                                  args.prefix)
        elif args.action == "settled":
            status, body = client.settled(base, token, args.window, args.city)
        else:
            status, body = client.close(base, token, args.window)
    if status >= 300:
        raise CityCardError(f"refused ({status}): {body.get('code')}: {body.get('reason')}")
    if args.action == "add":
        print(f"participant {args.city}: registered")
    elif args.action == "settled":
        print(f"{args.city}: window {args.window} settled")
    elif args.json:
        print(json.dumps(body, indent=1))
    else:
        _print_report(body)
    return 0


def verify(base: str, city: str, window: str, key: Any, keys: Any) -> dict[str, Any]:
    """Fetch the records cleared against ``city``'s cards in ``window``, check each offline
    one's TAC with ``keys`` (IssuerKeys), post a signed verdict for each bad one. Idempotent:
    a verdict the house had already (409 DUPLICATE_CHARGEBACK) counts as done."""
    from ..domain.offline_verdicts import check_offline
    from ..protocols.clearing_files import parse_csv
    from ..protocols.settlement_files import FileRefused

    status, data = client.records(base, key, city, window)
    if status >= 300:
        raise CityCardError(f"records of {city} in {window} refused ({status}): {data[:300]!r}")
    try:
        checked = check_offline(parse_csv(data, f"{city}.csv"), keys)
    except (FileRefused, ValueError) as exc:
        raise CityCardError(f"records of {city} in {window}: {exc}") from None
    out: dict[str, Any] = {"window": window, "city": city, "offline": checked.offline, "online": checked.online,
                           "rejected": 0, "rejected_before": 0, "failed": []}
    for record_id, reason in checked.bad:
        got, body = client.verdict(base, key, city, record_id, reason)
        if got < 300:
            out["rejected"] += 1
        elif got == 409 and body.get("code") == "DUPLICATE_CHARGEBACK":
            out["rejected_before"] += 1
        else:
            out["failed"].append(f"{record_id}: {body.get('code')}: {body.get('reason')}")
    return out


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..offline.desk import issuer_keys
    from ..persistence.settlement_export import load_or_make_key
    from .settle_clearing import KEY_FILE

    settings = load_settings(args.config)
    key_path = args.key_file or settings.state.path / KEY_FILE
    if not key_path.exists():
        raise CityCardError(f"no key in {key_path} (the one `citycard settle clearing` signs with)")
    out = verify(args.url.rstrip("/"), args.city, args.window, load_or_make_key(key_path), issuer_keys(settings))
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.city} {args.window}: {out['offline']} offline records checked ({out['online']} online),"
              f" {out['rejected']} rejected now, {out['rejected_before']} rejected before,"
              f" {len(out['failed'])} verdicts refused")
        for f in out["failed"]:
            print(f"  refused: {f}")
    if out["failed"]:
        raise CityCardError(f"{len(out['failed'])} verdicts refused by the house")
    return 0


def _print_report(r: dict[str, Any]) -> None:
    print(f"window {r['window']}: {r['records']} records, {r['chargebacks']} chargebacks")
    print(f"{'city':<16} {'position_fen':>14} {'receivable':>12} {'payable':>12} {'fees_kept':>10} {'fees_borne':>10}")
    for city, pos in r["multilateral"].items():
        s = r["statements"][city]
        print(f"{city:<16} {pos:>14} {s['receivable_gross_fen']:>12} {s['payable_gross_fen']:>12}"
              f" {s['issuer_fees_fen']:>10} {s['acquirer_fees_fen']:>10}")
    print(f"sum of positions: {sum(r['multilateral'].values())} fen")
    for b in r["bilateral"]:
        print(f"  {b['payer']} pays {b['payee']} {b['amount_fen']} fen")
    if r["suspended"]:
        print(f"over their net debit cap (stand-in refused until settled): {', '.join(r['suspended'])}")
    for c in r["charged_back"]:
        print(f"  chargeback {c['record_id']}: {c['acquirer']} returns to {c['issuer']} ({c['reason']})")
