"""The shape of an ICD-10-CM code (or code prefix), to refuse typos in code lists.

Rules and notification files list diagnosis codes by prefix (``F10``, ``T40.1``). A code
typed with a letter for a digit (``F2l`` for ``F21``, ``F1O`` for ``F10``) would match no
diagnosis, silently: a program would miss every patient it was meant for. So each code is
checked against the structure of ICD-10-CM (CMS/NCHS code set, "Conventions"):

- character 1 is a letter (the chapter: A-Z);
- character 2 is a digit;
- character 3 is a digit, except in the four categories with a letter there
  (C4A Merkel cell carcinoma, D3A neuroendocrine tumors, M1A chronic gout,
  Z3A weeks of gestation);
- characters 4 to 7, after the dot, are digits or letters (``X`` placeholders, 7th
  character extensions such as ``A``, and subcategories such as ``F32.A``).

A prefix may stop after any character: ``F`` is the whole chapter of mental and
behavioural disorders, ``F1`` is F10-F19. This checks the shape only: a well-formed code
that does not exist (``F27``) passes; the code set itself is not shipped.
"""

from __future__ import annotations

import re

__all__ = ["canonical", "problem"]

_SHAPE = re.compile(r"^[A-Z](?:[0-9](?:[0-9A-Z][0-9A-Z]{0,4})?)?$")
_LETTER_THIRD = frozenset({"C4A", "D3A", "M1A", "Z3A"})
# Characters people and OCR mix up (the brief's list: l/1, O/0, I/1, S/5).
_AS_DIGIT = {"L": "1", "I": "1", "O": "0", "S": "5"}
_AS_LETTER = {"1": "I", "0": "O", "5": "S"}


def canonical(code: str) -> str:
    """Upper case without the dot and surrounding blanks (F10.21 -> F1021)."""
    return code.strip().upper().replace(".", "")


def problem(code: str) -> str | None:
    """None when ``code`` has the shape of an ICD-10-CM code or prefix; else what is wrong,
    with a suggestion when a look-alike character explains it."""
    raw = code.strip()
    c = canonical(code)
    if "." in raw and (raw.index(".") != 3 or raw.count(".") > 1):
        return f"{code!r} is not an ICD-10-CM code: the dot comes after the third character (e.g. F10.21)"
    if not _SHAPE.match(c) or (len(c) > 2 and c[2].isalpha() and c[:3] not in _LETTER_THIRD) or "l" in raw[3:]:
        fixed = _suggest(raw)
        hint = f"; did you mean {fixed}?" if fixed and fixed != raw and problem(fixed) is None else ""
        return (f"{code!r} is not an ICD-10-CM code (a letter, a digit, a digit, then up to 4 letters or "
                f"digits after the dot){hint}")
    return None


def _suggest(raw: str) -> str:
    """``raw`` with look-alikes replaced where the structure wants the other kind of character."""
    out = []
    for i, ch in enumerate(raw):
        up = ch.upper()
        if i == 0:
            out.append(_AS_LETTER.get(up, up))
        elif i in (1, 2):
            out.append(_AS_DIGIT.get(up, up))
        elif ch == "l":  # a lowercase l after the third character is a 1 typed as a letter
            out.append("1")
        else:
            out.append(up)
    fixed = "".join(out)
    # Keep the four categories with a letter in third place as they are (M1A, not M11).
    if len(raw) >= 3 and raw[:3].upper() in _LETTER_THIRD:
        fixed = raw[:3].upper() + fixed[3:]
    return fixed
