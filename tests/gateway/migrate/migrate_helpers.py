"""Shared by the migration-kit tests: the root conftest's helpers (``need``, tokens…)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _root_conftest() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_chatgw_root_conftest_migrate", ROOT / "tests" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


root = _root_conftest()
