"""The card emulator in tests: started in-process (``CardEmulator``) or as ``citycard card
emulate`` in a subprocess, and pyscard on vpcd's first reader to talk to it. Every wait is
bounded."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.pcsc import READER

WAIT_S = 10.0
POLL_S = 0.05
REPO = Path(__file__).resolve().parents[2]


def pyscard_reader():  # noqa: ANN201 - a pyscard reader
    from smartcard.System import readers

    found = [r for r in readers() if str(r) == READER]
    assert found, f"no reader {READER!r} (pcscd with vsmartcard-vpcd)"
    return found[0]


def connect_when_present(deadline_s: float = WAIT_S):  # noqa: ANN201 - a pyscard connection
    """A pyscard connection to the card in vpcd's first reader, once one is there."""
    from smartcard.Exceptions import CardConnectionException, NoCardException

    end = time.monotonic() + deadline_s
    while True:
        conn = pyscard_reader().createConnection()
        try:
            conn.connect()
            return conn
        except (NoCardException, CardConnectionException):
            if time.monotonic() > end:
                raise
            time.sleep(POLL_S)


def wait_card_absent(deadline_s: float = WAIT_S) -> None:
    """Until pyscard sees no card in the reader (AssertionError after the deadline)."""
    from smartcard.Exceptions import CardConnectionException, NoCardException

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        conn = pyscard_reader().createConnection()
        try:
            conn.connect()
        except (NoCardException, CardConnectionException):
            return
        conn.disconnect()
        time.sleep(POLL_S)
    raise AssertionError(f"a card is still in {READER!r} after {deadline_s} s")


def transmitter(conn) -> Callable[[bytes], bytes]:  # noqa: ANN001 - a pyscard connection
    """``transmit(apdu bytes) -> response bytes`` over a pyscard connection."""

    def transmit(apdu: bytes) -> bytes:
        data, sw1, sw2 = conn.transmit(list(apdu))
        return bytes(data) + bytes([sw1, sw2])

    return transmit


def wait_until(what: str, check: Callable[[], bool], deadline_s: float = WAIT_S) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_S)


class EmulatorProcess:
    """``citycard card emulate ...`` in a subprocess, its stdout lines collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "citycard.cli.main", "card", "emulate", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                     cwd=REPO)
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))

    def wait_line(self, part: str, deadline_s: float = WAIT_S) -> str:
        """The next line (from those not yet waited for) containing ``part``."""
        end = time.monotonic() + deadline_s
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {part!r} in {deadline_s} s; saw {self.lines}")
            try:
                line = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self._q.empty():
                    raise AssertionError(f"emulator exited {self.proc.returncode} before {part!r}; "
                                         f"saw {self.lines}; stderr {self.stderr()}") from None
                continue
            self.lines.append(line)
            if part in line:
                return line

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self, deadline_s: float = WAIT_S) -> int:
        """SIGTERM, the exit code; every line it printed is in ``lines`` after this."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(deadline_s)
            raise AssertionError("the emulator did not stop on SIGTERM") from None
        self._reader.join(deadline_s)
        while not self._q.empty():
            self.lines.append(self._q.get_nowait())
        return code


SETTLE_S = 3.0


def settle(events: list[str], since: int) -> None:
    """After an insertion, until pcscd has powered the idle card down again (its 400 ms grace
    period): a pyscard connection made in that window is reset under the test ("Card was
    reset"). ``events``: the emulator's event lines, ``since``: their count before the insert.
    Gives up quietly after SETTLE_S: a pcscd that never powers down does not reset either."""
    end = time.monotonic() + SETTLE_S
    while time.monotonic() < end:
        if any("control power_off" in e for e in events[since:]):
            return
        time.sleep(POLL_S)


def drop(conn) -> None:  # noqa: ANN001 - a pyscard connection
    """Release a connection to a card that left the reader, as a terminal does: a stale handle
    left open makes pcscd report the next card's connection as reset."""
    from smartcard.Exceptions import CardConnectionException

    try:
        conn.disconnect()
    except CardConnectionException:
        pass
