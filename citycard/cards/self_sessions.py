"""Self-service sessions: a random token (shown once, ``ss_`` + hex) standing for one card for
``self_session_ttl_s``, kept in Redis under its SHA-256 only. Losing Redis logs everyone out,
nothing more."""

import hashlib
import secrets
from dataclasses import dataclass

from ..keys import self_session_key, self_sessions_of_card
from .errors import NotAuthenticated
from .services import Services

TOKEN_PREFIX = "ss_"
_MAX_TOKEN_CHARS = 100


@dataclass(frozen=True)
class Session:
    token: str
    card_no: int
    expires_in_s: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start(svc: Services, card_no: int) -> Session:
    token = TOKEN_PREFIX + secrets.token_hex(32)
    key = self_session_key(svc.redis_prefix, _hash(token))
    ttl_s = svc.self_session_ttl_s
    of_card = self_sessions_of_card(svc.redis_prefix, card_no)
    async with svc.redis.pipeline(transaction=True) as pipe:
        pipe.set(key, card_no, ex=ttl_s)
        pipe.sadd(of_card, key)
        pipe.expire(of_card, ttl_s)
        await pipe.execute()
    return Session(token, card_no, ttl_s)


async def card_of(svc: Services, token: str) -> int:
    """The card a live session stands for; NotAuthenticated otherwise."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
        raise NotAuthenticated("not a self-service session: log in at POST /self/session")
    found = await svc.redis.get(self_session_key(svc.redis_prefix, _hash(token)))
    if found is None:
        raise NotAuthenticated("the session is unknown or has expired: log in again")
    return int(found)


async def end(svc: Services, token: str) -> None:
    await svc.redis.delete(self_session_key(svc.redis_prefix, _hash(token)))


async def end_all(svc: Services, card_no: int) -> None:
    """Every session of the card (after a counter PIN reset)."""
    of_card = self_sessions_of_card(svc.redis_prefix, card_no)
    keys = await svc.redis.smembers(of_card)
    await svc.redis.delete(of_card, *keys)
