"""services.consumer: which failures are transient (read the batch again) and which are a
record's own (park it), and what a logged traceback may say. Pure, no I/O."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError
from sqlalchemy import exc as sa_exc

from services.consumer import code_trace, is_transient, sqlstate


def _wrapped(orig: BaseException, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    """As SQLAlchemy's asyncpg dialect raises a driver error: DBAPIError over it."""
    wrapper = sa_exc.DBAPIError("SELECT 1", {}, orig, connection_invalidated=invalidated)
    wrapper.__cause__ = orig
    return wrapper


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),  # 08003
        asyncpg.exceptions.ConnectionFailureError("gone"),  # 08006
        asyncpg.exceptions.TooManyConnectionsError("full"),  # 53300
        asyncpg.exceptions.AdminShutdownError("shutdown"),  # 57P01
        asyncpg.exceptions.CannotConnectNowError("starting"),  # 57P03
        asyncpg.exceptions.QueryCanceledError("statement timeout"),  # 57014
        asyncpg.exceptions.SerializationError("retry"),  # 40001
        asyncpg.exceptions.DeadlockDetectedError("retry"),  # 40P01
        asyncpg.exceptions.LockNotAvailableError("lock timeout"),  # 55P03
        asyncpg.InterfaceError("cannot call Connection.execute(): connection is closed"),
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        KafkaConnectionError(),
        sa_exc.TimeoutError("QueuePool limit reached"),
        _wrapped(asyncpg.exceptions.AdminShutdownError("shutdown")),
        _wrapped(RuntimeError("closed"), invalidated=True),
    ],
    ids=lambda e: type(e).__name__,
)
def test_trouble_around_the_record_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.CharacterNotInRepertoireError("NUL"),  # 22021: the record's own data
        asyncpg.exceptions.UntranslatableCharacterError("NUL in jsonb"),  # 22P05
        asyncpg.exceptions.UniqueViolationError("dup"),  # 23505, once its own retries are spent
        asyncpg.exceptions.NotNullViolationError("null"),  # 23502
        asyncpg.exceptions.UndefinedColumnError("bug"),  # 42703
        asyncpg.exceptions.ClientConfigurationError("bad"),  # an InterfaceError subclass: not about the connection
        _wrapped(asyncpg.exceptions.CharacterNotInRepertoireError("NUL")),
        AssertionError(),
        KeyError("x"),
        ValueError("bad value"),
        TypeError("bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_records_own_failure_is_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_cause_decides_when_the_outer_error_says_nothing() -> None:
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("apply failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_sqlstate_is_read_through_sqlalchemy() -> None:
    assert sqlstate(_wrapped(asyncpg.exceptions.DeadlockDetectedError("x"))) == "40P01"
    assert sqlstate(ValueError()) is None


def _raise_with_data() -> None:
    raise ValueError("patient DOE^JANE born 19800101 MRN 12345")


def test_code_trace_names_class_and_code_locations_never_the_message() -> None:
    try:
        try:
            _raise_with_data()
        except ValueError as inner:
            raise asyncpg.exceptions.CharacterNotInRepertoireError("value 'DOE^JANE' refused") from inner
    except Exception as exc:
        trace = code_trace(exc)
    assert trace.startswith("asyncpg.exceptions.CharacterNotInRepertoireError (sqlstate 22021)")
    assert "builtins.ValueError" in trace and "in _raise_with_data" in trace and "test_consumer_failures.py" in trace
    assert "DOE" not in trace and "19800101" not in trace and "12345" not in trace
