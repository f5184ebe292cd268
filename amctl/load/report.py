"""Rich rendering of a load run: the live line while it runs, the summary table at the end."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from amctl.console import add_row
from amctl.load.runner import LoadResult


def live_table(result: LoadResult) -> Table:
    f = result.figures()
    table = Table(box=None, show_header=True, header_style="bold")
    for column in ("elapsed", "sent", "rate/s", "p50", "p95", "p99", "dropped", "errors"):
        table.add_column(column, justify="right")
    rate = result.sent * result.batch_size / result.elapsed_s if result.elapsed_s else 0.0
    errors = ", ".join(f"{status}: {n}" for status, n in sorted(result.errors.items())) or "0"
    table.add_row(
        f"{result.elapsed_s:5.1f}/{result.duration_s:g} s",
        f"{result.sent * result.batch_size:,}",
        f"{rate:,.0f}",
        f"{f['p50']:.1f} ms",
        f"{f['p95']:.1f} ms",
        f"{f['p99']:.1f} ms",
        f"{result.dropped:,}",
        errors,
    )
    return table


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="load summary", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    latency = summary["latency_ms"]
    rows = [
        ("target rate", f"{summary['target_rate']:,.1f} ev/s"),
        ("achieved rate", f"{summary['achieved_rate']:,.1f} ev/s"),
        ("events sent", f"{summary['events_sent']:,}"),
        ("requests completed", f"{summary['completed']:,}"),
        ("dropped (target could not keep up)", f"{summary['dropped']:,}"),
        ("errors", f"{summary['errors']:,} ({summary['error_rate']:.2%})"),
        *[(f"latency {k}", f"{v:.2f} ms") for k, v in latency.items()],
    ]
    rows += [(f"status {k}", f"{v:,}") for k, v in sorted(summary["statuses"].items())]
    for row in rows:
        add_row(table, *row)
    for check in summary["thresholds"]:
        mark = Text("pass", style="green") if check["passed"] else Text("FAIL", style="red")
        add_row(table, f"threshold {check['threshold']}", mark + f" (actual {check['actual']:.4g})")
    return table
