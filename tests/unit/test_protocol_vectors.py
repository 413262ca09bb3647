"""The test vectors in docs/protocol.md are what the code produces, checked independently."""

import hashlib
import hmac
import importlib.util
import re
import sys
from types import ModuleType

import msgpack
import pytest

from tests.support.paths import ROOT

DOC = ROOT / "docs" / "protocol.md"
SCRIPT = ROOT / "scripts" / "protocol_vectors.py"


@pytest.fixture(scope="module")
def pv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_vectors", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("protocol_vectors", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def hex_in_doc(pv: ModuleType, data: bytes) -> str:
    return pv.hex_block(data)


def test_generated_section_appears_verbatim(pv: ModuleType, doc: str) -> None:
    section = pv.render()
    assert section in doc, "docs/protocol.md is stale: run scripts/protocol_vectors.py --write"
    assert doc.count(pv.BEGIN) == 1 and doc.count(pv.END) == 1
    assert pv.replace_section(doc, section) == doc


def test_render_is_deterministic(pv: ModuleType) -> None:
    assert pv.render() == pv.render()


def test_key_and_mac_recomputed_independently(pv: ModuleType, doc: str) -> None:
    master = bytes(range(32))
    tid = (1001).to_bytes(8, "big")
    key = hmac.new(master, b"citycard/terminal-key/v1" + tid, hashlib.sha256).digest()
    t_nonce, s_nonce = bytes(range(0xA0, 0xB0)), bytes(range(0xB0, 0xC0))
    mac = hmac.new(key, b"citycard/auth/v1" + tid + t_nonce + s_nonce, hashlib.sha256).digest()
    v = pv.compute()
    assert (v.terminal_key, v.mac) == (key, mac)
    assert len(v.mac_input) == 56 and len(v.key_input) == 32
    for value in (key, mac, v.mac_input, v.key_input):
        assert hex_in_doc(pv, value) in doc


def frames_in_doc(doc: str) -> list[tuple[str, bytes]]:
    """(heading, frame bytes) for every frame block of section 13."""
    out = []
    pattern = r"#### \d+\. (T->S|S->T) ([^\n]+)\n\nMap: `[^\n]*`\n\n```\n([0-9a-f \n]+)```"
    for match in re.finditer(pattern, doc):
        out.append((match.group(2), bytes.fromhex(match.group(3).replace("\n", " "))))
    return out


def test_doc_frames_are_plain_msgpack_exchange(doc: str) -> None:
    frames = frames_in_doc(doc)
    tags = []
    for heading, frame in frames:
        length = int.from_bytes(frame[:4], "big")
        assert length == len(frame) - 4, heading
        body = msgpack.unpackb(frame[4:], raw=False)
        assert isinstance(body, dict), heading
        tags.append(body["t"])
    assert tags == [
        "hello", "challenge", "auth", "auth_ok", "tap", "result", "taps", "results",
        "tap", "result", "ping", "pong", "params", "params_info",
    ]
    by_tag = {}
    for _, frame in frames:
        body = msgpack.unpackb(frame[4:], raw=False)
        by_tag.setdefault(body["t"], []).append(body)
    [hello], [challenge], [auth] = by_tag["hello"], by_tag["challenge"], by_tag["auth"]
    assert hello["terminal_id"] == 1001 and hello["nonce"] == bytes(range(0xA0, 0xB0))
    # the auth frame's MAC is the HMAC over the hello and challenge nonces, recomputed here
    key = hmac.new(
        bytes(range(32)), b"citycard/terminal-key/v1" + (1001).to_bytes(8, "big"), hashlib.sha256
    ).digest()
    message = b"citycard/auth/v1" + (1001).to_bytes(8, "big") + hello["nonce"] + challenge["nonce"]
    assert auth["mac"] == hmac.new(key, message, hashlib.sha256).digest()
    first, retry = by_tag["result"]
    assert first["code"] == 0 and not first["replay"]
    assert retry == {**first, "replay": True}
    [results] = by_tag["results"]
    [batch] = by_tag["taps"]
    assert results["req"] == batch["req"]
    assert [r["seq"] for r in results["results"]] == [t["seq"] for t in batch["taps"]]
    # the hotlist delta: applied to the terminal's copy at its version, it gives the new list
    [params], [info] = by_tag["params"], by_tag["params_info"]
    lost, stolen = 33_010_000_000_000_181, 33_010_000_000_000_199
    held = {lost}  # the list at version 1, as the inputs table says
    assert params["hotlist_version"] == 1 and not info["hotlist_reset"] and not info["hotlist_more"]
    assert (held | set(info["hotlist_added"])) - set(info["hotlist_removed"]) == {stolen}
    assert info["hotlist_to"] == info["hotlist_version"] == 3
    assert f"| hotlist | the terminal holds version 1 (card {lost} listed)" in doc


def test_script_prints_the_section(pv: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert pv.main([]) == 0
    assert capsys.readouterr().out == pv.render()


def test_shard_table_matches_the_formula(doc: str) -> None:
    rows = re.findall(r"^\| (\d+) \| `([0-9a-f]{16})` \| (\d+) \| (\d+) \|$", doc, re.M)
    assert len(rows) >= 5
    for card, product, upper, shard in rows:
        p = (int(card) * 0x9E3779B97F4A7C15) % 2**64
        assert p == int(product, 16)
        assert p >> 32 == int(upper)
        assert (p >> 32) % 16 == int(shard)
