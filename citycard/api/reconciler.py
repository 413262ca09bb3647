"""Runs the audit reconciler (cards/audit_reconcile.py) beside the API: once at start, then
every ``api.audit_reconcile_s``, each pass bounded in time."""

import asyncio
import logging

from ..cards.audit_reconcile import Reconciled, reconcile
from .context import ApiContext

log = logging.getLogger(__name__)
PASS_TIMEOUT_S = 60.0


async def reconcile_once(ctx: ApiContext) -> Reconciled:
    api = ctx.settings.api
    got = await reconcile(ctx.pool, ctx.shards.n_shards, ctx.now_ms(), api.audit_reconcile_grace_ms)
    if got.written:
        if ctx.metrics is not None:
            ctx.metrics.audit_reconciled.inc(got.written)
        log.warning("audit: wrote %d entries missing for ops in the journal", got.written)
    return got


async def run_forever(ctx: ApiContext) -> None:
    """Until cancelled; a failed pass is logged and the next one tries again."""
    while True:
        try:
            async with asyncio.timeout(PASS_TIMEOUT_S):
                await reconcile_once(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - Postgres away: the next pass catches up
            log.exception("audit reconcile pass failed")
        await asyncio.sleep(ctx.settings.api.audit_reconcile_s)
