"""The emulator's I/O: the pure card in vpcd's reader over TCP, its state saved before each
answer that follows a change.

Inserted = connected to vpcd (pcscd sees a card); removed = the connection closed. One
thread serves the link while the card is inserted; ``insert``/``remove``/``stop`` come from
the caller's thread (the CLI's main loop, or a test). A torn debit: the card applies the
debit and saves it, then leaves the field without answering.
"""

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import CityCardError
from ..protocols.apdu import describe
from ..protocols.card_store import card_to_dict
from ..protocols.epurse_card import EpurseCard
from ..protocols.vpcd import (
    VPCD_PORT,
    ApduEvent,
    Control,
    ControlEvent,
    VirtualCardLink,
    VpcdError,
    frame,
)
from . import state_file

ATR = bytes.fromhex("3B8880010000000000718100F9")  # T=1; the last byte is the check byte
CONNECT_TIMEOUT_S = 5.0
LISTEN_WAIT_S = 5.0  # how long a re-insertion waits for vpcd's port
# pcscd polls a reader's presence every 400 ms; a card back within that time after a removal
# is never seen (measured: vpcd does not take the new connection), so re-insertion waits.
REMOVAL_SETTLE_S = 1.0
JOIN_TIMEOUT_S = 5.0
RECV_BYTES = 4096
INS_DEBIT = 0x54
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class EmulatorError(CityCardError):
    """The emulator cannot reach vpcd, or its card cannot be served."""


def port_listening(port: int) -> bool:
    """Whether a local TCP port is in LISTEN, from /proc: a probe connection to vpcd would be
    taken for a card."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def quick_ack(sock: socket.socket) -> None:
    """ACK at once (Linux resets this after each read). vpcd writes a frame's length and its
    APDU apart; with Nagle on its side and delayed ACK on ours, every APDU waited 40 ms."""
    if hasattr(socket, "TCP_QUICKACK"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class CardEmulator:
    """A city-pass card that can be inserted into and removed from vpcd's reader."""

    def __init__(self, card: EpurseCard, state_path: Path, *, host: str = "127.0.0.1", port: int = VPCD_PORT,
                 on_event: Callable[[str], None] = print, verbose: bool = False) -> None:
        self.card, self.state_path = card, state_path
        self.host, self.port = host, port
        self.on_event, self.verbose = on_event, verbose
        self._lock = threading.Lock()  # the card and its state file
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._tear_armed = False
        self._removing = False  # remove() is closing the link: the serving thread stays quiet
        self._removed_at = float("-inf")  # monotonic time the last link closed
        self._saved = card_to_dict(card)

    # -- control, from the caller's thread --------------------------------------------------
    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "CardEmulator":
        self.insert()
        return self

    def arm_tear(self) -> None:
        """The next debit (purchase or compound) is applied and saved, then the card leaves the
        field without answering."""
        self._tear_armed = True
        self.on_event("tear armed: the next debit goes unanswered")

    def insert(self, wait_listen_s: float = 0.0) -> None:
        if self.inserted:
            return
        self._join()
        settle_s = self._removed_at + REMOVAL_SETTLE_S - time.monotonic()
        if settle_s > 0:
            time.sleep(settle_s)
        if self.host in LOCAL_HOSTS:
            deadline = time.monotonic() + wait_listen_s
            while not port_listening(self.port):
                if time.monotonic() >= deadline:
                    raise EmulatorError(f"vpcd is not listening on {self.host}:{self.port} "
                                        "(is pcscd with vsmartcard-vpcd running?)")
                time.sleep(0.05)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as e:
            raise EmulatorError(f"cannot connect to vpcd at {self.host}:{self.port}: {e}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="card-emulator", daemon=True)
        self._thread.start()
        self.on_event(f"inserted into vpcd {self.host}:{self.port}")

    def remove(self) -> None:
        sock = self._sock
        if sock is None or not self.inserted:
            self._join()
            return
        self._removing = True
        try:
            _close(sock)
            self._join()
        finally:
            self._removing = False
        self.on_event("removed")

    def toggle(self, wait_listen_s: float = LISTEN_WAIT_S) -> None:
        if self.inserted:
            self.remove()
        else:
            self.insert(wait_listen_s)

    def stop(self) -> None:
        """Remove the card and make sure its state is on disk."""
        self.remove()
        with self._lock:
            self._save_if_changed()

    def _join(self) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(JOIN_TIMEOUT_S)
        if t is None or not t.is_alive():
            self._thread, self._sock = None, None

    # -- the link, on the serving thread -------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        link = VirtualCardLink()
        try:
            while True:
                data = sock.recv(RECV_BYTES)
                quick_ack(sock)
                if not data:
                    if not self._removing:
                        self.on_event("removed (vpcd closed the link)")
                    return
                for event in link.receive(data):
                    out = self._on(event)
                    if out is None:
                        continue
                    if out is _TORN:
                        _close(sock)
                        self.on_event("removed (torn: the debit took effect, its answer was not sent)")
                        return
                    sock.sendall(frame(out))
        except VpcdError as e:
            self.on_event(f"link error, card pulled: {e}")
        except OSError as e:
            if not self._removing:  # not our remove(): the reader went away
                self.on_event(f"removed (the link failed: {e})")
        except CityCardError as e:  # the state could not be saved: never answer unsaved
            self.on_event(f"error, card pulled: {e}")
        finally:
            _close(sock)
            self._removed_at = time.monotonic()

    def _on(self, event: ControlEvent | ApduEvent) -> bytes | None:
        if isinstance(event, ControlEvent):
            if event.control == Control.GET_ATR:
                return ATR
            with self._lock:
                self.card.power_on()  # power on, off, reset: a new session
            if self.verbose:
                self.on_event(f"control {event.control.name.lower()}")
            return None
        with self._lock:
            answer = self.card.answer(event.apdu)
            self._save_if_changed()
            tear = self._tear_armed and event.apdu[1] == INS_DEBIT and answer[-2:] == b"\x90\x00"
            if tear:
                self._tear_armed = False
        sw = int.from_bytes(answer[-2:], "big")
        if self.verbose or tear:
            self.on_event(f"apdu {event.apdu.hex().upper()} -> {sw:04X} {describe(sw)}"
                          + (" (torn: not sent)" if tear else ""))
        return _TORN if tear else answer

    def _save_if_changed(self) -> None:
        now = card_to_dict(self.card)
        if now != self._saved:
            state_file.save(self.state_path, self.card)
            self._saved = now

    def state_on_disk(self) -> dict[str, object]:
        with self.state_path.open() as f:
            doc: dict[str, object] = json.load(f)
        return doc


_TORN = b"\x00torn"  # a marker, never sent


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def random4() -> bytes:
    return os.urandom(4)
