"""The navigation bar: which links a user sees. Each page group adds its lines here."""

from __future__ import annotations

from schemas.enrollment import PROGRAMS
from services.auth import User


def nav_links(user: User) -> list[tuple[str, str]]:
    """(label, path) of each page ``user`` may open, in the bar's order."""
    links = [(f"{program} worklist", f"/worklist?program={program}") for program in PROGRAMS
             if program in user.programs()]
    if user.has("ops"):
        links += [("Feeds", "/feeds"), ("Messages", "/messages")]
    if user.has("ops") or user.programs():
        links.append(("Measures", "/measures"))
    links.append(("Demo inbox", "/demo-inbox"))
    return links
