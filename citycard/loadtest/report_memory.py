"""The report's memory-over-time plot: memory of the run's own processes (resident, and
proportional for Postgres: procs.memory_bytes_of), one line per process group (gateway, account
shards, terminal sessions, the rest of Ray, Postgres, Redis, the load generator), sampled while
the schedule runs (measure.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def memory_groups(memory: list[Any]) -> dict[str, list[tuple[float, float]]]:
    """(t_s, MB) per group; a group absent from a sample (its processes gone) is absent there."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for sample in memory:
        if not isinstance(sample, dict) or "t_s" not in sample:
            continue
        for group, mb in sample.items():
            if group != "t_s" and isinstance(mb, int | float):
                groups.setdefault(group, []).append((float(sample["t_s"]), float(mb)))
    return groups


def memory_plot(memory: list[Any], new_figure: Callable[[], Figure]) -> Figure | None:
    groups = memory_groups(memory)
    if not groups:
        return None
    figure = new_figure()
    ax = figure.add_subplot()
    for group, points in sorted(groups.items(), key=lambda kv: -max(mb for _, mb in kv[1])):
        ax.plot([t for t, _ in points], [mb for _, mb in points], marker="." if len(points) < 30 else None,
                label=group)
    ax.set_xlabel("time since start, s")
    ax.set_ylabel("MB (summed per group; Postgres: PSS)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")  # outside: lines stay visible
    return figure


__all__ = ["memory_groups", "memory_plot"]
