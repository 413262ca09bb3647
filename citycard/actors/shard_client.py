"""The one way to call the account shards. The gateway's Router, the card services and the
disbursement runs all go through ShardClient: one timeout and retry policy from settings,
``asyncio.timeout`` only (``wait_for`` on 3.11 can drop a cancellation that lands with the
result), and typed outcomes decoded at the Ray boundary.

A call that fails (a dead or restarting actor, a failed commit) or hangs past
``call_timeout_s`` is sent again with the same payload until ``retry_deadline_s``: taps are
deduplicated by (terminal, seq) and ops by their keys, so a retry never applies twice. Past
the deadline the caller gets ShardUnavailable: the outcome is unknown, retry with the same
ids. A bug (a wrong argument, an undecodable answer) is raised at once, never retried: Ray
re-raises an actor's exception as a subclass of its cause, so these are caught the same way.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from ..config.settings import Settings
from ..domain.merchant_book import MerchantTerms
from ..domain.ops import CardOp, OpOutcome
from ..domain.shard import shard_of
from ..domain.taps import Outcome, Tap
from ..domain.views import CardView
from ..errors import CityCardError

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()
_tap_outcomes = msgspec.msgpack.Decoder(list[Outcome])
_op_outcomes = msgspec.msgpack.Decoder(list[OpOutcome])
_views = msgspec.msgpack.Decoder(list[CardView | None])
_BUGS = (TypeError, AttributeError, AssertionError, msgspec.DecodeError)
T = TypeVar("T")


class ShardUnavailable(CityCardError):
    """A shard did not answer within the retry deadline; the outcome is unknown."""


@dataclass(frozen=True)
class CallPolicy:
    call_timeout_s: float  # one attempt hung this long is given up (a stuck commit)
    retry_deadline_s: float  # no new attempt starts after this, counted from the first
    backoff_s: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> "CallPolicy":
        # settings check shard_call_timeout_ms >= 2 x ledger.commit_timeout_ms
        g = settings.gateway
        return cls(g.shard_call_timeout_ms / 1000.0, g.retry_deadline_ms / 1000.0)


@dataclass(frozen=True)
class TapAnswer:
    outcomes: list[Outcome]  # in the taps' order
    commit_ms: float  # the shard's last group commit, for the commit-latency metric
    call_s: float  # the answered attempt's round trip
    attempts: int


class ShardClient:
    """Typed calls to the AccountShard actors (Ray handles, or the simulation's), by shard id.

    ``on_retry(shard_id, exc)`` is told of every failed attempt (the gateway counts them).
    ``calls`` counts attempts by actor method, so a test can hold an operation to its calls.
    """

    def __init__(self, actors: Sequence[Any], policy: CallPolicy,
                 on_retry: Callable[[int, BaseException], None] | None = None) -> None:
        if not actors:
            raise ValueError("a shard client needs at least one shard")
        self.actors = list(actors)
        self.policy = policy
        self.on_retry = on_retry
        self.calls: Counter[str] = Counter()

    @property
    def n_shards(self) -> int:
        return len(self.actors)

    def shard_of(self, card_no: int) -> int:
        return shard_of(card_no, len(self.actors))

    # -- taps ----------------------------------------------------------------------------
    async def apply_taps(self, shard_id: int, taps: Sequence[Tap]) -> TapAnswer:
        """Decide ``taps`` (all of ``shard_id``); answers once they are durable."""
        payload = _encoder.encode(taps)
        loop = asyncio.get_running_loop()
        attempts = 0

        async def attempt() -> TapAnswer:
            nonlocal attempts
            attempts += 1
            started = loop.time()
            packed, commit_ms = await self._attempt(shard_id, "apply", payload)
            return TapAnswer(_tap_outcomes.decode(packed), commit_ms, loop.time() - started, attempts)

        return await self._with_retries(shard_id, attempt)

    # -- card services -------------------------------------------------------------------
    async def apply_ops(self, ops: Sequence[CardOp], *, with_views: bool = True) -> list[OpOutcome]:
        """Apply ops on their cards' shards, one call per shard; outcomes in the ops' order,
        each durable when this returns. ``with_views``: each outcome carries its card's view."""
        groups: dict[int, list[int]] = {}
        for i, op in enumerate(ops):
            groups.setdefault(self.shard_of(op.card_no), []).append(i)
        out: list[OpOutcome | None] = [None] * len(ops)

        async def group(shard_id: int, idx: list[int]) -> None:
            payload = _encoder.encode([ops[i] for i in idx])

            async def attempt() -> bytes:
                packed: bytes = await self._attempt(shard_id, "apply_ops", payload, with_views)
                return packed

            packed = await self._with_retries(shard_id, attempt)
            for i, o in zip(idx, _op_outcomes.decode(packed), strict=True):
                out[i] = o

        await asyncio.gather(*(group(s, idx) for s, idx in groups.items()))
        return [o for o in out if o is not None]

    async def apply_op(self, op: CardOp) -> OpOutcome:
        return (await self.apply_ops([op]))[0]

    async def card_views(self, card_nos: Sequence[int]) -> list[CardView | None]:
        """Each card as its shard holds it (None: no such card), one call per shard."""
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(card_nos):
            groups.setdefault(self.shard_of(c), []).append(i)
        out: list[CardView | None] = [None] * len(card_nos)

        async def group(shard_id: int, idx: list[int]) -> None:
            wanted = [card_nos[i] for i in idx]

            async def attempt() -> bytes:
                packed: bytes = await self._attempt(shard_id, "card_views", wanted)
                return packed

            for i, v in zip(idx, _views.decode(await self._with_retries(shard_id, attempt)), strict=True):
                out[i] = v

        await asyncio.gather(*(group(s, idx) for s, idx in groups.items()))
        return out

    async def card_view(self, card_no: int) -> CardView | None:
        return (await self.card_views([card_no]))[0]

    async def add_cards(self, card_nos: Sequence[int]) -> None:
        """Tell the owning shards about cards just committed to the cards table (idempotent)."""
        groups: dict[int, list[int]] = {}
        for c in card_nos:
            groups.setdefault(self.shard_of(c), []).append(c)

        async def group(shard_id: int, cards: list[int]) -> None:
            async def attempt() -> None:
                await self._attempt(shard_id, "add_cards", cards)

            await self._with_retries(shard_id, attempt)

        await asyncio.gather(*(group(s, cs) for s, cs in groups.items()))

    async def merge_merchants(self, terms: Sequence[MerchantTerms]) -> None:
        """Give every shard merchant terms just committed (idempotent, so retried freely); a
        shard that does not take them in time: ShardUnavailable (it reads them at its next load)."""
        payload = _encoder.encode(list(terms))

        async def one(shard_id: int) -> None:
            async def attempt() -> None:
                await self._attempt(shard_id, "merge_merchants", payload)

            await self._with_retries(shard_id, attempt)

        await asyncio.gather(*(one(s) for s in range(self.n_shards)))

    # -- operations ----------------------------------------------------------------------
    async def stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._once(s, "stats") for s in range(self.n_shards))))

    async def balances(self) -> dict[int, int]:
        """Every card's e-purse balance, from all shards (the demo's and load lab's audit)."""
        merged: dict[int, int] = {}
        for part in await asyncio.gather(*(self._once(s, "balances") for s in range(self.n_shards))):
            merged.update(part)
        return merged

    async def readiness(self, timeout_s: float) -> list[str]:
        """Each shard's state from its ``probe()`` ("ok", or "loading": a shard not loaded
        starts its load when probed), or why it did not answer; one call per shard, bounded
        by ``timeout_s``, never retried."""

        async def one(shard_id: int) -> str:
            self.calls["probe"] += 1
            try:
                async with asyncio.timeout(timeout_s):
                    probe = await self.actors[shard_id].probe.remote()
                    return "ok" if probe.get("ready") else "loading"
            except TimeoutError:
                return f"no answer in {timeout_s:g} s"
            except Exception as exc:  # noqa: BLE001 - a dead or restarting actor is the answer
                return f"unreachable: {type(exc).__name__}"

        return list(await asyncio.gather(*(one(s) for s in range(self.n_shards))))

    async def ensure_loaded(self) -> None:
        await asyncio.gather(*(self._once(s, "ensure_loaded") for s in range(self.n_shards)))

    # -- the policy ----------------------------------------------------------------------
    async def _attempt(self, shard_id: int, method: str, *args: Any) -> Any:
        self.calls[method] += 1
        async with asyncio.timeout(self.policy.call_timeout_s):
            return await getattr(self.actors[shard_id], method).remote(*args)

    async def _once(self, shard_id: int, method: str) -> Any:
        """Read-only calls for operators: one attempt, bounded."""
        return await self._attempt(shard_id, method)

    async def _with_retries(self, shard_id: int, attempt: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.retry_deadline_s
        backoff = self.policy.backoff_s
        tries = 0
        while True:
            try:
                return await attempt()
            except (asyncio.CancelledError, *_BUGS):
                raise
            except Exception as exc:  # noqa: BLE001 - a dead actor, a failed store, a timeout
                if self.on_retry is not None:
                    self.on_retry(shard_id, exc)
                if loop.time() >= deadline:
                    log.warning("shard %s: giving up after %d tries: %r", shard_id, tries + 1, exc)
                    raise ShardUnavailable(
                        f"shard {shard_id} did not answer in {self.policy.retry_deadline_s:g} s"
                        f" ({tries + 1} tries; last: {exc!r}); retry with the same ids") from exc
                await asyncio.sleep(backoff[min(tries, len(backoff) - 1)])
                tries += 1
