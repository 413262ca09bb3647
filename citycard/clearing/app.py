"""The clearing house's HTTP API (FastAPI; docs/clearing.md, "The clearing house service").

Senders and issuers authenticate by their signatures (a delivery's manifest, a verdict);
the operator's calls (participants, close, settled) by a bearer token. Every refusal answers
409 (the house's state says no) or 422 (the request does not check) with ``{code, reason}``
and changes nothing. Bodies are read up to a bound (413 past it) before anything is parsed.
"""

import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..domain.clearing import MAX_PARTICIPANTS
from ..domain.clearing_records import ClearingCode, Outcome, window_key
from ..protocols.clearing_files import render_csv
from . import wire
from .service import DUPLICATE_PARTICIPANT, TOO_MANY_PARTICIPANTS, HouseService

log = logging.getLogger(__name__)
MAX_REJECTIONS_SHOWN = 1000  # a delivery's answer lists at most this many rejected records
_CONFLICT = {ClearingCode.DUPLICATE_FILE, ClearingCode.WINDOW_CLOSED, ClearingCode.HORIZON_FULL,
             ClearingCode.WINDOW_FULL, ClearingCode.DUPLICATE_CHARGEBACK, ClearingCode.WINDOW_OPEN}


def refusal(status: int, code: str, reason: str) -> JSONResponse:
    return JSONResponse({"code": code, "reason": reason}, status_code=status)


def _status(code: ClearingCode) -> int:
    return 409 if code in _CONFLICT else 422


class _TooBig(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _TooBig
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > limit:
            raise _TooBig
    return bytes(out)


def create_app(house: HouseService, admin_token: str, max_body_bytes: int = 64 * 2**20,
               max_small_body_bytes: int = 65_536) -> FastAPI:
    """The API over ``house``. ``max_body_bytes`` bounds a delivery (its files base64, so about
    three quarters of it is data); other bodies are small."""
    app = FastAPI(title="citycard clearing house", docs_url=None, redoc_url=None)
    app.state.house = house

    @app.exception_handler(_TooBig)
    async def too_big(_request: Request, _exc: _TooBig) -> JSONResponse:
        return refusal(413, "TOO_LARGE", "the body is over the house's bound")

    @app.exception_handler(Exception)
    async def failed(_request: Request, exc: Exception) -> JSONResponse:
        # the house rebuilt its core from the committed events already (service._mutate)
        log.exception("clearing house: a request failed", exc_info=exc)
        return refusal(500, "INTERNAL", f"the house could not do it ({type(exc).__name__}); nothing was changed")

    @app.exception_handler(wire.Refusal)
    async def bad_request(_request: Request, exc: wire.Refusal) -> JSONResponse:
        return refusal(422, exc.code, exc.reason)

    def admin(request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            return refusal(401, "UNAUTHORIZED", "the operator's calls need Authorization: Bearer <admin token>")
        return None

    def check_window(window: str) -> JSONResponse | None:
        try:
            window_key(window)
        except ValueError as exc:
            return refusal(422, ClearingCode.WRONG_WINDOW.name, str(exc))
        return None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "schema": house.schema, "participants": len(await house.participants()),
                "replayed_events": house.replayed}

    @app.post("/participants", status_code=201, response_model=None)
    async def add_participant(request: Request) -> Any:
        if (denied := admin(request)) is not None:
            return denied
        city, key, cap, rate, prefixes = wire.participant(
            wire.decode(await _body(request, max_small_body_bytes), wire.ParticipantIn))
        got = await house.register(city, key, cap, rate, prefixes)
        if got == DUPLICATE_PARTICIPANT:
            return refusal(409, DUPLICATE_PARTICIPANT, f"{city} is registered already")
        if got == TOO_MANY_PARTICIPANTS:
            return refusal(409, TOO_MANY_PARTICIPANTS, f"at most {MAX_PARTICIPANTS} participants")
        return {"code": "OK", "city": city}

    @app.post("/deliveries", response_model=None)
    async def deliver(request: Request) -> Any:
        sender, window, manifest, signature, files = wire.delivery(
            wire.decode(await _body(request, max_body_bytes), wire.DeliveryIn))
        got = await house.deliver(sender, window, manifest, signature, files)
        if got.code != ClearingCode.OK:
            return refusal(_status(got.code), got.code.name, got.reason)
        return {"code": "OK", "accepted": got.accepted, "rejected_count": len(got.rejected),
                "rejected": [{"record_id": r.record_id, "code": r.code.name, "reason": r.reason}
                             for r in got.rejected[:MAX_REJECTIONS_SHOWN]]}

    @app.post("/verdicts", response_model=None)
    async def verdict(request: Request) -> Any:
        issuer, record_id, reason, signature = wire.verdict(
            wire.decode(await _body(request, max_small_body_bytes), wire.VerdictIn))
        got = await house.verdict(issuer, record_id, reason, signature)
        if got.code != ClearingCode.OK:
            return refusal(_status(got.code), got.code.name, got.reason)
        return {"code": "OK", "record_id": record_id}

    @app.post("/windows/{window}/close", response_model=None)
    async def close(window: str, request: Request) -> Any:
        if (denied := admin(request) or check_window(window)) is not None:
            return denied
        got = await house.close_window(window)
        if got.code != ClearingCode.OK or got.report is None:
            return refusal(_status(got.code), got.code.name, got.reason)
        return wire.report_json(got.report)

    @app.post("/windows/{window}/settled/{city}", response_model=None)
    async def settled(window: str, city: str, request: Request) -> Any:
        if (denied := admin(request) or check_window(window)) is not None:
            return denied
        got = await house.settled(city[:40], window)
        if got.code != ClearingCode.OK:
            return refusal(404 if got.code == ClearingCode.UNKNOWN_WINDOW else _status(got.code),
                           got.code.name, got.reason)
        return {"code": "OK", "city": city, "window": window}

    @app.get("/windows/{window}/report", response_model=None)
    async def report(window: str) -> Any:
        if (denied := check_window(window)) is not None:
            return denied
        got = await house.report(window)
        if got is None:
            if await house.is_held(window):
                return refusal(404, ClearingCode.WINDOW_OPEN.name, f"window {window} is not closed yet")
            return refusal(404, ClearingCode.UNKNOWN_WINDOW.name, f"window {window} is not held")
        return wire.report_json(got)

    @app.get("/windows/{window}/statements/{city}", response_model=None)
    async def statement(window: str, city: str) -> Any:
        if (denied := check_window(window)) is not None:
            return denied
        got = await house.statement(city[:40], window)
        if got is None:
            return refusal(404, ClearingCode.UNKNOWN_WINDOW.name, f"no statement for {city[:40]!r} in window {window}")
        final = await house.report(window) is not None
        return {"final": final, **wire.statement_json(got)}

    @app.get("/windows/{window}/records/{issuer}", response_model=None)
    async def records(window: str, issuer: str, request: Request) -> Any:
        """The records cleared against the issuer's cards, as a clearing CSV, for it to check;
        the header ``x-signature`` is its signature (base64) over records_request_bytes."""
        if (denied := check_window(window)) is not None:
            return denied
        signature = wire.signature_of(request.headers.get("x-signature", ""))
        got = await house.records_of(issuer[:40], window, signature)
        if isinstance(got, Outcome):
            status = 404 if got.code == ClearingCode.UNKNOWN_WINDOW else 422
            return refusal(status, got.code.name, got.reason)
        return Response(render_csv(got), media_type="text/csv")

    @app.get("/suspended")
    async def suspended() -> dict[str, Any]:
        return {"suspended": sorted(await house.suspended())}

    return app
