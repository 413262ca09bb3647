"""Every route of the API answers in one order: who is asking (401/403), then how much is sent
(413), then how deep its JSON nests (400), then what it says (422). FastAPI on its own parses a
JSON body before any dependency runs, so a body that was not JSON got a 422 before the token
was looked at; and it read a body of any size."""

import json
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from starlette.types import Message

from .errors import ApiError
from .json_depth import MAX_JSON_DEPTH, too_deep

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


@dataclass(frozen=True)
class InputLimits:
    """What a request body may be (``api.max_body_bytes``, ``api.max_upload_bytes``)."""

    max_body_bytes: int = 65_536
    max_upload_bytes: int = 80 * 2**20
    max_json_depth: int = MAX_JSON_DEPTH


def limits_of(request: Request) -> InputLimits:
    limits: InputLimits = getattr(request.app.state, "input_limits", InputLimits())
    return limits


def _checks_a_credential(dep: Dependant) -> bool:
    """A dependency that takes a bearer credential and decides on it (an operator's role, a
    holder's session); the bare scheme, which only reads the header, is not one."""
    return any(isinstance(sub.call, SecurityBase) for sub in dep.dependencies)


def too_large(limit_bytes: int, advice: str = "") -> ApiError:
    return ApiError(413, f"body: larger than {limit_bytes} bytes{advice}", field="body")


async def read_bounded(request: Request, limit_bytes: int, advice: str = "") -> bytes:
    """The body, refused (413) from its Content-Length or as soon as more than ``limit_bytes``
    arrived: a client cannot make the server hold more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise too_large(limit_bytes, advice)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit_bytes:
            raise too_large(limit_bytes, advice)
    return bytes(buf)


def check_depth(body: bytes, limits: InputLimits) -> None:
    if too_deep(body, limits.max_json_depth):
        raise ApiError(400, f"body: JSON nested deeper than {limits.max_json_depth} levels", field="body")


def _replaying(request: Request, body: bytes) -> Request:
    """The request again, its body the bytes already read (later receives: the client's)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, receive)


class _NotJson(Exception):
    """A JSON body that does not parse: FastAPI answers it (422) before any dependency runs."""


def _check_parses(request: Request, body: bytes) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body or not (media == "application/json" or media.endswith("+json")):
        return  # FastAPI parses only these; anything else is a 422 after the dependencies
    try:
        json.loads(body)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise _NotJson from None


class StrictRoute(APIRoute):
    """The route class of every router (``APIRouter(route_class=StrictRoute)``). FastAPI already
    runs dependencies (the caller's check among them) before it raises a validation error; what
    it does first is read and parse the body. So the body is read here, bounded and judged, and
    only if it is refused does the caller's check run ahead of the refusal: a good request
    checks its caller once."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # nothing read before the dependencies (an upload reads its own)
        credential_checks = [d for d in self.dependant.dependencies if _checks_a_credential(d)]

        async def strict_handler(request: Request) -> Response:
            limits = limits_of(request)
            body = b""
            try:
                body = await read_bounded(request, limits.max_body_bytes)
                check_depth(body, limits)
                _check_parses(request, body)
            except (ApiError, _NotJson) as refusal:
                for dep in credential_checks:
                    await _run_alone(request, dep)  # 401/403 win over what is wrong with the body
                if isinstance(refusal, ApiError):
                    raise
            return await handler(_replaying(request, body))  # a _NotJson: FastAPI's own 422

        return strict_handler


async def _run_alone(request: Request, dep: Dependant) -> None:
    stack = request.scope.get("fastapi_inner_astack")
    assert isinstance(stack, AsyncExitStack), "a StrictRoute handler runs inside FastAPI's request_response"
    await solve_dependencies(request=request, dependant=Dependant(dependencies=[dep]),
                             async_exit_stack=stack, embed_body_fields=False)
