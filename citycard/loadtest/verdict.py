"""Why a load-lab run failed, in one line: the target closed or refused connections, (nearly)
every tap was refused, the audit failed, or the senders hit errors. A run whose answers were
almost all refusals measured nothing: it fails even when its audit balances."""

from __future__ import annotations

from typing import Any

REFUSED_SHARE_MAX = 0.95  # at least this share of answered taps not OK: the run measured refusals
APPROVED = frozenset({"OK"})
_CONNECTION_WORDS = ("ConnectionError", "ConnectionRefused", "connection lost", "closed the connection",
                     "Connection refused", "ConnectionReset", "could not connect")


def refused_share(codes: dict[str, int]) -> tuple[float, list[tuple[str, int]]]:
    """The share of answered taps that were refused, and the refusal codes, most first."""
    answered = sum(codes.values())
    refusals = sorted(((c, n) for c, n in codes.items() if c not in APPROVED and n), key=lambda kv: -kv[1])
    return (sum(n for _, n in refusals) / answered if answered else 0.0), refusals


def connection_errors(errors: list[Any]) -> list[str]:
    return [str(e) for e in errors if any(w in str(e) for w in _CONNECTION_WORDS)]


def why_failed(report: dict[str, Any]) -> str | None:
    """None for a run that passed; otherwise the one line that says why it did not."""
    totals, codes = report.get("totals", {}), report.get("codes", {})
    answered, scheduled = int(totals.get("answered", 0)), int(totals.get("scheduled", 0))
    target = report.get("run", {}).get("target", "the target")
    lost = connection_errors(report.get("errors", []))
    if lost:
        return (f"the target {target} closed or refused connections: {answered:,} of {scheduled:,} taps answered, "
                f"{len(lost):,} connection errors (first: {lost[0]})")
    share, refusals = refused_share(codes)
    if answered and share >= REFUSED_SHARE_MAX:
        top = ", ".join(f"{c} {n:,}" for c, n in refusals[:3])
        hint = ""
        if refusals and refusals[0][0] == "CARD_UNKNOWN":
            hint = ("; the platform does not know these cards: was the city seeded after it started, "
                    "or into another database or schema?")
        return f"{share:.1%} of {answered:,} answered taps were refused ({top}){hint}"
    if not answered:
        return f"no tap was answered by {target} ({scheduled:,} scheduled)"
    errors = report.get("errors", [])
    if errors:
        return f"{len(errors):,} errors (first: {errors[0]})"
    audit = report.get("audit", {})
    if not audit.get("ok", True):
        return "the audit failed: Postgres does not agree with what the terminals were told (see the report)"
    for part in ("offline", "hotlist_storm"):
        section = report.get(part)
        if isinstance(section, dict) and (section.get("ok") is False or section.get("failed")):
            return f"the {part.replace('_', ' ')} part failed (see the report)"
    return None if report.get("ok") else "failed (see the report)"


__all__ = ["REFUSED_SHARE_MAX", "connection_errors", "refused_share", "why_failed"]
