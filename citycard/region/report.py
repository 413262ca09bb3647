"""The region lab's ``report.json`` and self-contained ``report.html`` (PNG plots inlined as
base64, as the load lab's report does): cross-city latency over time, per-city flows, the net
position matrix. matplotlib is imported lazily, through the Agg canvas only."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIG_W_IN, FIG_H_IN, DPI = 9.0, 3.5, 100


def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def _esc(v: object) -> str:
    return html.escape(str(v))


def _kv(rows: Mapping[str, Any]) -> str:
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows.items()) + "</table>"


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_W_IN, FIG_H_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(plot: Callable[[], Figure | None]) -> str:
    fig = plot()
    if fig is None:
        return "<p><em>no data</em></p>"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _latency_plot(report: Mapping[str, Any]) -> Figure | None:
    tl = report.get("timeline") or []
    if not tl:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p["t_s"] for p in tl], [p["cross_p99_ms"] for p in tl], label="cross-city p99 (ms)")
    ax2 = ax.twinx()
    ax2.bar([p["t_s"] for p in tl], [p["cross_taps"] for p in tl], alpha=0.25, color="grey", label="cross-city taps/s")
    out = report.get("outage") or {}
    if "down_at_s" in out and "up_at_s" in out:
        ax.axvspan(out["down_at_s"], out["up_at_s"], color="red", alpha=0.1, label=f"{out.get('city')} down")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("ms")
    ax2.set_ylabel("taps")
    ax.legend(loc="upper left")
    return fig


def _flows_plot(report: Mapping[str, Any]) -> Figure | None:
    flows = report.get("flows") or {}
    if not flows:
        return None
    cities = sorted(flows)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(cities))
    ax.bar([x - 0.2 for x in xs], [flows[c].get("receivable_gross_fen", 0) / 100 for c in cities], 0.4,
           label="as acquirer: visitors' taps (yuan)")
    ax.bar([x + 0.2 for x in xs], [flows[c].get("payable_gross_fen", 0) / 100 for c in cities], 0.4,
           label="as issuer: its cards elsewhere (yuan)")
    ax.set_xticks(list(xs), cities)
    ax.legend()
    return fig


def _matrix_plot(report: Mapping[str, Any]) -> Figure | None:
    rows = (report.get("clearing") or {}).get("net_position_matrix") or []
    cities = sorted(report.get("flows") or {})
    if not rows or not cities:
        return None
    idx = {c: i for i, c in enumerate(cities)}
    grid = [[0.0] * len(cities) for _ in cities]
    for r in rows:  # payer row, payee column, in yuan; the mirror cell negative
        grid[idx[r["payer"]]][idx[r["payee"]]] = r["fen"] / 100
        grid[idx[r["payee"]]][idx[r["payer"]]] = -r["fen"] / 100
    fig = _figure()
    fig.set_size_inches(6.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    top = max(abs(v) for row in grid for v in row) or 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-top, vmax=top)
    ax.set_xticks(range(len(cities)), cities)
    ax.set_yticks(range(len(cities)), cities)
    ax.set_xlabel("payee")
    ax.set_ylabel("payer")
    fig.colorbar(im, ax=ax, label="bilateral net after fees (yuan), row pays column")
    return fig


def render_html(report: dict[str, Any]) -> str:
    ok = bool(report.get("ok"))
    audit = report.get("audit") or {}
    lat = report.get("latency_ms") or {}
    parts = [
        "<h1>citycard region lab</h1>",
        f'<p class="{"pass" if ok else "fail"}">{"OK" if ok else "FAILED"}</p>',
        "<h2>Run</h2>", _kv(report.get("run") or {}),
        "<h2>Totals</h2>", _kv(report.get("totals") or {}),
        "<h2>Latency (ms, send to durable answer)</h2>",
        _grid(["taps", "p50", "p90", "p99", "max", "count"],
              [[k] + [v.get(x) for x in ("p50", "p90", "p99", "max", "count")] for k, v in lat.items()]),
        "<h2>Audit</h2>", _kv(audit.get("checks") or {}),
        "<pre>" + _esc("\n".join(audit.get("problems") or [])) + "</pre>",
        "<h2>Outage</h2>", _kv(report.get("outage") or {}),
        "<h2>Suspension</h2>", _kv((report.get("clearing") or {}).get("suspension") or {}),
        "<h2>Refused deliveries</h2>",
        _grid(["what", "sender", "code", "expected", "changed nothing", "reason"],
              [[r["what"], r["sender"], r["code"], r["expected"], r["changed_nothing"], r["reason"]]
               for r in report.get("refusals") or []]),
        "<h2>Multilateral net positions (fen)</h2>", _kv((report.get("clearing") or {}).get("multilateral_fen") or {}),
        "<h2>Cross-city latency over time</h2>", _png(lambda: _latency_plot(report)),
        "<h2>Per-city flows</h2>", _png(lambda: _flows_plot(report)),
        "<h2>Net position matrix</h2>", _png(lambda: _matrix_plot(report)),
    ]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;text-align:left}.pass{color:green;font-weight:bold}.fail{color:red;font-weight:bold}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>citycard region lab</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _outage_lines(report: Mapping[str, Any]) -> list[str]:
    o = report.get("outage") or {}
    saw, held = o.get("its_terminals_saw") or {}, o.get("its_taps_while_down") or {}
    s = (report.get("clearing") or {}).get("suspension") or {}
    lifted = s.get("lifted") or {}
    return [f"  outage: {o.get('city')} down whole at {o.get('down_at_s')} s, back at {o.get('up_at_s')} s"
            f" (restart {o.get('restart_s')} s, gateway :{o.get('gateway_port')}, link :{o.get('link_port')});"
            f" {o.get('standins_for_down_city')} stand-ins for its cards elsewhere, {o.get('pending_after_wait')}"
            f" pending after {o.get('advice_wait_s')} s",
            f"  its terminals: {saw.get('refused_connects')} connects refused, {saw.get('lost_connections')}"
            f" connections lost, {saw.get('resent_same_seq')} taps resent with their seq ({saw.get('replayed')} replays),"
            f" {saw.get('sent_late')}"
            f" sent late ({held.get('answered_ok')} OK), {saw.get('not_sent')} not sent, {saw.get('reconnected')}"
            " reconnected",
            f"  suspension: house suspended {s.get('house')}; {s.get('city')}'s link down: {s.get('refused')}/"
            f"{s.get('link_down_taps')} visitor taps refused {s.get('codes')}, {s.get('stood_in_meanwhile')} stood in;"
            f" settled {lifted.get('settled')}: house {lifted.get('house_after')}, desks lifted"
            f" {lifted.get('desks_lifted')} in {lifted.get('desks_wait_s')} s"]


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    t, run = report.get("totals") or {}, report.get("run") or {}
    cross = (report.get("latency_ms") or {}).get("cross_city") or {}
    audit = report.get("audit") or {}
    lines = [f"citycard region lab: {run.get('cities')} cities, {t.get('taps', 0):,} taps in"
             f" {run.get('traffic_s')} s ({t.get('cross_city_taps', 0):,} cross-city, {t.get('cross_city_ok', 0):,} OK);"
             f" whole run {run.get('total_s')} s",
             f"  cross-city latency ms: p50 {cross.get('p50')} p99 {cross.get('p99')} max {cross.get('max')}",
             *_outage_lines(report),
             f"  cleared {t.get('cleared_records', 0):,} records, {t.get('cleared_gross_fen', 0):,} fen;"
             f" multilateral sum {audit.get('multilateral_sum_fen')} fen",
             "  refusals: " + "; ".join(f"{r['what']}: {r['code']}" for r in report.get("refusals") or [])]
    off = report.get("offline_visitors") or {}
    if off:  # region/offline.py
        lines.append(f"  offline visitors: {off.get('records', 0):,} records forwarded and cleared:"
                     f" {off.get('genuine', 0):,} genuine ({off.get('genuine_fen', 0):,} fen), {off.get('forged', 0)}"
                     f" forged ({off.get('forged_fen', 0):,} fen) rejected by their issuers, charged back next window")
    for name, passed in (audit.get("checks") or {}).items():
        lines.append(f"  {'ok  ' if passed else 'FAIL'} {name}")
    lines += [f"  ! {p}" for p in audit.get("problems") or []]
    lines.append("  OK" if report.get("ok") else "  FAILED")
    return lines


__all__ = ["render_html", "summary_lines", "write_reports"]
