"""Draw the Grafana dashboard's panels (ops/grafana/citycard.json) as one PNG with matplotlib,
each query answered by a real Prometheus's ``query_range``. There is no Grafana here: the
picture in docs/operations.md is this script's drawing, not a Grafana screenshot.

How docs/img/dashboard.png was made (configured Postgres and Redis, 2 account shards):

    CITYCARD_METRICS__PORT=19108 CITYCARD_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
      CITYCARD_REDIS_URL=redis://127.0.0.1:6379/0 citycard loadtest --scenario hotlist-storm \\
      --rate 1500 --duration 240 --schema dashshot --no-report
    # meanwhile: prometheus --config.file=P.yml (job "citycard", target 127.0.0.1:19108,
    # scrape_interval 2s) --web.listen-address=127.0.0.1:19090; then, before the run ends:
    python scripts/render_dashboard.py --prometheus http://127.0.0.1:19090 --minutes 4.5 \\
      --end UNIX_TIME_OF_THE_RUN_END --out docs/img/dashboard.png
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 3


def graph_panels(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row title, panel) in the dashboard's order."""
    out, row = [], ""
    for p in dashboard["panels"]:
        if p["type"] == "row":
            row = p["title"]
            out += [(row, q) for q in p.get("panels", [])]
        else:
            out.append((row, p))
    return out


def legend(fmt: str, labels: dict[str, str]) -> str:
    for k, v in labels.items():
        fmt = fmt.replace("{{" + k + "}}", v)
    return fmt


def query_range(http: httpx.Client, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    r = http.get("/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step_s})
    r.raise_for_status()
    body = r.json()
    if body["status"] != "success":
        raise SystemExit(f"{expr}: {body}")
    return list(body["data"]["result"])


def formatter(unit: str) -> FuncFormatter:
    def fmt(v: float, _pos: int) -> str:
        if unit == "percentunit":
            return f"{v * 100:.4g}%"
        if unit == "bytes":
            return f"{v / 2**20:.0f} MiB"
        if unit == "s":
            return f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
        return f"{v:.4g}"

    return FuncFormatter(fmt)


def render(prometheus: str, dashboard_path: Path, start: float, end: float, out: Path, rate_interval: str) -> int:
    dashboard = json.loads(dashboard_path.read_text())
    panels = graph_panels(dashboard)
    step_s = max(1.0, (end - start) / 240)
    rows = math.ceil(len(panels) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(6 * COLUMNS, 3.2 * rows), squeeze=False)
    series = 0
    with httpx.Client(base_url=prometheus, timeout=30) as http:
        for ax, (row, panel) in zip(axes.flat, panels, strict=False):
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", rate_interval)
                        .replace("$__range", f"{int(end - start)}s"))
                for s in query_range(http, expr, start, end, step_s):
                    xs = [(float(t) - start) / 60 for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat", ""), s["metric"]))
                    series += 1
            ax.set_title(f"{row} · {panel['title']}", fontsize=10, loc="left")
            ax.yaxis.set_major_formatter(formatter(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")))
            ax.set_xlim(0, (end - start) / 60)
            ax.set_xlabel("minutes", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7, loc="upper left", ncol=2)
            else:
                ax.text(0.5, 0.5, "no data (nothing happened)", ha="center", va="center", transform=ax.transAxes,
                        fontsize=9, color="grey")
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.suptitle(f"{dashboard['title']}: the Grafana dashboard's panels drawn by scripts/render_dashboard.py "
                 f"from Prometheus query_range ({when}), not a Grafana screenshot", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return series


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prometheus", required=True, help="Prometheus's URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", type=Path, default=ROOT / "ops" / "grafana" / "citycard.json")
    ap.add_argument("--minutes", type=float, default=10.0, help="the range drawn (default 10)")
    ap.add_argument("--end", type=float, default=0.0, help="its end, Unix time (default now)")
    ap.add_argument("--rate-interval", default="30s", help="what $__rate_interval stands for (default 30s)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    args = ap.parse_args()
    end = args.end or time.time()
    n = render(args.prometheus, args.dashboard, end - args.minutes * 60, end, args.out, args.rate_interval)
    print(f"{args.out}: {n} series")


if __name__ == "__main__":
    main()
