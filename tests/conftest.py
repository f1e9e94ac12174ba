"""Fixtures every test package shares: the store a control plane under test runs on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowyard_common.forking import keep_grpc_out_of_forks
from tests.stores import STORES, empty, migrate, postgres_database

# The harness starts processes (one with a preexec_fn, which makes subprocess fork) while its
# own gRPC clients run: like every Flowyard process, it keeps gRPC's fork handlers off.
keep_grpc_out_of_forks()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """This test process's PostgreSQL database, migrated (fails or skips without a server)."""
    with postgres_database() as url:
        migrate(url)
        yield url


@pytest.fixture(params=STORES)
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The ``--db-url`` of the test's control plane: None (SQLite in its data directory), or
    this process's PostgreSQL database, emptied for the test."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    empty(url)
    return url
