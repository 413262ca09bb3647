"""The real PC/SC stack for tests: pcscd with vsmartcard's vpcd driver (Debian `pcscd`,
`vsmartcard-vpcd`), and a minimal virtual card that plugs into vpcd's first reader over TCP.

pcscd is used if it runs, else started here for the session (and stopped after). Without it
the reader tests are skipped, except in CI, where its absence fails them.
"""

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from citycard.protocols.vpcd import (
    VPCD_PORT,
    ApduEvent,
    Control,
    ControlEvent,
    VirtualCardLink,
    frame,
)

START_TIMEOUT_S = 10.0
READER = "Virtual PCD 00 00"  # vpcd's first reader, the one on VPCD_PORT
READER2 = "Virtual PCD 00 01"  # vpcd's second reader
VPCD_PORT2 = VPCD_PORT + 1
PORTS = {READER: VPCD_PORT, READER2: VPCD_PORT2}
LISTEN_WAIT_S = 5.0  # vpcd reopens its port a moment after a card leaves


def vpcd_listening(port: int = VPCD_PORT) -> bool:
    """Whether vpcd's port is in LISTEN, read from /proc: a probe connection would be taken for
    a card by vpcd, which then stops listening for a while."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


@contextmanager
def running_pcscd() -> Iterator[str | None]:
    """None when pcscd with vpcd is up (already, or started here); else why not."""
    if vpcd_listening():
        yield None
        return
    binary = shutil.which("pcscd") or ("/usr/sbin/pcscd" if os.path.exists("/usr/sbin/pcscd") else None)
    if binary is None or not os.path.exists("/etc/reader.conf.d/vpcd"):
        yield "pcscd or vsmartcard-vpcd is not installed (apt-get install pcscd vsmartcard-vpcd)"
        return
    proc = subprocess.Popen([binary, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not vpcd_listening() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        yield None if vpcd_listening() else f"pcscd did not open vpcd's port {VPCD_PORT}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class VirtualCard:
    """A card in a vpcd reader (the first unless ``port`` says otherwise) while it is
    connected: answers the ATR and each APDU with ``answer(apdu)`` (which may sleep, to play a
    slow card, or return fewer than 2 bytes, to play a broken one). ``remove()`` pulls it out."""

    def __init__(self, atr: bytes, answer: Callable[[bytes], bytes], port: int = VPCD_PORT) -> None:
        self.atr, self.answer = atr, answer
        self.apdus: list[bytes] = []
        deadline = time.monotonic() + LISTEN_WAIT_S
        while not vpcd_listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        link = VirtualCardLink()
        try:
            while data := self._sock.recv(4096):
                for event in link.receive(data):
                    if isinstance(event, ControlEvent) and event.control == Control.GET_ATR:
                        self._sock.sendall(frame(self.atr))
                    elif isinstance(event, ApduEvent):
                        self.apdus.append(event.apdu)
                        self._sock.sendall(frame(self.answer(event.apdu)))
        except OSError:
            pass  # removed

    def remove(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)
