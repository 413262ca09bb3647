"""Operators authenticate with API tokens that carry roles; each role grants permissions.

A token is 32 random bytes shown once (``cc_`` + hex); only its SHA-256 is stored. A slow
KDF is not needed here: unlike a PIN, a token has 256 bits of entropy.
"""

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..persistence import tokens
from .errors import ApiError

TOKEN_PREFIX = "cc_"
_CACHE_S = 5.0  # a revoked token stops working within this long


class Role(StrEnum):
    CLERK = "clerk"  # counter clerk: cardholders, cards, money, PINs
    PROGRAMME_ADMIN = "programme_admin"  # disbursement programmes
    AUDITOR = "auditor"  # reads everything, the audit log included
    READ_ONLY = "read_only"  # reads cardholders, cards, balances and history
    PAYMENT = "payment"  # an online-payment channel: checks a holder's PIN for a payment
    MERCHANT_DESK = "merchant_desk"  # merchant-alliance desk: merchants, their POS terminals, discounts


class Perm(StrEnum):
    READ = "read"
    CARDS = "cards"  # cardholders, cards, applications, loss reports, replacement, PINs
    MONEY = "money"  # top-ups and refunds
    PROGRAMMES = "programmes"
    AUDIT = "audit"
    VERIFY_PIN = "verify_pin"  # check a holder's PIN (wrong ones count towards the lockout)
    MERCHANTS = "merchants"  # register merchants and their POS terminals, change member discounts


GRANTS: dict[Role, frozenset[Perm]] = {
    Role.CLERK: frozenset({Perm.READ, Perm.CARDS, Perm.MONEY, Perm.VERIFY_PIN}),
    Role.PROGRAMME_ADMIN: frozenset({Perm.READ, Perm.PROGRAMMES}),
    Role.AUDITOR: frozenset({Perm.READ, Perm.AUDIT}),
    Role.READ_ONLY: frozenset({Perm.READ}),
    Role.PAYMENT: frozenset({Perm.VERIFY_PIN}),
    Role.MERCHANT_DESK: frozenset({Perm.READ, Perm.MERCHANTS}),
}


@dataclass(frozen=True)
class Operator:
    name: str
    roles: tuple[Role, ...]
    token_id: str = ""  # the start of the token's hash: names the token in limits and lists

    def can(self, perm: Perm) -> bool:
        return any(perm in GRANTS[r] for r in self.roles)

    @property
    def role(self) -> str:
        return ",".join(self.roles)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_id(token_hash: bytes) -> str:
    return token_hash.hex()[: tokens.TOKEN_ID_HEX]


async def create_token(conn: asyncpg.Connection, operator: str, roles: list[Role]) -> str:
    """A new token for ``operator``; returned once, stored only as its hash."""
    if not operator.strip():
        raise ValueError("operator name must not be empty")
    if not roles:
        raise ValueError("at least one role")
    token = TOKEN_PREFIX + secrets.token_hex(32)
    await tokens.insert(conn, hash_token(token), operator.strip(), [str(r) for r in roles])
    return token


class TokenCache:
    """token hash -> (Operator or None, expiry): a request costs no query on a warm token."""

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[Operator | None, float]] = {}

    async def lookup(self, pool: asyncpg.Pool, token: str) -> Operator | None:
        h = hash_token(token)
        hit = self._entries.get(h)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        found = await tokens.active(pool, h)
        op = None if found is None else Operator(found[0], tuple(Role(r) for r in found[1]), token_id(h))
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[h] = (op, now + _CACHE_S)
        return op


BEARER_SCHEME = "operator_token"
bearer = HTTPBearer(auto_error=False, scheme_name=BEARER_SCHEME,
                    description="An operator's API token: `Authorization: Bearer cc_...`")


def require(perm: Perm):  # type: ignore[no-untyped-def]
    """A dependency: the calling operator, who must hold a role granting ``perm``."""

    async def dep(request: Request,
                  cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Operator:  # noqa: B008
        if cred is None or cred.scheme.lower() != "bearer":
            raise ApiError(401, "an operator token is required (Authorization: Bearer ...)")
        ctx = request.app.state.ctx
        op = await request.app.state.tokens.lookup(ctx.pool, cred.credentials)
        if op is None:
            raise ApiError(401, "unknown or revoked token")
        if not op.can(perm):
            raise ApiError(403, f"operator {op.name} ({op.role}) lacks the {perm} permission")
        return op

    return dep
