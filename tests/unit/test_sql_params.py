"""Named parameters → asyncpg's positional ones (enrollment_svc.sql), without a database."""

from __future__ import annotations

import pytest

from enrollment_svc.sql import Sql, _positional


@pytest.mark.parametrize(
    ("statement", "query", "names"),
    [
        ("SELECT 1", "SELECT 1", ()),
        ("SELECT :a, :b", "SELECT $1, $2", ("a", "b")),
        # A name used twice is one parameter.
        ("UPDATE t SET x = :now, y = :now WHERE id = :id", "UPDATE t SET x = $1, y = $1 WHERE id = $2", ("now", "id")),
        # Casts written the PostgreSQL way and times inside literals are not parameters.
        ("SELECT :a::text, '12:30'", "SELECT $1::text, '12:30'", ("a",)),
        ("SELECT CAST(:pc AS jsonb) WHERE :pc = '[]'", "SELECT CAST($1 AS jsonb) WHERE $1 = '[]'", ("pc",)),
    ],
)
def test_named_parameters_become_positional(statement: str, query: str, names: tuple[str, ...]) -> None:
    assert _positional(statement) == (query, names)


def test_arguments_follow_the_order_of_first_use() -> None:
    assert Sql._args("SELECT :b, :a, :b", {"a": 1, "b": 2, "unused": 3}) == ("SELECT $1, $2, $1", [2, 1])
