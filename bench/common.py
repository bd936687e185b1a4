"""What every bench suite shares: the result row, the run's metadata, the results file.

Every suite writes ``bench/results/<name>.json`` as ``{"name", "rows", "meta"}`` with rows
made by :func:`row`; ``bench/summary.py`` prints them all as one table.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports of 127.0.0.1 (each socket held until all are picked: one at
    a time, the same port comes back about once in 17 000 pairs, and ``chatgw serve``
    refuses a client port that is also its admin port)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def row(
    figure: str,
    value: float,
    unit: str,
    target: str = "–",
    *,
    reference: str | None = None,
    ref_value: float | None = None,
    ok: bool | None = None,
) -> dict[str, Any]:
    """One figure: ``ok`` is PASS/MISS against ``target``, ``None`` for information."""
    return {"figure": figure, "value": round(value, 4), "unit": unit, "reference": reference,
            "ref_value": None if ref_value is None else round(ref_value, 4),
            "target": target, "pass": ok}  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()  # (nginx -v prints on stderr)


def run_meta(load_before: tuple[float, float, float], *tools: str) -> dict[str, Any]:
    """When and where a suite ran, and the versions of ``tools`` ("node", "nginx")."""
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "python": platform.python_version(),
    }
    flags = {"node": "--version", "nginx": "-v"}
    for tool in tools:
        meta[tool] = _version([tool, flags.get(tool, "--version")])
    return meta


def write_results(name: str, data: dict[str, Any]) -> Path:
    """``bench/results/<name>.json`` (``data`` holds at least ``rows`` and ``meta``)."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"name": name, **data}, indent=2, ensure_ascii=False) + "\n")
    return out


def summarise_stacks(raw: Path, top: int = 25) -> dict[str, Any]:
    """py-spy's ``--format raw`` file (collapsed stacks) -> the sample count and the top
    frames by self and by total share, in % of the samples (paths shortened)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        samples += count
        frames = [re.sub(r" \((.*/)?(site-packages/)?", " (", f) for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count

    def share(c: collections.Counter[str]) -> list[tuple[float, str]]:
        return [(round(100 * n / max(samples, 1), 1), f) for f, n in c.most_common(top)]

    return {"samples": samples, "self": share(own), "total": share(total)}
