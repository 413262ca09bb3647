"""docs/protocol.md section 15's vectors are what the code produces; the TACs and the batch MAC
recomputed here with ``cryptography`` and ``hmac`` directly, not through citycard's helpers."""

import hashlib
import hmac
import importlib.util
import sys
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

from citycard.protocols import messages as m
from citycard.protocols.frames import FrameDecoder
from tests.support.paths import ROOT

DOC = ROOT / "docs" / "protocol.md"
SCRIPT = ROOT / "scripts" / "offline_vectors.py"


@pytest.fixture(scope="module")
def ov() -> ModuleType:
    spec = importlib.util.spec_from_file_location("offline_vectors", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("offline_vectors", module)
    spec.loader.exec_module(module)
    return module


def _ecb(key: bytes, block: bytes) -> bytes:
    k = key * 3 if len(key) == 8 else key + key[:8]
    enc = Cipher(TripleDES(k), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def test_the_section_is_in_the_document_verbatim(ov: ModuleType) -> None:
    doc = DOC.read_text(encoding="utf-8")
    section = ov.render()
    assert section in doc, "docs/protocol.md is stale: run scripts/offline_vectors.py --write"
    assert doc.count(ov.BEGIN) == 1 and ov.replace_section(doc, section) == doc


def test_tacs_and_mac_recomputed_independently(ov: ModuleType) -> None:
    v = ov.compute()
    mtk = bytes.fromhex(ov.ISSUER[2])
    factor = bytes.fromhex(f"{ov.CARD:020d}")[-8:]
    dtk = _ecb(mtk, factor) + _ecb(mtk, bytes(b ^ 0xFF for b in factor))
    assert dtk == v.dtk
    tac_key = bytes(a ^ b for a, b in zip(dtk[:8], dtk[8:], strict=True))
    for r in v.records:
        data = (r.amount_fen.to_bytes(4, "big") + bytes([6]) + ov.TERMINAL_ID.to_bytes(6, "big")
                + r.terminal_seq.to_bytes(4, "big") + bytes.fromhex("20261206081500"))
        padded = data + b"\x80" + bytes(-(len(data) + 1) % 8)
        chain = bytes(8)
        for i in range(0, len(padded), 8):
            chain = _ecb(tac_key, bytes(a ^ b for a, b in zip(chain, padded[i : i + 8], strict=True)))
        assert chain[:4] == r.tac
    key = hmac.new(bytes.fromhex(ov.BATCH_MASTER_HEX), ov.TERMINAL_ID.to_bytes(6, "big"), hashlib.sha256).digest()
    assert key == v.batch_key
    assert hmac.new(key, v.mac_input, hashlib.sha256).digest() == v.mac
    [body] = FrameDecoder(1 << 20).feed(v.upload)
    upload = m.client_decoder.decode(body)
    assert isinstance(upload, m.OfflineUpload) and upload.mac == v.mac and len(upload.records) == 2
    assert upload.records[1].counter == 1 and upload.records[1].when == 20261206081500
