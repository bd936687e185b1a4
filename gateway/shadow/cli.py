"""``chatgw replay …`` and ``chatgw shadow report``: the shadow commands of the CLI.

``chatgw shadow report [--admin URL] [--route NAME] [--samples N] [--json]`` reads
``/api/shadow`` and ``/api/shadow/samples`` of a running gateway (token from
``GATEWAY_ADMIN_TOKEN`` or ``--token``) and prints each route's match rate and the latest
mismatch samples. Exit 1 when the gateway cannot be asked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .replay import add_command as add_replay


def _fmt_rate(v: Any) -> str:
    return "-" if v is None else f"{v * 100:.1f} %"


def cmd_report(args: argparse.Namespace) -> int:
    import httpx

    token = args.token or os.environ.get("GATEWAY_ADMIN_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"}
    base = args.admin.rstrip("/")
    try:
        status = httpx.get(f"{base}/api/shadow", headers=headers, timeout=5, trust_env=False)
        params: dict[str, Any] = {"limit": args.samples}
        if args.route:
            params["route"] = args.route
        samples = httpx.get(
            f"{base}/api/shadow/samples", headers=headers, params=params, timeout=5, trust_env=False
        )
    except httpx.HTTPError as exc:
        print(f"chatgw shadow report: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    for r in (status, samples):
        if r.status_code != 200:
            msg = r.json().get("error", {}).get("message", r.text) if r.content else r.status_code
            print(f"chatgw shadow report: {r.status_code}: {msg}", file=sys.stderr)
            return 1
    data, items = status.json(), samples.json()["data"]
    if args.json:
        print(json.dumps({"status": data, "samples": items}, indent=2))
        return 0
    rows = [("ROUTE", "% MIRRORED", "MATCH", "MISMATCH", "ERROR", "DROPPED", "TOO LARGE",
             "MATCH RATE", "LAST 5 MIN")]  # fmt: skip
    for name, r in data["routes"].items():
        if args.route and name != args.route:
            continue
        c = r.get("counts") or {}
        window = r.get("window") or {}
        rows.append((
            name, f"{r['percent']:g}", *(str(c.get(k, 0)) for k in
            ("match", "mismatch", "error", "dropped", "too_large")),
            _fmt_rate(r.get("match_rate")), _fmt_rate(window.get("match_rate")),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    q = data.get("queue") or {}
    print(f"queue {q.get('depth', 0)}/{q.get('size', 0)}; {data.get('samples', 0)} samples kept")
    for s in items:
        print(f"\n{s['route']}: {s['method']} {s['target']} (primary {s['primary_side']}: "
              f"{s['primary']['status']}, shadow {s['shadow']['status']})")  # fmt: skip
        for d in s["differences"]:
            print(f"  {d['path']}: {d['primary']!r} != {d['shadow']!r}")
        if s.get("noisy"):
            print(f"  noisy: {', '.join(s['noisy'])}")
    return 0


def add_commands(sub: Any) -> None:
    add_replay(sub)
    sh = sub.add_parser("shadow", help="shadow traffic results")
    shsub = sh.add_subparsers(dest="shadow_cmd", required=True)
    rep = shsub.add_parser("report", help="match rates and mismatch samples of a gateway")
    rep.add_argument("--admin", default="http://127.0.0.1:9000", help="admin listener URL")
    rep.add_argument("--token", help="admin token (default: GATEWAY_ADMIN_TOKEN)")
    rep.add_argument("--route", help="one route only")
    rep.add_argument("--samples", type=int, default=5, help="how many samples (default 5)")
    rep.add_argument("--json", action="store_true", help="print the raw JSON")
    rep.set_defaults(func=cmd_report)
