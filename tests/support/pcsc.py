"""The real PC/SC stack for tests: pcscd with vsmartcard's vpcd driver (Debian `pcscd`,
`vsmartcard-vpcd`), and a minimal virtual card that plugs into vpcd's first reader over TCP.

pcscd is used if it runs, else started here for the session (and stopped after). Without it,
or without pyscard, the reader tests are skipped, except in CI, where its absence fails them.
"""

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from citycard.emulator.runner import quick_ack
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
    """None when pcscd with vpcd is up (already, or started here) and pyscard is installed;
    else why not."""
    try:
        import smartcard  # noqa: F401
    except ImportError:
        yield "pyscard is not installed (pip install -e '.[readers]', after apt-get install libpcsclite-dev swig)"
        return
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
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        link = VirtualCardLink()
        try:
            while data := self._sock.recv(4096):
                quick_ack(self._sock)
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


class PrivatePcscd:
    """A pcscd of the test's own, in a mount namespace of its own (``unshare -m``: pcscd's pid
    file and socket paths are fixed, so the shared pcscd's are hidden by a bind mount of
    ``workdir``). Its vpcd readers are ``Private PCD 00 00`` and ``... 00 01`` on ``port`` and
    ``port + 1``. Stopping it unplugs every reader; starting it again plugs them back.

    pcsc-lite's client picks the socket from ``PCSCLITE_CSOCK_NAME`` once per process: talk to
    this pcscd from a subprocess with ``env`` set."""

    READERS = ("Private PCD 00 00", "Private PCD 00 01")

    def __init__(self, workdir: str, port: int = 0x8C8B) -> None:
        self.port = port
        self._run_dir = os.path.join(workdir, "run")
        self._conf_dir = os.path.join(workdir, "conf")
        self.socket_path = os.path.join(self._run_dir, "pcscd.comm")
        self.env = {**os.environ, "PCSCLITE_CSOCK_NAME": self.socket_path}
        self._proc: subprocess.Popen[bytes] | None = None
        os.makedirs(self._run_dir, exist_ok=True)
        os.makedirs(self._conf_dir, exist_ok=True)
        with open(os.path.join(self._conf_dir, "vpcd"), "w") as f:
            f.write(f'FRIENDLYNAME "Private PCD"\nDEVICENAME /dev/null:0x{port:04X}\n'
                    f"LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID 0x{port:04X}\n")

    @staticmethod
    def why_not() -> str | None:
        """None if one can be started here (root, ``unshare``, pcscd, the vpcd driver)."""
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            return "a private pcscd needs root and unshare(1) (a mount namespace)"
        if shutil.which("pcscd") is None and not os.path.exists("/usr/sbin/pcscd"):
            return "pcscd is not installed"
        if not os.path.exists("/usr/lib/pcsc/drivers/serial/libifdvpcd.so"):
            return "vsmartcard-vpcd is not installed"
        return None

    def start(self) -> None:
        binary = shutil.which("pcscd") or "/usr/sbin/pcscd"
        script = f"mount --bind {self._run_dir} /run/pcscd && exec {binary} --foreground -c {self._conf_dir}"
        self._proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (os.path.exists(self.socket_path) and vpcd_listening(self.port)):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the private pcscd did not come up (port {self.port}, {self.socket_path})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None
        if os.path.exists(self.socket_path):  # killed before it could clean up
            os.unlink(self.socket_path)

    def __enter__(self) -> "PrivatePcscd":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
