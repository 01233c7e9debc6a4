"""Shared pytest setup: the repository root on sys.path, quiet threads, and fixtures used across folders.

Helpers live in ``tests/helpers`` (tiny adapters and image folders, a running app, a Hub double);
test files import them from there, never from each other."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The decoded-image cache of runs that name no --cache-dir: one temporary folder for the test session,
# not the user's ~/.cache/medpeft (subprocesses inherit it).
if "MEDPEFT_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["MEDPEFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="medpeft-test-cache-")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
