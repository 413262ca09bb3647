"""Every route of the API in one order: who is asking (401/403), then how much is sent (413),
then how deep its JSON nests (400), then what it says (422). FastAPI on its own parses a JSON
body before any dependency runs, so a body that is not JSON got a 422 before the token was
looked at; and it reads a body of any size."""

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


class StrictRoute(APIRoute):
    """The route class of every router (``APIRouter(route_class=StrictRoute)``)."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        credential_checks = [d for d in self.dependant.dependencies if _checks_a_credential(d)]
        reads_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            for dep in credential_checks:
                await _run_alone(request, dep)  # raises 401/403; the route runs it again after
            if reads_body:
                limits = limits_of(request)
                body = await read_bounded(request, limits.max_body_bytes)
                check_depth(body, limits)
                request = _replaying(request, body)
            return await handler(request)

        return strict_handler


async def _run_alone(request: Request, dep: Dependant) -> None:
    stack = request.scope.get("fastapi_inner_astack")
    assert isinstance(stack, AsyncExitStack), "a StrictRoute handler runs inside FastAPI's request_response"
    await solve_dependencies(request=request, dependant=Dependant(dependencies=[dep]),
                             async_exit_stack=stack, embed_body_fields=False)
