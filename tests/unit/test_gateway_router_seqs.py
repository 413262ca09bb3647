"""The router with the gateway's seq memory: a shard's DUPLICATE_SEQ turns the claim into that
shard's marker (the seq's owner gets its outcome on retry, a card of another shard stays
refused); SEQ_TOO_OLD keeps it (another card stays refused)."""

import asyncio
from collections.abc import Callable, Sequence

from citycard.actors.shard_client import TapAnswer
from citycard.domain.results import Result
from citycard.domain.shard import shard_of
from citycard.domain.taps import Outcome, Tap
from citycard.gateway.metrics import Metrics
from citycard.gateway.router import Pending, Router
from citycard.gateway.seqbook import SeqBook


class FakeShards:
    n_shards = 2

    def __init__(self, decide: Callable[[Tap], Outcome]) -> None:
        self.decide = decide
        self.seen: list[tuple[int, int]] = []

    async def apply_taps(self, shard_id: int, taps: Sequence[Tap]) -> TapAnswer:
        self.seen += [(t.seq, t.card_no) for t in taps]
        return TapAnswer([self.decide(t) for t in taps], 0.0, 0.0, 1)


def _tap(seq: int, card: int) -> Tap:
    return Tap(7, seq, card, 0, 1, 12)


async def _send(router: Router, tap: Tap) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    taps = [tap]
    refused = router.seqs.claim(7, taps) if router.seqs is not None else []
    router.submit(Pending(lambda p: done.set_result(p.outcomes[0].result), 0, True, taps), None, refused)
    return await asyncio.wait_for(done, 5)


def _router(shards: FakeShards) -> Router:
    router = Router(shards, set(), Metrics(), batch_max_taps=10, inflight_calls=1,  # type: ignore[arg-type]
                    queue_max_taps=100, linger_ms=0)
    router.seqs = SeqBook(home=router.home)
    return router


def test_duplicate_from_the_shard_releases_the_claim() -> None:
    async def go() -> None:
        owner, reuser = 1001, 1002  # seq 5 was decided for `owner` long ago, before this gateway
        assert shard_of(owner, 2) == shard_of(reuser, 2)  # the shard that knows it
        shards = FakeShards(lambda t: Outcome(int(Result.OK if t.card_no == owner else Result.DUPLICATE_SEQ),
                                              0, 0, t.card_no == owner))
        router = _router(shards)
        assert await _send(router, _tap(5, reuser)) == Result.DUPLICATE_SEQ
        assert await _send(router, _tap(5, owner)) == Result.OK  # its retry: its outcome, not refused here
        assert shards.seen == [(5, reuser), (5, owner)]

    asyncio.run(go())


def test_seq_too_old_keeps_the_claim() -> None:
    async def go() -> None:
        shards = FakeShards(lambda t: Outcome(int(Result.SEQ_TOO_OLD), 0, -1, False))
        router = _router(shards)
        assert await _send(router, _tap(5, 1001)) == Result.SEQ_TOO_OLD
        assert await _send(router, _tap(5, 2002)) == Result.DUPLICATE_SEQ  # never to a shard
        assert shards.seen == [(5, 1001)]

    asyncio.run(go())


def test_duplicate_from_the_shard_still_refuses_a_card_of_another_shard() -> None:
    """Review finding: the released claim was deleted, so the seq for a card of another shard
    went to that shard, which had never seen it, and was decided a second time."""
    async def go() -> None:
        owner, reuser, other = 1001, 1002, 1003  # owner, reuser on shard 0; other on shard 1
        assert (shard_of(owner, 2), shard_of(reuser, 2), shard_of(other, 2)) == (0, 0, 1)

        def decide(t: Tap) -> Outcome:  # shard 0 decided seq 5 for `owner`; shard 1 never saw it
            if shard_of(t.card_no, 2) == 1 or t.card_no == owner:
                return Outcome(int(Result.OK), 0, 0, t.card_no == owner)
            return Outcome(int(Result.DUPLICATE_SEQ), 0, -1, False)

        shards = FakeShards(decide)
        router = _router(shards)
        assert await _send(router, _tap(5, reuser)) == Result.DUPLICATE_SEQ
        assert await _send(router, _tap(5, other)) == Result.DUPLICATE_SEQ  # refused here
        assert await _send(router, _tap(5, 1005)) == Result.DUPLICATE_SEQ  # shard 0's: by shard 0
        assert await _send(router, _tap(5, owner)) == Result.OK
        assert await _send(router, _tap(5, other)) == Result.DUPLICATE_SEQ
        assert shards.seen == [(5, reuser), (5, 1005), (5, owner)]

    asyncio.run(go())


def test_a_marked_seq_refuses_a_visitors_card() -> None:
    """A visitor's card is decided by its issuer, which never saw the seq: refused here."""
    class Desk:
        def claims(self, card_no: int) -> bool:
            return card_no == 1005

    async def go() -> None:
        shards = FakeShards(lambda t: Outcome(int(Result.DUPLICATE_SEQ), 0, -1, False))
        router = _router(shards)
        router.remote = Desk()
        assert await _send(router, _tap(5, 1002)) == Result.DUPLICATE_SEQ  # shard 0 marks seq 5
        assert router.home(1005) == -1
        assert await _send(router, _tap(5, 1005)) == Result.DUPLICATE_SEQ  # never to the desk
        assert shards.seen == [(5, 1002)]

    asyncio.run(go())
