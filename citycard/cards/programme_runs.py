"""A programme's runs, one per period: started (or resumed) in the background, stopped,
followed, and reported on. Each beneficiary is credited at most once per period, however
often a run is started (``disburse.py``)."""

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from ..persistence import audit
from ..persistence import programmes as store
from .disburse import REFUSED, STATE_NAMES, Outcome, Runs, refusal_reason, result_name, terms_of
from .errors import Busy, NotFound
from .programmes import jsonable
from .who import Who

State = Literal["running", "stopped", "failed", "done", "interrupted"]


@dataclass(frozen=True)
class Run:
    run_id: int
    programme_id: int
    period: str
    state: State  # interrupted: the record says running but no runner is alive (restart): resume it
    total: int
    credited: int
    refused: int
    pending: int
    credited_fen: int
    rate_per_s: float  # items decided per second since the latest (re)start
    error: str
    started_at: datetime
    resumed_at: datetime
    finished_at: datetime | None
    resumed: bool = False  # start: the period existed and was picked up again


@dataclass(frozen=True)
class ResultCount:
    outcome: Outcome
    result: str
    reason: str
    items: int
    amount_fen: int


@dataclass(frozen=True)
class RefusedItem:
    holder_id: int
    citizen_id: str
    card_no: int | None
    amount_fen: int
    result: str
    reason: str


@dataclass(frozen=True)
class Report:
    run: Run
    by_result: list[ResultCount]
    refused: list[RefusedItem]
    next_after_holder: int | None  # pass as after_holder for the next page of refused items


async def start(runs: Runs, who: Who, programme_id: int, period: str) -> Run:
    """Start the run of a period in the background, or resume it if the period exists (stopped,
    failed, interrupted, or done and the list has grown since); a run already going is only
    answered. NotFound: no such programme; Busy: as many runs as allowed are going."""
    pool = runs.pool
    async with runs.lock:
        prog = await store.programme(pool, programme_id)
        if prog is None:
            raise NotFound(f"programme {programme_id} not found")
        run_id = await store.run_id_of(pool, programme_id, period)
        if run_id is not None and runs.live(run_id) is not None:
            return replace(await get(runs, run_id), resumed=True)
        if not runs.has_room():
            raise Busy("busy: as many disbursement runs as allowed are in progress; retry later")
        async with pool.acquire() as conn, conn.transaction():
            new_id = await store.open_run(conn, programme_id, period)
            await audit.record(conn, who.name, who.role, "programme.run_start", f"programme:{programme_id}", None,
                               {"run_id": new_id, "period": period, "resumed": run_id is not None})
        runs.start(new_id, terms_of(prog), period, resumed=run_id is not None)
    return replace(await get(runs, new_id), resumed=run_id is not None)


async def stop(runs: Runs, who: Who, run_id: int) -> Run:
    """Stop a run now (start with its period resumes it). Credits already on their way are not
    lost: the resume records them without crediting again. NotFound."""
    before = await get(runs, run_id)
    stopped = await runs.stop(run_id)
    after = await get(runs, run_id)
    if stopped:
        await audit.record(runs.pool, who.name, who.role, "programme.run_stop", f"programme:{before.programme_id}",
                           jsonable(before), jsonable(after))
    return after


async def get(runs: Runs, run_id: int) -> Run:
    """Progress: items in total, credited, refused and pending, and the rate. NotFound."""
    row = await store.run(runs.pool, run_id)
    if row is None:
        raise NotFound(f"run {run_id} not found")
    state = row["state"]
    if state == "running" and runs.live(run_id) is None:
        state = "interrupted"
    decided = row["credited"] + row["refused"]
    session_s = float(row["session_s"] or 0)
    rate = (decided - row["resumed_done"]) / session_s if session_s > 0 else 0.0
    return Run(run_id=run_id, programme_id=row["programme_id"], period=row["period"], state=state,
               total=row["total"], credited=row["credited"], refused=row["refused"],
               pending=row["total"] - decided, credited_fen=row["credited_fen"], rate_per_s=round(rate, 1),
               error=row["error"], started_at=row["started_at"], resumed_at=row["resumed_at"],
               finished_at=row["finished_at"], resumed=False)


async def report(runs: Runs, run_id: int, after_holder: int, limit: int) -> Report:
    """Items and fen by result, and a page of the refused beneficiaries with reasons. NotFound."""
    run = await get(runs, run_id)
    groups = await store.report_groups(runs.pool, run.programme_id, run.period)
    by_result = [ResultCount(outcome=STATE_NAMES[g["state"]], result=result_name(g["state"], g["result"]),
                             reason="" if g["state"] != REFUSED else refusal_reason(g["result"]),
                             items=g["n"], amount_fen=g["fen"]) for g in groups]
    rows = await store.items_in_state(runs.pool, run.programme_id, run.period, REFUSED, after_holder, limit)
    refused = [RefusedItem(holder_id=r["holder_id"], citizen_id=r["citizen_id"], card_no=r["card_no"],
                           amount_fen=r["amount_fen"], result=result_name(REFUSED, r["result"]),
                           reason=refusal_reason(r["result"])) for r in rows]
    return Report(run=run, by_result=by_result, refused=refused,
                  next_after_holder=refused[-1].holder_id if len(refused) == limit else None)
