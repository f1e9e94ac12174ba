"""Database URLs: the forms users write become the async driver Flowyard ships."""

import pytest

from control_plane.store.db import normalise_url, shown_url
from control_plane.store.migrate import StoreError


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgres://u@h:5433/d", "postgresql+psycopg://u@h:5433/d"),
        (
            "postgresql+psycopg://u@h/d?sslmode=require",
            "postgresql+psycopg://u@h/d?sslmode=require",
        ),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:///x/flowyard.db", "sqlite+aiosqlite:///x/flowyard.db"),
        ("sqlite+aiosqlite:///x/flowyard.db", "sqlite+aiosqlite:///x/flowyard.db"),
    ],
)
def test_urls_get_the_async_driver(given: str, used: str) -> None:
    assert normalise_url(given).render_as_string(hide_password=False) == used


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("mysql://root@h/d", "unsupported database 'mysql'"),
        ("not a url :secret@", "is not a database URL"),
        ("postgresql://u:secret@h:notaport/d", "--db-url: the port is not a number"),
        ("postgresql://u:secret@[::1:5432/d", "an IPv6 address in brackets"),
        ("postgresql://u@h/d?password=secret&host=a:x&host=b:1", "a port of its host parameters"),
        ("postgresql://u@h/d?password=secret&sslmod=require", 'invalid connection option "sslmod"'),
        ("postgresql://", "--db-url names no database; use postgresql://user@host/dbname"),
        ("postgres://u:secret@h:5432/", "--db-url names no database"),
        ("sqlite://", "--db-url names no SQLite file"),
        ("sqlite:///", "--db-url names no SQLite file"),
        ("sqlite:///:memory:", "--db-url names no SQLite file"),
        ("sqlite+aiosqlite:///x.db?mode=memory&uri=true", "--db-url names no SQLite file"),
    ],
)
def test_unusable_urls_are_one_clear_line_without_the_password(given: str, said: str) -> None:
    with pytest.raises(StoreError) as error:
        normalise_url(given)
    assert said in str(error.value) and "secret" not in str(error.value)
    assert "\n" not in str(error.value)


def test_a_database_named_in_the_query_is_named() -> None:
    assert normalise_url("postgresql://u@h/?dbname=d").query == {"dbname": "d"}


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql://u:secret@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u@h/d?password=secret", "postgresql://u@h/d?password=***"),
        (
            "postgresql://u@h/d?sslmode=require&sslpassword=secret&application_name=x",
            "postgresql://u@h/d?sslmode=require&sslpassword=***&application_name=x",
        ),
        ("sqlite:///x/flowyard.db", "sqlite:///x/flowyard.db"),
    ],
)
def test_urls_are_shown_without_their_password(given: str, shown: str) -> None:
    assert shown_url(given) == shown
