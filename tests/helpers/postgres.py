"""A fresh PostgreSQL database per test, on the server named by ``MEDPEFT_TEST_POSTGRES_URL``
(``eval "$(scripts/pg_throwaway start)"`` starts a throwaway one; CI does). Without the URL the
PostgreSQL tests skip with a message, except under CI (``CI=true``), where they fail.

Use it by importing the fixture into a test module: ``from tests.helpers.postgres import postgres_url``.
"""
from __future__ import annotations

import os
import uuid

import pytest

ENV = "MEDPEFT_TEST_POSTGRES_URL"


def server_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        message = (f"no PostgreSQL server: set {ENV} (eval \"$(scripts/pg_throwaway start)\" starts a "
                   f"throwaway one)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run the PostgreSQL tests")
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_url():
    """The URL of a new, empty database, dropped after the test."""
    import psycopg

    server = server_url()
    name = f"medpeft_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
