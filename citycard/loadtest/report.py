"""The load lab's report: ``report.json`` (the run's dict as is), a self-contained
``report.html`` (tables plus PNG plots embedded as base64 data URIs; no external JS, CSS or
fonts) and the plain-text summary the CLI prints at the end of a run.

The report dict is JSON-able; every section but ``run`` and ``totals`` may be missing or None
and every list may be empty, so each reader here copes with absent data: a plot without data
becomes a short "no data" note, a missing table says "not run".

matplotlib is imported lazily inside the plotting functions (the CLI imports this module on
every run) and always through the Agg canvas: no display, no pyplot global state.

One concept, kept in one module on purpose (over 400 lines): the rendering of one report
(its tables, plots and summary lines read the same dict).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIG_WIDTH_IN, FIG_HEIGHT_IN, FIG_DPI = 9.0, 3.5, 100  # ~900 x 350 px
MAX_ERRORS_SHOWN = 50  # the HTML lists at most this many connection errors
LATENCY_KEYS = ("p50", "p90", "p99", "p99.9", "max", "mean")
PERCENTILE_TICKS = (0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999)
NO_DATA = "—"

Report = Mapping[str, Any]


# --- public API -------------------------------------------------------------------------------

def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` (the dict, pretty, keys in their order) and
    ``out_dir/report.html``; return both paths. Creates ``out_dir``. The JSON is written
    first, so the numbers survive even if rendering the page fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page: verdict, tables and embedded PNG plots."""
    run, ok = _dict(report.get("run")), bool(report.get("ok"))
    title = f"citycard load report: {run.get('scenario', '?')}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="verdict {"pass" if ok else "fail"}">{"OK" if ok else "FAILED"}</p>',
        "" if ok or not report.get("why_failed") else f'<p class="why">{_esc(report["why_failed"])}</p>',
        "<h2>Run</h2>", _kv_table(run),
        "<h2>Totals</h2>", _totals_html(_dict(report.get("totals"))),
        "<h2>Audit</h2>", _audit_html(report.get("audit")),
        "<h2>Baselines</h2>", _kv_table(_dict(report.get("baselines"))),
    ]
    if isinstance(report.get("offline"), dict):
        body += ["<h2>Offline (city-pass) uploads</h2>", _offline_html(report["offline"])]
    for heading, plot in _plots(report):
        body += [f"<h2>{_esc(heading)}</h2>", _figure_html(heading, plot)]
    body += ["<h2>Find max</h2>", _find_max_html(report.get("find_max"))]
    body += ["<h2>Where the time goes: CPU by process</h2>", _processes_html(report.get("processes"))]
    body += ["<h2>Errors</h2>", _errors_html(_list(report.get("errors")))]
    return _PAGE.format(title=_esc(title), body="\n".join(body))


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The plain-text end-of-run summary: a few lines, the last one OK or FAILED."""
    run, totals = _dict(report.get("run")), _dict(report.get("totals"))
    latency = _dict(totals.get("latency_ms"))
    lines = [
        f"scenario {run.get('scenario', '?')} ({run.get('profile', '?')}) against "
        f"{run.get('target', '?')}, {_fmt(run.get('duration_s'), 1)} s",
        f"rate: offered {_fmt(totals.get('offered_per_s'), 0)}/s, "
        f"accepted {_fmt(totals.get('accepted_per_s'), 0)}/s "
        f"(scheduled {_fmt(totals.get('scheduled'))}, answered {_fmt(totals.get('answered'))}, "
        f"timeouts {_fmt(totals.get('timeouts'))}, shed {_fmt(totals.get('shed'))})",
        "latency ms: " + "  ".join(f"{k} {_fmt(latency.get(k), 2)}" for k in LATENCY_KEYS),
    ]
    codes = _codes(report)
    if codes:
        lines.append("codes: " + ", ".join(f"{name} {count:,}" for name, count in codes))
    lines.append(f"audit: {_audit_line(report.get('audit'))}")
    if isinstance(report.get("offline"), dict):
        lines.append(f"offline: {_offline_line(report['offline'])}")
    if isinstance(report.get("baselines"), dict):
        lines.append(f"baselines: {_baselines_line(report['baselines'])}")
    if isinstance(report.get("find_max"), dict):
        lines.append(f"find-max: {_find_max_line(report['find_max'])}")
    per_tap = _dict(_dict(report.get("processes")).get("cpu_us_per_tap"))
    if per_tap:
        lines.append("CPU us per answered tap: " + ", ".join(
            f"{role} {_fmt(us, 1)}" for role, us in sorted(per_tap.items(), key=lambda kv: -_number(kv[1]))))
    errors = _list(report.get("errors"))
    if errors:
        lines.append(f"errors: {len(errors)} (first: {errors[0]})")
    lines += [f"warning: {w}" for w in _list(report.get("warnings"))]
    why = report.get("why_failed")
    lines.append("result: " + ("OK" if report.get("ok") else f"FAILED: {why}" if why else "FAILED"))
    return lines


# --- summary pieces ---------------------------------------------------------------------------

def _audit_line(audit: object) -> str:
    if not isinstance(audit, dict):
        return "not run"
    return (f"{'PASS' if audit.get('ok') else 'FAIL'} (balanced {_fmt(audit.get('balanced'))}, "
            f"journal rows {_fmt(audit.get('journal_rows'))}, "
            f"duplicate seqs {_fmt(audit.get('duplicate_seqs'))}, "
            f"missing {_fmt(audit.get('answered_missing_rows'))}, "
            f"extra {_fmt(audit.get('answered_extra_rows'))})")


def _baselines_line(baselines: Mapping[str, Any]) -> str:
    share = baselines.get("share_of_copy")
    share_text = f"{share:.1%}" if isinstance(share, int | float) else NO_DATA
    return (f"naive SQL {_fmt(baselines.get('naive_sql_taps_per_s'), 0)} taps/s "
            f"({_fmt(baselines.get('naive_connections'))} connections), "
            f"raw COPY {_fmt(baselines.get('raw_copy_rows_per_s'), 0)} rows/s; "
            f"platform {_fmt(baselines.get('ratio_to_naive'), 2)}x naive, "
            f"{share_text} of COPY")


def _find_max_line(find_max: Mapping[str, Any]) -> str:
    text = (f"max accepted {_fmt(find_max.get('max_accepted_per_s'), 0)}/s with p99 <= "
            f"{_fmt(find_max.get('p99_bound_ms'), 1)} ms "
            f"({len(_list(find_max.get('steps')))} steps)")
    half = find_max.get("half_max")
    if isinstance(half, dict):
        text += (f"; at half max {_fmt(half.get('accepted_per_s'), 0)}/s "
                 f"p99 {_fmt(half.get('p99_ms'), 2)} ms")
    return text


# --- HTML pieces ------------------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 960px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.verdict {{ font-size: 1.4em; font-weight: bold; }}
.pass {{ color: #1a7f37; }}
.fail {{ color: #cf222e; }}
.nodata {{ color: #777; font-style: italic; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{_esc(_fmt(value, 2))}</td>'
    return f"<td>{_esc(_fmt(value))}</td>"


def _no_data(what: str) -> str:
    return f'<p class="nodata">{_esc(what)}</p>'


def _kv_table(rows: Mapping[str, Any]) -> str:
    if not rows:
        return _no_data("not run")
    cells = (f"<tr><th>{_esc(key)}</th>{_cell(value)}</tr>" for key, value in rows.items())
    return "<table>" + "".join(cells) + "</table>"


def _grid_table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _totals_html(totals: Mapping[str, Any]) -> str:
    latency = _dict(totals.get("latency_ms"))
    flat = {key: value for key, value in totals.items() if key != "latency_ms"}
    return (_kv_table(flat) + "<h3>Latency, ms</h3>"
            + _grid_table(LATENCY_KEYS, [[latency.get(key) for key in LATENCY_KEYS]]))


def _audit_html(audit: object) -> str:
    if not isinstance(audit, dict):
        return _no_data("audit not run")
    passed = bool(audit.get("ok"))
    verdict = "PASS" if passed else "FAIL"
    css = "pass" if passed else "fail"
    return f'<p class="verdict {css}">Audit: {verdict}</p>' + _kv_table(audit)


def _offline_line(off: Mapping[str, Any]) -> str:
    lat = _dict(off.get("upload_latency_ms"))
    audit = _dict(off.get("audit"))
    codes = ", ".join(f"{k} {_fmt(v)}" for k, v in _dict(off.get("codes")).items())
    return (f"{'PASS' if off.get('ok') else 'FAIL'} {_fmt(off.get('records_acked'))} records "
            f"({_fmt(off.get('acked_records_per_s'))}/s) in {_fmt(off.get('batches_acked'))} batches, "
            f"upload p50 {_fmt(lat.get('p50'), 1)} ms p99 {_fmt(lat.get('p99'), 1)} ms; {codes or 'no codes'}; "
            f"TACs re-checked {_fmt(audit.get('tacs_checked'))} (bad {_fmt(audit.get('tacs_bad'))}), "
            f"replays {_fmt(off.get('replays_matched'))}/{_fmt(off.get('replays_sent'))}, "
            f"generator {_fmt(off.get('generator_cpu_us_per_record'), 1)} us CPU/record")


def _offline_html(off: Mapping[str, Any]) -> str:
    passed = bool(off.get("ok"))
    head = f'<p class="verdict {"pass" if passed else "fail"}">Offline: {"PASS" if passed else "FAIL"}</p>'
    flat = {k: v for k, v in off.items() if not isinstance(v, dict | list)}
    lat = _dict(off.get("upload_latency_ms"))
    return (head + _kv_table(flat)
            + "<h3>Upload latency per batch, ms</h3>" + _kv_table(lat)
            + "<h3>Codes</h3>" + _kv_table(_dict(off.get("codes")))
            + "<h3>Checks</h3>" + _kv_table(_dict(off.get("checks")))
            + "<h3>Offline audit</h3>" + _kv_table(_dict(off.get("audit"))))


def _find_max_html(find_max: object) -> str:
    if not isinstance(find_max, dict):
        return _no_data("not run")
    summary = {key: find_max.get(key) for key in ("max_accepted_per_s", "p99_bound_ms")}
    for key, value in _dict(find_max.get("half_max")).items():
        summary[f"half_max {key}"] = value
    header = ("rate_per_s", "accepted_per_s", "p99_ms", "timeouts", "stop_reason", "retry_reason")
    steps = [[_dict(step).get(key) for key in header] for step in _list(find_max.get("steps"))]
    return _kv_table(summary) + (_grid_table(header, steps) if steps else _no_data("no steps"))


def _processes_html(processes: object) -> str:
    p = _dict(processes)
    cpu, per_tap = _dict(p.get("cpu_s")), _dict(p.get("cpu_us_per_tap"))
    if not cpu:
        return _no_data("not measured")
    rows = [(role, _fmt(s, 2), _fmt(per_tap.get(role), 1))
            for role, s in sorted(cpu.items(), key=lambda kv: -_number(kv[1]))]
    rows.append(("total", _fmt(sum(_number(v) for v in cpu.values()), 2), _fmt(p.get("cpu_us_per_tap_total"), 1)))
    note = f"<p>{_esc(p.get('note', ''))}</p>" if p.get("note") else ""
    return _grid_table(("process", "CPU s", "CPU us per answered tap"), rows) + note


def _errors_html(errors: list[Any]) -> str:
    if not errors:
        return _no_data("none")
    items = "".join(f"<li>{_esc(error)}</li>" for error in errors[:MAX_ERRORS_SHOWN])
    more = len(errors) - MAX_ERRORS_SHOWN
    return f"<ul>{items}</ul>" + (f"<p>… and {more:,} more</p>" if more > 0 else "")


def _figure_html(heading: str, plot: Callable[[], Figure | None]) -> str:
    figure = plot()
    if figure is None:
        return _no_data("no data")
    return f'<img alt="{_esc(heading)}" src="data:image/png;base64,{_png_base64(figure)}">'


def _png_base64(figure: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIG_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- plots: each returns a Figure, or None when it has no data --------------------------------

def _plots(report: Report) -> list[tuple[str, Callable[[], Figure | None]]]:
    timeline, cdf = _list(report.get("timeline")), _list(report.get("cdf"))
    plots: list[tuple[str, Callable[[], Figure | None]]] = [
        ("Throughput over time", lambda: _throughput_plot(timeline)),
        ("Latency over time", lambda: _latency_timeline_plot(timeline)),
        ("Latency by percentile", lambda: _percentile_plot(cdf, _max_latency_ms(report))),
        ("Results by code", lambda: _codes_plot(_codes(report))),
        ("Memory over time, by process group", lambda: _memory_plot(report)),
    ]
    find_max = report.get("find_max")
    if isinstance(find_max, dict):
        plots.append(("Find max: accepted rate and p99 per step",
                      lambda: _find_max_plot(find_max)))
    return plots


def _memory_plot(report: Report) -> Figure | None:
    from .report_memory import memory_plot

    return memory_plot(_list(_dict(report.get("processes")).get("memory_mb")), _new_figure)


def _new_figure(height_in: float = FIG_HEIGHT_IN) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=FIG_DPI, layout="constrained")


def _throughput_plot(timeline: list[Any]) -> Figure | None:
    if not timeline:
        return None
    t_s = _series(timeline, "t_s")
    interval_s = t_s[1] - t_s[0] if len(t_s) > 1 and t_s[1] > t_s[0] else 1.0
    figure = _new_figure()
    ax = figure.add_subplot()
    for key in ("offered", "answered", "timeouts"):
        per_s = [count / interval_s for count in _series(timeline, key)]
        if key != "timeouts" or any(value > 0 for value in per_s):
            ax.plot(t_s, per_s, label=f"{key}/s")
    ax.set_xlabel("time since start, s")
    ax.set_ylabel("taps per second")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return figure


def _latency_timeline_plot(timeline: list[Any]) -> Figure | None:
    series = {key: _series(timeline, f"{key}_ms", positive=True)
              for key in ("p50", "p90", "p99", "max")}
    if not any(_has_values(values) for values in series.values()):
        return None
    figure = _new_figure()
    ax = figure.add_subplot()
    t_s = _series(timeline, "t_s")
    for key, values in series.items():
        ax.plot(t_s, values, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("time since start, s")
    ax.set_ylabel("latency per interval, ms (log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    return figure


def _percentile_plot(cdf: list[Any], max_ms: float | None) -> Figure | None:
    """HdrHistogram's percentile plot: x is 1/(1-p) on a log axis, labelled 50%, 90%, 99%…"""
    points = [(float(p), float(ms)) for p, ms in (_pair(point) for point in cdf)
              if 0.0 <= p < 100.0 and ms > 0.0]
    if not points:
        return None
    figure = _new_figure()
    ax = figure.add_subplot()
    x = [1.0 / (1.0 - p / 100.0) for p, _ in points]
    ax.plot(x, [ms for _, ms in points], label="latency")
    if max_ms is not None and max_ms > 0:
        ax.axhline(max_ms, linestyle="--", color="grey", label=f"max {max_ms:,.2f} ms")
    ticks = _percentile_ticks(max(p for p, _ in points))
    ax.set_xscale("log")
    ax.set_xticks([1.0 / (1.0 - p / 100.0) for p in ticks], [f"{p:g}%" for p in ticks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency, ms (log)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return figure


def _percentile_ticks(top: float) -> list[float]:
    """The labelled percentiles up to ``top`` and one beyond it, so the curve ends inside."""
    below = [p for p in PERCENTILE_TICKS if p <= top]
    above = [p for p in PERCENTILE_TICKS if p > top][:1]
    return below + above


def _codes_plot(codes: list[tuple[str, int]]) -> Figure | None:
    if not codes:
        return None
    figure = _new_figure(height_in=max(FIG_HEIGHT_IN / 2, 1.0 + 0.35 * len(codes)))
    ax = figure.add_subplot()
    names, counts = [name for name, _ in codes], [count for _, count in codes]
    bars = ax.barh(names, counts)
    ax.bar_label(bars, labels=[f"{count:,}" for count in counts], padding=3)
    ax.invert_yaxis()  # largest first
    ax.set_xlabel("taps")
    ax.margins(x=0.15)
    return figure


def _find_max_plot(find_max: Mapping[str, Any]) -> Figure | None:
    steps = [s for s in _list(find_max.get("steps")) if not _dict(s).get("retried")]  # its rerun is plotted
    if not steps:
        return None
    offered = _series(steps, "rate_per_s")
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.plot(offered, _series(steps, "accepted_per_s"), marker="o", label="accepted/s")
    ax.plot(offered, offered, linestyle=":", color="grey", label="accepted = offered")
    ax.set_xlabel("offered rate, taps/s")
    ax.set_ylabel("accepted rate, taps/s")
    ax.grid(True, alpha=0.3)
    p99 = _series(steps, "p99_ms", positive=True)
    handles, labels = ax.get_legend_handles_labels()
    if _has_values(p99):
        ax2 = ax.twinx()
        ax2.plot(offered, p99, marker="s", color="tab:red", label="p99 ms")
        bound = find_max.get("p99_bound_ms")
        if isinstance(bound, int | float) and bound > 0:
            ax2.axhline(bound, linestyle="--", color="tab:red", alpha=0.5, label="p99 bound")
        ax2.set_yscale("log")
        ax2.set_ylabel("p99, ms (log)")
        more_handles, more_labels = ax2.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper left")
    return figure


# --- data access that copes with missing pieces -----------------------------------------------

def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _series(rows: list[Any], key: str, *, positive: bool = False) -> list[float]:
    """``rows[i][key]`` as floats; missing (and, if ``positive``, non-positive) values become
    NaN, which matplotlib leaves as a gap (a log axis cannot show zero)."""
    values = [_number(_dict(row).get(key)) for row in rows]
    return [math.nan if positive and not value > 0 else value for value in values]


def _has_values(values: list[float]) -> bool:
    return any(not math.isnan(value) for value in values)


def _pair(point: object) -> tuple[float, float]:
    if isinstance(point, list | tuple) and len(point) == 2:
        return _number(point[0]), _number(point[1])
    return math.nan, math.nan


def _codes(report: Report) -> list[tuple[str, int]]:
    codes = _dict(report.get("codes"))
    counted = [(str(name), int(count)) for name, count in codes.items()
               if isinstance(count, int) and not isinstance(count, bool)]
    return sorted(counted, key=lambda item: (-item[1], item[0]))


def _max_latency_ms(report: Report) -> float | None:
    value = _number(_dict(_dict(report.get("totals")).get("latency_ms")).get("max"))
    return None if math.isnan(value) else value


def _fmt(value: object, digits: int = 0) -> str:
    """A value for people: thousands separators, ``digits`` decimals for floats, yes/no."""
    if value is None:
        return NO_DATA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)
