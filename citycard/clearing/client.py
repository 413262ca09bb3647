"""Talking to a clearing house over HTTP (httpx): what the CLI and a city's sender use.

Each call returns (HTTP status, the JSON answer); a refusal's answer is ``{code, reason}``.
"""

from collections.abc import Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import CityCardError
from .wire import b64, records_request_bytes, verdict_bytes

TIMEOUT_S = 120.0  # a delivery of millions of records takes seconds to check


def _call(method: str, url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url, json=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CityCardError(f"the clearing house at {url} did not answer: {exc}") from None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"code": "HTTP", "reason": r.text[:300]}


def delivery_body(sender: str, window: str, manifest: bytes, signature: bytes,
                  files: Mapping[str, bytes]) -> dict[str, Any]:
    return {"sender": sender, "window": window, "manifest_b64": b64(manifest), "signature_b64": b64(signature),
            "files_b64": {n: b64(d) for n, d in sorted(files.items())}}


def verdict_body(key: Ed25519PrivateKey, issuer: str, record_id: str, reason: str) -> dict[str, Any]:
    return {"issuer": issuer, "record_id": record_id, "reason": reason,
            "signature_b64": b64(key.sign(verdict_bytes(issuer, record_id, reason)))}


def deliver(base: str, sender: str, window: str, manifest: bytes, signature: bytes,
            files: Mapping[str, bytes]) -> tuple[int, Any]:
    return _call("POST", f"{base}/deliveries", body=delivery_body(sender, window, manifest, signature, files))


def add_participant(base: str, token: str, city: str, public_key_hex: str, cap_fen: int, rate_bp: int,
                    prefixes: list[str]) -> tuple[int, Any]:
    return _call("POST", f"{base}/participants", token, {
        "city": city, "public_key_hex": public_key_hex, "net_debit_cap_fen": cap_fen, "rate_bp": rate_bp,
        "card_prefixes": prefixes})


def close(base: str, token: str, window: str) -> tuple[int, Any]:
    return _call("POST", f"{base}/windows/{window}/close", token)


def report(base: str, window: str) -> tuple[int, Any]:
    return _call("GET", f"{base}/windows/{window}/report")


def statement(base: str, window: str, city: str) -> tuple[int, Any]:
    return _call("GET", f"{base}/windows/{window}/statements/{city}")


def settled(base: str, token: str, window: str, city: str) -> tuple[int, Any]:
    return _call("POST", f"{base}/windows/{window}/settled/{city}", token)


def records(base: str, key: Ed25519PrivateKey, issuer: str, window: str) -> tuple[int, bytes]:
    """(status, the clearing CSV of the records cleared against ``issuer``'s cards in ``window``)."""
    headers = {"x-signature": b64(key.sign(records_request_bytes(issuer, window)))}
    try:
        r = httpx.get(f"{base}/windows/{window}/records/{issuer}", headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CityCardError(f"the clearing house at {base} did not answer: {exc}") from None
    return r.status_code, r.content


def verdict(base: str, key: Ed25519PrivateKey, issuer: str, record_id: str, reason: str) -> tuple[int, Any]:
    """Reject a record cleared against ``issuer``'s cards (409 DUPLICATE_CHARGEBACK: rejected before)."""
    return _call("POST", f"{base}/verdicts", body=verdict_body(key, issuer, record_id, reason))
