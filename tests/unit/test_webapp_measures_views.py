"""The measures and demo inbox view models (pure): SVG charts, CSV, cards."""

from __future__ import annotations

import datetime as dt

from webapp.views.demo_inbox import build_cards
from webapp.views.measures import bar_chart, build_measures, measures_csv, months_back


def answer(month: str, **programs: dict[str, object]) -> dict[str, object]:
    return {"month": month, "programs": programs}


def test_months_back_crosses_the_year() -> None:
    assert months_back(dt.date(2026, 2, 10), 3) == ["2025-12", "2026-01", "2026-02"]


def test_chart_has_a_bar_per_figure_na_for_none_and_the_target_line_escaped() -> None:
    svg = str(bar_chart("A <b>", [("2026-10", 0.25), ("2026-11", None), ("2026-12", 1.0)]))
    assert svg.count('<rect class="bar"') == 2 and ">n/a<" in svg and "target 50%" in svg
    assert "A &lt;b&gt;" in svg and "<b>" not in svg and "://" not in svg
    # The target line sits at half the plot height: y of 50% between those of 0% and 100%.
    assert 'class="target" x1="44" x2="552" y1="92.0" y2="92.0"' in svg


def test_view_and_csv_per_program() -> None:
    toc = {"enrolled": 2, "pcp_notified_share": 0.5, "visit_within_3_business_days_share": 1.0,
           "pcp_appointment_within_1_month_share": None, "readmissions_30d": {"rate": 0.0}}
    answers = [answer("2026-11"), answer("2026-12", TOC=toc)]
    view = build_measures("TOC", answers)
    assert view.enrolled == (0, 2) and not view.empty
    assert [c.key for c in view.charts] == ["pcp_notified_share", "visit_within_3_business_days_share",
                                            "pcp_appointment_within_1_month_share", "readmission_rate_30d"]
    assert view.charts[0].points == (("2026-11", None), ("2026-12", 0.5))
    # Only the PCP-notified share has a target (50%, programs.md): no target line elsewhere.
    assert "target 50%" in view.charts[0].svg
    assert all("target" not in c.svg for c in view.charts[1:])
    assert build_measures("ISR", answers).empty
    lines = measures_csv([view]).splitlines()
    assert lines[0] == "program,month,measure,value,enrolled"
    assert "TOC,2026-12,pcp_notified_share,0.5000,2" in lines and "TOC,2026-11,pcp_notified_share,,0" in lines


def test_cards_of_each_channel() -> None:
    items = [
        {"recipient": "demo-clinic", "channel": "webhook", "kinds": ["admit"],
         "received_at": "2026-12-02T18:00:00+00:00",
         "body": {"digest": False, "notices": [{"event": "admit", "patient": {"given": "ANA", "family": "ROE"},
                                                "encounter": {"facility": "HARBOR", "diagnoses": [{"code": "R07.9"}]},
                                                "withheld": ["diagnoses"]}]}},
        {"recipient": "eastside-clinic", "channel": "email", "received_at": "2026-12-02T18:01:00+00:00",
         "subject": "WPC: 3 notifications", "body": "text"},
    ]
    web, mail = build_cards(items, "America/Los_Angeles")
    assert web.when == "Wed 02 Dec 10:00:00" and web.title == "1 notice"
    lines = {line.label: line.value for line in web.sections[0]}
    assert lines["Patient"] == "ANA ROE" and lines["Diagnoses"] == "R07.9"
    assert lines["Withheld (42 CFR Part 2)"] == "diagnoses"
    assert mail.title == "WPC: 3 notifications" and mail.text == "text" and mail.channel == "E-mail"
