"""One table of every figure the bench suites wrote (``bench/results/*.json``).

``bench/run`` calls it last; run it alone to reprint the latest figures::

    .venv/bin/python bench/summary.py [--markdown]

Each suite writes ``{"name", "rows": [{"figure", "value", "unit", "reference",
"ref_value", "target", "pass"}], "meta"}``; rows whose ``pass`` is null are information.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ["http", "workers", "shadow", "shadow_pinned", "shadow_paced", "websocket", "large_body"]


def load(names: list[str]) -> list[tuple[str, dict[str, Any] | None]]:
    out: list[tuple[str, dict[str, Any] | None]] = []
    for name in names:
        path = RESULTS / f"{name}.json"
        out.append((name, json.loads(path.read_text()) if path.exists() else None))
    return out


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 10:
        return f"{v:,.2f}"
    return f"{v:,.0f}"


def render(suites: list[tuple[str, dict[str, Any] | None]], markdown: bool) -> str:
    header = ("suite", "figure", "value", "reference", "target", "")
    rows: list[tuple[str, ...]] = []
    for name, data in suites:
        if data is None:
            rows.append((name, "(no results: suite not run or failed)", "", "", "", "????"))
            continue
        for r in data.get("rows", []):
            ref = "" if r.get("reference") is None else str(r["reference"])
            if r.get("ref_value") is not None:
                ref += f" {_num(r['ref_value'])}"
            mark = {True: "PASS", False: "MISS", None: ""}[r.get("pass")]
            rows.append((name, r["figure"], f"{_num(r['value'])} {r['unit']}", ref.strip(),
                         r.get("target", ""), mark))  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (for README)")
    ap.add_argument("--suites", default=",".join(SUITES))
    args = ap.parse_args()
    suites = load([s for s in args.suites.split(",") if s])
    print(render(suites, args.markdown))
    results = [r.get("pass") for _, d in suites if d for r in d.get("rows", [])]
    missing = [n for n, d in suites if d is None]
    print(f"\n{results.count(True)} PASS, {results.count(False)} MISS"
          + (f", no results from: {', '.join(missing)}" if missing else ""))  # fmt: skip
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
