"""Rich rendering of a soak: the live view while it runs, the tables at the end."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from amctl.console import add_row
from amctl.load.soak_measure import SoakRun

LIVE_ROWS = 12  # the newest samples the live view keeps on screen


def _value(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,}{unit}" if isinstance(value, int | float) else str(value)


def _sum_known(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 1) if known else None


def samples_table(samples: Sequence[dict[str, Any]], title: str = "samples") -> Table:
    """One row per interval: the answers, the end-to-end latency and the memory at its end."""
    table = Table(title=title, title_justify="left")
    for column in ("at", "acked/s", "refused", "dropped", "applied", "p50", "p99", "total RSS", "broker RSS",
                   "records held", "records produced ≥", "dropped once read"):
        table.add_column(column, justify="right")
    for s in samples:
        add_row(table, f"{s['at_s']:.0f} s", _value(s["acked_per_s"]), _value(s["refused"]), _value(s["dropped"]),
                _value(s["applied"]), _value(s["p50_ms"], " ms"),
                ("≥ " if s.get("p99_past_last_bound") else "") + _value(s["p99_ms"], " ms"),
                _value(s["total_rss_mib"], " MiB"),
                _value(_sum_known(s["rss_mib"].get("kafka"), s["rss_mib"].get("s3")), " MiB"),
                _value(s.get("broker_held_mib"), " MiB"), _value(s["broker_records_at_least"]),
                _value(s.get("broker_records_dropped")))
    return table


class LiveSoak:
    """What the soak is doing now (elapsed, answers so far, read on every refresh) above the newest samples."""

    def __init__(self, run: SoakRun) -> None:
        self.run = run
        self.status = "starting"
        self.samples: list[dict[str, Any]] = []

    def __rich__(self) -> RenderableType:
        run, load = self.run, self.run.load
        line = Text(self.status, style="bold")
        if run.started and load is not None:  # ints only: the runner changes its counters meanwhile
            elapsed = min(time.monotonic() - run.started, run.config.duration_s)
            line = Text.assemble((f"{elapsed:,.0f} / {run.config.duration_s:,.0f} s", "bold"),
                                 f"  sent {load.sent:,}  acked {run.acked:,}"
                                 f"  refused {load.completed - run.acked:,}  dropped {load.dropped:,}  — {self.status}")
        return Group(line, samples_table(self.samples[-LIVE_ROWS:], "every interval (newest last)"))


def growth_table(report: dict[str, Any]) -> Table:
    """Start and end RSS per component, the growth and the growth per minute under load (RSS, and PSS: shared
    pages such as PostgreSQL's buffers counted once)."""
    table = Table(title="memory (MiB)", title_justify="left")
    for column in ("component", "RSS start", "RSS end", "growth", "per minute", "PSS end", "PSS per minute"):
        table.add_column(column, justify="left" if column == "component" else "right")
    in_memory = ((report["broker"].get("end") or {}).get("storage")) == "memory"
    for name, row in report["rss_mib"].items():
        label = f"{name} (the broker's records, in memory)" if name == "s3" and in_memory else name
        pss = report.get("pss_mib", {}).get(name, {})
        add_row(table, label, _value(row["start"]), _value(row["end"]), _value(row["growth"]),
                _value(row["per_minute"]), _value(pss.get("end")), _value(pss.get("per_minute")),
                style="bold" if name == "total" else "")
    return table


def summary_table(report: dict[str, Any]) -> Table:
    """The run's settings, its answers, and whether every acknowledged event was applied."""
    table = Table(title="soak", title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    if report["settled"]:
        lost = Text(f"{report['lost']:,}", style="green" if report["lost"] == 0 else "bold red")
    else:  # the job had not caught up: these are not applied yet, maybe not lost
        lost = Text(f"{report['lost']:,} not applied when the check gave up", style="bold yellow")
    broker = report["broker"]
    capped = any(s.get("p99_past_last_bound") and s["p99_ms"] == report["p99_ms_max"] for s in report["samples"])
    rows: list[tuple[str, Any]] = [
        ("duration", f"{report['duration_s']:g} s at {report['rate']:g} ev/s over {report['users']:,} users"),
        ("acknowledged / refused / dropped", f"{report['acked']:,} / {report['refused']:,} / {report['dropped']:,}"),
        ("achieved rate", _value(report["achieved_rate"], " ev/s")),
        ("acknowledged events lost", lost),
        ("applied without an acknowledgement", f"{report['unacknowledged_applied']:,}"),
        ("settled after the load", f"{report['settle_s']:g} s" + ("" if report["settled"] else " (did not settle)")),
        ("worst p99 of an interval", ("≥ " if capped else "") + _value(report["p99_ms_max"], " ms")),
        ("broker RSS growth", _value(broker.get("rss_growth_mib"), " MiB")),
        ("broker RSS per acknowledged event", _value(broker.get("rss_bytes_per_acked_event"), " bytes")),
        ("broker records at the end", _value((broker.get("end") or {}).get("records_at_least"))),
    ]
    for label, value in rows:
        add_row(table, label, value)
    return table


def final_view(report: dict[str, Any]) -> Group:
    return Group(summary_table(report), growth_table(report), samples_table(report["samples"], "p99 per interval"))
