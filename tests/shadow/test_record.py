"""Sampled, sanitised recording of real traffic (issue 7 §6): a replay script, no secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from shadow_helpers import ShadowGateway, routes_text

SECRET = "record-test-secret-0123456789-0123456789"


def test_recording_writes_replayable_lines_without_credentials(
    shadow_gateway: Callable[..., ShadowGateway], test_upstream: str, tmp_path: Path
) -> None:
    out = tmp_path / "traffic.jsonl"
    text = f"""
settings:
  access_log: false
  record: {{path: "{out}", percent: 100, redact_fields: [password]}}
upstreams:
  legacy: {{url: "{test_upstream}"}}
routes:
  - name: sessions
    match: {{prefix: /api/sessions}}
    legacy: legacy
"""
    gw = shadow_gateway(text)
    token = jwt.encode({"sub": "u-rec", "role": "customer", "exp": int(time.time()) + 600}, SECRET)
    with gw.client() as c:
        c.get(
            "/api/sessions/abc?token=" + token,
            headers={"Authorization": f"Bearer {token}", "Cookie": "sid=s3cr3t"},
        )
        c.post(
            "/api/sessions",
            json={"userId": "u-rec", "password": "hunter2"},
            headers={"Authorization": f"Bearer {token}"},
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        not out.exists() or len(out.read_text().splitlines()) < 2
    ):
        time.sleep(0.1)
    raw = out.read_text()
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [(x["kind"], x["request"]["method"]) for x in lines] == [
        ("http", "GET"),
        ("http", "POST"),
    ]
    # no credential of any kind reaches the file...
    for secret in (token, "s3cr3t", "hunter2"):
        assert secret not in raw
    # ...and the bearer token became a placeholder replay can mint again
    assert lines[0]["request"]["headers"]["authorization"] == "Bearer {{token:customer:u-rec}}"
    assert lines[0]["recorded"]["route"] == "sessions"


def test_a_recording_that_fails_costs_the_copy_and_counts_it(
    shadow_gateway: Callable[..., ShadowGateway], test_upstream: str
) -> None:
    # /dev/full: every write fails (ENOSPC). The recording comes before the copy, so the
    # copy is never made; it must still be counted (error), in either isolation.
    gw = shadow_gateway(
        routes_text(
            test_upstream, "{percent: 100}", settings="  record: {path: /dev/full, percent: 100}"
        )
    )
    with gw.client() as c:
        for i in range(3):
            assert c.get(f"/api/items/{i}").status_code == 200
    counts = gw.wait_counts(3)
    assert {k: v for k, v in counts.items() if v} == {"error": 3}
