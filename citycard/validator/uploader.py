"""Store and forward: the validator's kept records go up to the gateway in signed batches.

A batch is fixed before it is sent (its batch seq and the terminal seqs in it are written to
the store first), so a batch whose answer was lost is sent again exactly as it was: the host
answers a replay with the same codes and journals nothing twice. Records the host keeps
(ACCEPTED, DUPLICATE, FORWARDED to their issuer) leave the store; the rest stay, marked refused with the reason.
"""

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..domain.offline import OfflineRecord
from ..domain.sam import SoftSam
from ..protocols.codes import OfflineCode
from .store import Store

KEPT = frozenset((OfflineCode.ACCEPTED, OfflineCode.DUPLICATE, OfflineCode.FORWARDED))  # the host holds them

# (batch_seq, records, mac) -> one code per record; raises CityCardError when the link fails
Send = Callable[[int, Sequence[OfflineRecord], bytes], Awaitable[Sequence[int]]]


@dataclass(frozen=True, slots=True)
class Uploaded:
    batch_seq: int
    kept: int
    refused: int


async def upload_one(store: Store, sam: SoftSam, send: Send, max_batch: int) -> Uploaded | None:
    """Send the open batch (or open one from the oldest sold records); None: nothing to send."""
    batch_seq, seqs = _open_batch(store, max_batch)
    if not seqs:
        return None
    records = store.records_by_seq(seqs)
    codes = await send(batch_seq, records, sam.sign_batch(batch_seq, records))
    if len(codes) != len(records):
        raise ValueError(f"the host answered {len(codes)} codes for {len(records)} records")
    kept = [r.terminal_seq for r, c in zip(records, codes, strict=True) if c in KEPT]
    refused = [(r.terminal_seq, c, _name(c)) for r, c in zip(records, codes, strict=True) if c not in KEPT]
    store.acknowledged(kept, refused, closing_batch=batch_seq)
    return Uploaded(batch_seq, len(kept), len(refused))


def _open_batch(store: Store, max_batch: int) -> tuple[int, list[int]]:
    raw = store.get("open_batch")
    if isinstance(raw, bytes | str):
        opened = json.loads(raw)
        return int(opened["batch_seq"]), [int(s) for s in opened["seqs"]]
    seqs = [r.terminal_seq for r in store.to_upload(max_batch)]
    if not seqs:
        return 0, []
    last = store.get("batch_seq", 0)
    assert isinstance(last, int)
    batch_seq = last + 1
    store.open_batch(batch_seq, json.dumps({"batch_seq": batch_seq, "seqs": seqs}))
    return batch_seq, seqs


def _name(code: int) -> str:
    try:
        return OfflineCode(code).name
    except ValueError:
        return f"code {code}"
