"""The measures page's view (pure): per program and month, each measure's share as a bar
chart in server-rendered SVG with the 50% target line, and the same figures as CSV.

Input: the enrollment API's ``GET /v1/measures`` answers, one per month (oldest first).
No I/O, no clock: the page hands the months in.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

TARGET = 0.5  # programs.md: the pilot's primary care engagement target, 50%

# (key in the API's program answer, label, which programs have it)
MEASURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("pcp_notified_share", "PCP notified of the enrollment", ("TOC", "ISR", "SUD-ENS")),
    ("visit_within_3_business_days_share", "Visit within 3 business days of discharge", ("TOC",)),
    ("pcp_appointment_within_1_month_share", "PCP appointment within 1 month of discharge", ("TOC",)),
    ("home_visit_within_5_business_days_share", "Home visit within 5 business days of discharge", ("ISR",)),
    ("readmission_rate_30d", "30-day readmissions (lower is better)", ("TOC", "ISR", "SUD-ENS")),
)


def months_back(today: dt.date, n: int) -> list[str]:
    """The ``n`` months ending with ``today``'s, oldest first, as YYYY-MM."""
    year, month = today.year, today.month
    out = []
    for _ in range(n):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out[::-1]


def _value(program: Mapping[str, Any] | None, key: str) -> float | None:
    if program is None:
        return None
    if key == "readmission_rate_30d":
        rate = (program.get("readmissions_30d") or {}).get("rate")
        return float(rate) if rate is not None else None
    value = program.get(key)
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Chart:
    key: str
    label: str
    points: tuple[tuple[str, float | None], ...]  # (month, share or None: no denominator)
    svg: Markup


@dataclass(frozen=True)
class MeasuresView:
    program: str
    months: tuple[str, ...]
    enrolled: tuple[int, ...]
    charts: tuple[Chart, ...]
    empty: bool  # no enrollment and no figure in any month


_W, _H, _LEFT, _BOTTOM, _TOP = 560, 200, 44, 28, 12


def bar_chart(label: str, points: Sequence[tuple[str, float | None]], target: float | None = TARGET) -> Markup:
    """An SVG bar chart of shares 0-1 per month, with a dashed target line when the measure has
    a target (programs.md sets one, 50%, for the PCP-notified share only); a month without a
    figure shows "n/a". Text and titles for screen readers; everything escaped."""
    plot_w, plot_h = _W - _LEFT - 8, _H - _BOTTOM - _TOP
    step = plot_w / max(len(points), 1)
    bar = min(48.0, step * 0.6)

    def y(share: float) -> float:
        return _TOP + plot_h * (1 - max(0.0, min(1.0, share)))

    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
             f'aria-label="{escape(label)}">',
             f"<title>{escape(label)}</title>"]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - 8}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
                     f'<text class="axis" x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f"{int(tick * 100)}%</text>")
    for n, (month, share) in enumerate(points):
        x = _LEFT + step * n + (step - bar) / 2
        parts.append(f'<text class="axis" x="{x + bar / 2:.1f}" y="{_H - 8}" text-anchor="middle">'
                     f"{escape(month)}</text>")
        if share is None:
            parts.append(f'<text class="na" x="{x + bar / 2:.1f}" y="{y(0) - 4:.1f}" text-anchor="middle">n/a</text>')
            continue
        top = y(share)
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{bar:.1f}" height="{y(0) - top:.1f}">'
                     f"<title>{escape(month)}: {share * 100:.0f}%</title></rect>"
                     f'<text class="value" x="{x + bar / 2:.1f}" y="{top - 4:.1f}" text-anchor="middle">'
                     f"{share * 100:.0f}%</text>")
    if target is not None:
        parts.append(f'<line class="target" x1="{_LEFT}" x2="{_W - 8}" y1="{y(target):.1f}" y2="{y(target):.1f}"/>'
                     f'<text class="target-label" x="{_W - 10}" y="{y(target) - 4:.1f}" text-anchor="end">'
                     f"target {int(target * 100)}%</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def build_measures(program: str, answers: Sequence[Mapping[str, Any]]) -> MeasuresView:
    """The view of ``program`` from the API answers of consecutive months."""
    months = tuple(str(a["month"]) for a in answers)
    rows = [(a.get("programs") or {}).get(program) for a in answers]
    charts = []
    for key, label, programs in MEASURES:
        if program not in programs:
            continue
        points = tuple((m, _value(r, key)) for m, r in zip(months, rows, strict=True))
        target = TARGET if key == "pcp_notified_share" else None
        charts.append(Chart(key, label, points, bar_chart(label, points, target)))
    enrolled = tuple(int(r["enrolled"]) if r else 0 for r in rows)
    empty = not any(enrolled) and all(v is None for c in charts for _, v in c.points)
    return MeasuresView(program, months, enrolled, tuple(charts), empty)


def measures_csv(views: Sequence[MeasuresView]) -> str:
    """One line per program, month and measure: ``program,month,measure,value,enrolled``
    (value a share 0-1, empty when there was no denominator)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["program", "month", "measure", "value", "enrolled"])
    for view in views:
        for chart in view.charts:
            for (month, value), enrolled in zip(chart.points, view.enrolled, strict=True):
                writer.writerow([view.program, month, chart.key, "" if value is None else f"{value:.4f}", enrolled])
    return out.getvalue()
