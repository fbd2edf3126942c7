"""The navigation bar: which links a user sees. Each page group adds its lines here."""

from __future__ import annotations

from schemas.enrollment import PROGRAMS
from services.auth import User


def nav_links(user: User, *, demo_inbox: bool = False) -> list[tuple[str, str]]:
    """(label, path) of each page ``user`` may open, in the bar's order (the demo inbox only
    when `wpc up` runs one: with a notify file configured there is none to show)."""
    links = [(f"{program} worklist", f"/worklist?program={program}") for program in PROGRAMS
             if program in user.programs()]
    if user.has("ops"):
        links += [("Feeds", "/feeds"), ("Messages", "/messages")]
    if user.has("ops") or user.programs():
        links.append(("Measures", "/measures"))
    if demo_inbox:
        links.append(("Demo inbox", "/demo-inbox"))
    return links
