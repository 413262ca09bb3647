"""``citycard card emulate``: a city-pass card in vpcd's virtual reader (docs/card.md, "The
emulator"). SIGUSR1 removes or re-inserts it, SIGUSR2 tears the next debit, SIGINT/SIGTERM
end the run with the state saved."""

import argparse
import signal
import sys
import threading
import time
from datetime import date
from pathlib import Path
from types import FrameType

from ..config.settings import load_settings
from ..domain.cards import Category
from ..domain.offline import IssuerKeys
from ..errors import CityCardError
from ..protocols.vpcd import VPCD_PORT
from .main import _fen, _positive

CATEGORIES = {c.name.lower(): int(c) for c in Category}
TICK_S = 0.1  # how often the main loop looks at signals and timers
MAX_CARD_NO = 10**20 - 1


def _card_no(text: str) -> int:
    value = _positive(text)
    if value > MAX_CARD_NO:
        raise argparse.ArgumentTypeError(f"a card number has at most 20 digits: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"must be in (0, 604800] seconds: {text!r}")
    return value


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    cp = sub.add_parser("card", help="the city-pass card: an emulator for vpcd's virtual reader")
    csub = cp.add_subparsers(dest="card_command", required=True)
    em = csub.add_parser(
        "emulate", help="put an emulated city-pass card in vpcd's reader until interrupted",
        description="Connect to vsmartcard's vpcd (pcscd's virtual reader) and answer as a personalised "
                    "city-pass card. The card's state lives in a JSON file, written before each answer. "
                    "SIGUSR1 removes or re-inserts the card, SIGUSR2 tears the next debit. See docs/card.md.")
    em.add_argument("--card-no", type=_card_no, required=True, help="the card number (up to 20 digits)")
    em.add_argument("--balance-fen", type=_fen, default=0,
                    help="a new card's opening balance (default 0: load it at a counter, `citycard counter load`,"
                         " so the host knows it; an opening balance the host never saw fails its shadow check)")
    em.add_argument("--category", choices=list(CATEGORIES), default="adult", help="a new card's category")
    em.add_argument("--state", metavar="FILE", help="the state file (default <state dir>/cards/<card-no>.json)")
    em.add_argument("--port", type=_positive, default=VPCD_PORT, help=f"vpcd's port (default {VPCD_PORT})")
    em.add_argument("--host", default="127.0.0.1", help="vpcd's host (default 127.0.0.1)")
    em.add_argument("--tear-next-debit", action="store_true",
                    help="the first debit of the run takes effect but is not answered (the card is pulled)")
    em.add_argument("--for-s", type=_seconds, help="end the run after this many seconds")
    em.add_argument("--inserted-for-s", type=_seconds, help="remove the card after this many seconds")
    em.add_argument("-v", dest="apdus", action="store_true", help="print each APDU, its status word and meaning")
    em.set_defaults(func=cmd_card_emulate)


def cmd_card_emulate(args: argparse.Namespace) -> int:
    from ..emulator import state_file
    from ..emulator.runner import LOCAL_HOSTS, CardEmulator, EmulatorError, port_listening, random4

    if args.port > 65535:
        raise CityCardError("--port must be 1..65535")
    if args.host in LOCAL_HOSTS and not port_listening(args.port):  # before a state file is made
        raise EmulatorError(f"vpcd is not listening on {args.host}:{args.port} "
                            "(is pcscd with vsmartcard-vpcd running?)")
    settings = load_settings(args.config)
    c = settings.card
    keys = IssuerKeys.of_hex(c.issuer_mpk_hex, c.issuer_mlk_hex, c.issuer_mtk_hex)
    path = Path(args.state) if args.state else state_file.default_path(settings.state.path, args.card_no)
    card, created = state_file.load_or_create(
        path, args.card_no,
        lambda: state_file.new_card(keys, args.card_no, args.balance_fen, CATEGORIES[args.category], date.today(),
                                    random4), random4)
    out = _Printer()
    out(f"card {args.card_no}: {'personalised, ' if created else ''}balance {card.state.balance_fen} fen, "
        f"state {path}")
    emu = CardEmulator(card, path, host=args.host, port=args.port, on_event=out, verbose=args.apdus)
    flags = _Signals()
    emu.insert()  # vpcd not listening: an EmulatorError, exit 2
    if args.tear_next_debit:
        emu.arm_tear()
    started = time.monotonic()
    remove_at = started + args.inserted_for_s if args.inserted_for_s else None
    try:
        while not flags.stop.is_set():
            now = time.monotonic()
            if args.for_s and now - started >= args.for_s:
                break
            if remove_at is not None and now >= remove_at:
                remove_at = None
                emu.remove()
            if flags.take("toggle"):
                try:
                    emu.toggle()
                except CityCardError as e:
                    out(f"not inserted: {e}")
            if flags.take("tear"):
                emu.arm_tear()
            flags.stop.wait(TICK_S)
    finally:
        emu.stop()
        flags.restore()
    out(f"stopped: balance {card.state.balance_fen} fen, state saved in {path}")
    return 0


class _Printer:
    """One line per event, flushed: a test or a person reads them as they happen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)


class _Signals:
    """Signals set flags; the main loop acts on them (no socket work inside a handler)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._pending: set[str] = set()
        self._old = {}
        for sig, handler in ((signal.SIGINT, self._on_stop), (signal.SIGTERM, self._on_stop),
                             (signal.SIGUSR1, self._on_toggle), (signal.SIGUSR2, self._on_tear)):
            self._old[sig] = signal.signal(sig, handler)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _on_toggle(self, signum: int, frame: FrameType | None) -> None:
        self._pending.add("toggle")

    def _on_tear(self, signum: int, frame: FrameType | None) -> None:
        self._pending.add("tear")

    def take(self, name: str) -> bool:
        if name in self._pending:
            self._pending.discard(name)
            return True
        return False

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run as: citycard card emulate ...")
