"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """aiofiles runs only on asyncio, so the async tests do too."""
    return "asyncio"


@pytest.fixture
def no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read WORKER_* variables: hide the caller's from tests that set their own."""
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def default_int_limit() -> Iterator[None]:
    """Python's default cap on int/str conversions of long digit strings, as a library user has
    it: the command line lifts it, and a test in the same process must not depend on that."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    yield
    sys.set_int_max_str_digits(before)
