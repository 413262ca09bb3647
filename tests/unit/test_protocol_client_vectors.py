"""ClientConnection produces the frames docs/protocol.md (section 13) shows, and takes the
server's documented frames as answers to them."""

import importlib.util
import re
import sys
from collections.abc import Callable
from types import ModuleType

import pytest

from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.client import (
    Authenticated,
    BatchAnswered,
    Challenged,
    ClientConnection,
    ParamsReceived,
    PongReceived,
    TapAnswered,
)
from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def pv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_vectors", ROOT / "scripts" / "protocol_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("protocol_vectors", module)
    spec.loader.exec_module(module)
    return module


def doc_frames() -> list[tuple[str, bytes]]:
    """(direction, frame) for every frame block of the document, in order."""
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    pattern = r"#### \d+\. (T->S|S->T) [^\n]+\n\nMap: `[^\n]*`\n\n```\n([0-9a-f \n]+)```"
    return [(d, bytes.fromhex(h.replace("\n", " "))) for d, h in re.findall(pattern, doc)]


def test_the_client_produces_the_documented_bytes(pv: ModuleType) -> None:
    frames = doc_frames()
    assert len(frames) == 14
    client = ClientConnection(pv.TERMINAL_ID, terminal_key(pv.MASTER_KEY, pv.TERMINAL_ID))
    t0, card, route = pv.SERVER_TIME_MS, pv.CARD, pv.ROUTE
    tap = m.Tap(seq=1, card=card, time_ms=t0 + 1_000, kind=1, route=route)
    batch = [m.TapItem(seq=2, card=card, time_ms=t0 + 61_000, kind=1, route=route),
             m.TapItem(seq=3, card=card, time_ms=t0 + 62_000, kind=8, amount_fen=5_000)]
    sends: list[Callable[[], bytes]] = [
        lambda: client.hello(pv.TERMINAL_NONCE), client.auth, lambda: client.tap(tap),
        lambda: client.taps(batch, req=7)[1], lambda: client.tap(tap), lambda: client.ping(t0 + 90_000),
        lambda: client.params(fare_version=1, hotlist_version=1)]
    expected = (Challenged, Authenticated, TapAnswered, BatchAnswered, TapAnswered, PongReceived, ParamsReceived)
    answers = iter(expected)
    for direction, data in frames:
        if direction == "T->S":
            assert sends.pop(0)() == data
        else:
            [event] = client.receive_data(data)
            assert type(event) is next(answers), event
    assert not sends and client.pending == 0
    assert client.auth_ok is not None and client.auth_ok.max_batch == pv.MAX_BATCH_TAPS
