"""The disbursement runs of this API process, kept on the app (the runner itself is
``cards/disburse.py``): found by the routes, resumed after a start, stopped before a shutdown."""

from typing import Any

from ..cards.disburse import Runs
from .context import ApiContext


def runs_of(app: Any) -> Runs:
    runs: Runs | None = getattr(app.state, "disbursement_runs", None)
    if runs is None:
        ctx: ApiContext = app.state.ctx
        runs = app.state.disbursement_runs = Runs(ctx.shards, ctx.pool, ctx.settings.api.disbursement_batch)
    return runs


async def resume_interrupted(app: Any) -> list[int]:
    """Start again every run the record says is running (call once the API is up after a restart)."""
    return await runs_of(app).resume_interrupted()
