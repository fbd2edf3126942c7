"""Configuration files (YAML) and the one error every configuration mistake raises.

A person who edits a rules, users or notification file and makes a mistake should read
one line that names the file, the line and what is wrong, not a pydantic report about
``"<unicode string>"``. So every YAML configuration file is read here:

- `read_yaml` reads and parses a file, keeping the node tree PyYAML composes (each node
  knows the line it starts on), and refuses a key written twice in one mapping (PyYAML
  would silently keep the last one);
- `validate` turns a pydantic ``ValidationError`` into a `ConfigError` that points at the
  line of the offending key, found by walking the node tree along the error's location.

Exception tree::

    ValueError
     └── ConfigError      a setting or a configuration file is wrong: the person fixes it;
                          `wpc` prints ``str(error)`` (one line) and exits with status 2

`ConfigError` is a ValueError because callers of the loaders used to catch ValueError
(``wpc load-roster``, tests of bad files); they keep working. Environment problems found
before start (port in use, database unreachable) are not configuration mistakes: see
`wpc.preflight.StartupError` (exit status 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "YamlDocument", "parse_yaml", "read_yaml", "validate"]

M = TypeVar("M", bound=BaseModel)

CONFIG_EXIT_STATUS = 2
_SHOWN_VALUE_CHARS = 40
# A model-level check (pydantic reports it at the document root) may start its message with
# the key path it is about, "care_teams: ...": the line of that key is then reported.
_LEADING_PATH = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*|\[\d+\])*): ")


class ConfigError(ValueError):
    """A configuration mistake. ``str()`` is one line: the first problem, and how many more.
    ``problems`` holds every one (``wpc check-config`` prints them all)."""

    exit_status = CONFIG_EXIT_STATUS

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        first = self.problems[0] if self.problems else "invalid configuration"
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML file: its data, and its node tree for line numbers."""

    label: str  # how messages name the file: its path as given
    text: str
    data: Any
    root: yaml.Node | None

    def line_of(self, loc: Sequence[str | int]) -> tuple[int | None, int]:
        """(1-based line of the deepest node along ``loc``, how many ``loc`` items were found)."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        found = 0
        for key in loc:
            child = _child(node, key)
            if child is None:
                break
            line, node = child
            found += 1
        return line, found

    def error(self, loc: Sequence[str | int], problem: str) -> str:
        """"<file> line <n>: <key path>: <problem>" (the line of the deepest key of ``loc`` found)."""
        line, _ = self.line_of(loc)
        where = format_path(loc)
        return f"{self.label}{f' line {line}' if line else ''}: {f'{where}: ' if where else ''}{problem}"


def read_yaml(path: Path, *, setting: str | None = None, hint: str = "") -> YamlDocument:
    """Read and parse ``path``. ``setting`` names the variable that chose the file, so a
    missing file says which variable to fix; ``hint`` is appended to that message."""
    named = f"{setting}={path}" if setting else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{named}: no such file{'; ' + hint if hint else ''}") from None
    except IsADirectoryError:
        raise ConfigError(f"{named}: is a directory, not a file{'; ' + hint if hint else ''}") from None
    except PermissionError:
        raise ConfigError(f"{named}: not readable by this user (check its permissions)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{named}: cannot read it ({exc.strerror or exc})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, label: str) -> YamlDocument:
    """Parse ``text`` (named ``label`` in messages) into data and its node tree."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _refuse_duplicate_keys(root, label)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_syntax_message(exc, label)) from None
    except yaml.YAMLError as exc:  # a reader error: a character YAML does not allow
        raise ConfigError(f"{label}: not a YAML file: {exc}") from None
    finally:
        loader.dispose()
    return YamlDocument(label, text, data, root)


def validate(doc: YamlDocument, model: type[M], data: Any = None, *, wrapped_in: str | None = None) -> M:
    """``model`` validated from the document's data (or ``data``, derived from it), every
    pydantic error turned into one line of a `ConfigError` with the line of its key.
    ``wrapped_in``: ``data`` is ``{wrapped_in: <the document>}`` (a model over a list), a key
    left out of the locations reported."""
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as exc:
        errors = exc.errors()
        if wrapped_in is not None:
            errors = [{**e, "loc": e["loc"][1:]} if e["loc"][:1] == (wrapped_in,) else e for e in errors]
        raise ConfigError([_problem(doc, err) for err in errors]) from None


def format_path(loc: Sequence[str | int]) -> str:
    """("care_teams", 0, "endpoints") -> "care_teams[0].endpoints"."""
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _child(node: yaml.Node | None, key: str | int) -> tuple[int, yaml.Node] | None:
    """The line where ``key`` is written in ``node`` and the node of its value."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return k.start_mark.line + 1, v
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        item = node.value[key]
        return item.start_mark.line + 1, item
    return None


def _refuse_duplicate_keys(node: yaml.Node, label: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if k.value in seen:
                    raise ConfigError(f"{label} line {line}: key {k.value!r} is written twice "
                                      f"(first at line {seen[k.value]}); keep one")
                seen[k.value] = line
            _refuse_duplicate_keys(v, label)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, label)


def _syntax_message(exc: yaml.MarkedYAMLError, label: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = exc.problem or exc.context or "invalid YAML"
    context = ""
    if exc.context and exc.problem and exc.context_mark is not None:
        context = f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{label}{where}: YAML syntax error: {problem}{context}; check indentation, colons and quotes there"


def _problem(doc: YamlDocument, err: Mapping[str, Any]) -> str:
    loc: list[str | int] = [k for k in err.get("loc", ()) if isinstance(k, str | int)]
    message = str(err.get("msg", "invalid"))
    kind = str(err.get("type", ""))
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        if not loc and (m := _LEADING_PATH.match(message)):
            loc = _parse_path(m.group(1))
            message = message[m.end():]
    elif kind == "extra_forbidden":
        message = "unknown key (not allowed here; check its spelling and indentation)"
    elif kind == "missing":
        message = "required, but missing"
    elif kind == "assertion_error":
        message = message.removeprefix("Assertion failed, ")
    value = err.get("input")
    if kind not in ("missing", "extra_forbidden", "value_error") and isinstance(value, str | int | float | bool):
        shown = repr(value)
        message += f" (found {shown[:_SHOWN_VALUE_CHARS]}{'...' if len(shown) > _SHOWN_VALUE_CHARS else ''})"
    line, found = doc.line_of(loc)
    # pydantic adds type tags to the location of a union member ("function-after[...]"): keep
    # the path as far as the file has it, plus the last key when it is the one missing.
    shown_loc = loc[: found + 1] if kind == "missing" else loc[:found] if found < len(loc) else loc
    where = format_path(shown_loc)
    return f"{doc.label}{f' line {line}' if line else ''}: {f'{where}: ' if where else ''}{message}"


def _parse_path(text: str) -> list[str | int]:
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", text):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out
