"""``chatgw migrate sessions`` against real Redis (dbs 14 and 15)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.cli import main
from gateway.migrate import sessions as mig
from modules.common.jsfmt import js_dumps
from modules.common.sessions import WireSession, parse_record, to_stored

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Run:
    """``chatgw migrate sessions ARGS`` in process -> (exit code, stdout, stderr)."""

    def go(*argv: str, state: str = "state.json") -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(["migrate", "sessions", *argv, "--state", str(tmp_path / state)])
        out, err = capsys.readouterr()
        return rc, out, err

    return go


def wire(sid: str, uid: str = "u-1", **kw: Any) -> WireSession:
    base: dict[str, Any] = {
        "agent": "ai",
        "context": {"lang": "zh", "2": "x"},
        "metadata": {"channel": "web"},
        "created_at": "2024-01-01T10:00:00.123Z",
        "updated_at": "2024-01-02T11:30:00.456Z",
    }
    base.update(kw)
    return WireSession(session_id=sid, user_id=uid, **base)


def legacy_raw(s: WireSession) -> bytes:
    return js_dumps(to_stored(s, "legacy"))


def python_raw(s: WireSession) -> bytes:
    """A record as the Python modules write it (isoformat with micros and +00:00)."""
    return js_dumps(to_stored(s, "python"))


def seed(r: redis.Redis, n: int, shape: str = "legacy", ttl_ms: int | None = 3_600_000) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        s = wire(f"s{i:04d}", uid=f"u-{i % 7}", agent="human" if i % 2 else "ai")
        raw = legacy_raw(s) if shape == "legacy" else python_raw(s)
        pipe.set(f"session:{s.session_id}", raw, px=ttl_ms)
        pipe.zadd(f"user_sessions:{s.user_id}", {s.session_id: s.created_ms})
        if ttl_ms:
            pipe.pexpire(f"user_sessions:{s.user_id}", ttl_ms)
    pipe.execute()


def sessions_of(r: redis.Redis) -> dict[bytes, bytes]:
    return {k: r.get(k) for k in r.scan_iter(match="session:*")}  # type: ignore[misc]


def read(r: redis.Redis, sid: str) -> dict[str, Any]:
    return json.loads(r.get(f"session:{sid}"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shapes


def test_legacy_records_in_place_become_python_shape_with_the_same_wire_session(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    seed(src, 30)
    before = {k: parse_record(v.decode(), k.decode()[8:]) for k, v in sessions_of(src).items()}
    rc, out, _ = run("--redis-url", src_url, "--to", "python")
    assert rc == 0, out
    assert "converted to python: 30" in out
    after = sessions_of(src)
    for k, v in after.items():
        obj = json.loads(v)
        assert set(obj) == set(mig.PYTHON_FIELDS)
        assert obj["created_at"] == "2024-01-01T10:00:00.123Z"  # ms + Z, kept exactly
        assert parse_record(v.decode(), k.decode()[8:]) == before[k]


def test_python_records_to_legacy_in_place_equal_what_the_legacy_side_writes(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    s = wire("p1", created_at="2024-01-01T10:00:00.123Z", updated_at="2024-03-01T00:00:00.999Z")
    src.set("session:p1", python_raw(s))  # "…:00.123000+00:00"
    assert "+00:00" in src.get("session:p1").decode()  # type: ignore[union-attr]
    rc, out, _ = run("--redis-url", src_url, "--to", "legacy")
    assert rc == 0, out
    assert src.get("session:p1") == legacy_raw(s)


def test_legacy_python_legacy_round_trip_is_byte_identical(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    seed(src, 20)
    original = sessions_of(src)
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    assert sessions_of(src) != original
    assert run("--redis-url", src_url, "--to", "legacy")[0] == 0
    assert sessions_of(src) == original


def test_created_at_is_kept_to_the_millisecond_from_any_stored_form(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    src.set("session:e", '{"user_id":"u","created_at":1704103200.123,"agent_type":"ai"}')
    src.set("session:o", '{"userId":"u","createdAt":"2024-01-01T12:00:00.5+02:00"}')
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    assert read(src, "o")["created_at"] == "2024-01-01T10:00:00.500Z"
    assert read(src, "o")["updated_at"] == "2024-01-01T10:00:00.500Z"
    assert run("--redis-url", src_url, "--to", "legacy")[0] == 0
    assert read(src, "e")["createdAt"] == "2024-01-01T10:00:00.123Z"


def test_unknown_top_level_fields_are_carried_over(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    src.set("session:x", b'{"userId":"u","createdAt":"2024-01-01T00:00:00.000Z","tenant":"t9"}')
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    assert read(src, "x")["tenant"] == "t9"


# --------------------------------------------------------------------------- TTLs


def test_in_place_keeps_the_expiry_to_the_millisecond(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    seed(src, 50, ttl_ms=5_000_000)
    expiry = {k: src.pexpiretime(k) for k in sessions_of(src)}
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    assert {k: src.pexpiretime(k) for k in sessions_of(src)} == expiry


def test_keys_without_ttl_stay_without_in_place_and_in_the_target(
    src: redis.Redis, dst: redis.Redis, src_url: str, dst_url: str, run: Run
) -> None:
    seed(src, 5, ttl_ms=None)
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    assert all(src.pttl(k) == -1 for k in sessions_of(src))
    assert run("--redis-url", src_url, "--to", "legacy", "--target-url", dst_url)[0] == 0
    assert len(sessions_of(dst)) == 5
    assert all(dst.pttl(k) == -1 for k in sessions_of(dst))
    assert all(dst.pttl(k) == -1 for k in dst.scan_iter(match="user_sessions:*"))


@pytest.mark.parametrize("to", ["python", "legacy"])
def test_into_another_db_copies_records_and_indexes_with_scores_and_ttls(
    src: redis.Redis, dst: redis.Redis, src_url: str, dst_url: str, run: Run, to: str
) -> None:
    seed(src, 40, shape="legacy" if to == "python" else "python", ttl_ms=4_000_000)
    source = sessions_of(src)
    rc, out, _ = run("--redis-url", src_url, "--to", to, "--target-url", dst_url)
    assert rc == 0, out
    assert sessions_of(src) == source  # the source is only read
    target = sessions_of(dst)
    assert set(target) == set(source)
    for k, v in target.items():
        sid = k.decode()[8:]
        assert parse_record(v.decode(), sid) == parse_record(source[k].decode(), sid)
        assert mig.shape_of(json.loads(v)) == to
        assert abs(dst.pttl(k) - src.pttl(k)) <= 50
    for i in range(7):
        idx = f"user_sessions:u-{i}"
        assert dst.zrange(idx, 0, -1, withscores=True) == src.zrange(idx, 0, -1, withscores=True)
        assert abs(dst.pttl(idx) - src.pttl(idx)) <= 50
    rc, out, _ = run("--redis-url", src_url, "--to", to, "--target-url", dst_url, "--verify")
    assert rc == 0, out
    assert "0 mismatches" in out


# --------------------------------------------------------------------------- idempotence, dry run


def test_second_run_changes_nothing_and_says_so(
    src: redis.Redis, dst: redis.Redis, src_url: str, dst_url: str, run: Run
) -> None:
    seed(src, 25)
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    first = sessions_of(src)
    rc, out, _ = run("--redis-url", src_url, "--to", "python")
    assert rc == 0
    assert "converted to python: 0" in out and "already in the python shape: 25" in out
    assert "nothing to change" in out
    assert sessions_of(src) == first
    assert run("--redis-url", src_url, "--to", "legacy", "--target-url", dst_url)[0] == 0
    rc, out, _ = run("--redis-url", src_url, "--to", "legacy", "--target-url", dst_url)
    assert rc == 0 and "nothing to change" in out and "target already identical 25" in out


def test_dry_run_changes_nothing_and_shows_elided_samples(
    src: redis.Redis, src_url: str, run: Run, tmp_path: Path
) -> None:
    big = {"notes": "y" * 500}
    src.set("session:big", legacy_raw(wire("big", context=big)), px=100_000)
    seed(src, 10)
    before = sessions_of(src)
    rc, out, _ = run("--redis-url", src_url, "--to", "python", "--dry-run", "--samples", "20")
    assert rc == 0
    assert "would convert to python: 11" in out
    assert out.count("sample session:") == 11
    assert "y" * 201 not in out and "chars elided" in out
    assert sessions_of(src) == before
    assert not (tmp_path / "state.json").exists()


# --------------------------------------------------------------------------- verify


def test_verify_catches_a_tampered_target_record(
    src: redis.Redis, dst: redis.Redis, src_url: str, dst_url: str, run: Run
) -> None:
    seed(src, 10)
    assert run("--redis-url", src_url, "--to", "python", "--target-url", dst_url)[0] == 0
    obj = read(dst, "s0003")
    obj["context"]["lang"] = "en"
    dst.set("session:s0003", json.dumps(obj), keepttl=True)
    dst.pexpire("session:s0005", 10_000)
    dst.delete("session:s0007")
    rc, out, err = run(
        "--redis-url", src_url, "--to", "python", "--target-url", dst_url, "--verify"
    )
    assert rc == 1
    assert "3 mismatches" in out
    assert "mismatch session:s0003: differs from its source" in err
    assert "mismatch session:s0005: TTL" in err
    assert "mismatch session:s0007: missing in the target" in err


def test_verify_in_place_reports_a_record_not_in_the_target_shape(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    seed(src, 5)
    assert run("--redis-url", src_url, "--to", "python")[0] == 0
    assert run("--redis-url", src_url, "--to", "python", "--verify")[0] == 0
    src.set("session:s0002", legacy_raw(wire("s0002", uid="u-2")), keepttl=True)
    rc, _, err = run("--redis-url", src_url, "--to", "python", "--verify")
    assert rc == 1
    assert "mismatch session:s0002: not in the python shape" in err


# --------------------------------------------------------------------------- resume


def test_resume_after_an_interruption_ends_like_an_uninterrupted_run(
    src: redis.Redis, dst: redis.Redis, src_url: str, dst_url: str, run: Run, tmp_path: Path
) -> None:
    seed(src, 300, ttl_ms=None)
    seed(dst, 300, ttl_ms=None)
    rc, out, _ = run(
        "--redis-url", src_url, "--to", "python", "--batch", "20", "--max-batches", "3"
    )
    assert rc == 9, out
    assert "run again with --resume" in out
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["cursor"] != 0 and not state["done"] and state["counters"]["batches"] == 3
    partly = sessions_of(src)
    assert 0 < sum(b'"user_id"' in v for v in partly.values()) < 300
    rc, out, _ = run("--redis-url", src_url, "--to", "python", "--batch", "20", "--resume")
    assert rc == 0, out
    assert "resuming from" in out
    rc2, _, _ = run("--redis-url", dst_url, "--to", "python", "--batch", "20", state="other.json")
    assert rc2 == 0
    assert sessions_of(src) == sessions_of(dst)
    done = json.loads((tmp_path / "state.json").read_text())
    assert done["done"] and done["counters"]["converted"] == 300


# --------------------------------------------------------------------------- malformed, races


def test_malformed_records_are_reported_with_their_key_and_left_untouched(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    bad = {
        "session:nojson": b"{nope",
        "session:array": b"[1,2]",
        "session:nouser": b'{"createdAt":"2024-01-01T00:00:00Z"}',
        "session:badtime": b'{"userId":"u","createdAt":"yesterday"}',
        "session:badupd": b'{"user_id":"u","created_at":"2024-01-01T00:00:00Z","updated_at":"x"}',
        "session:ctx": b'{"userId":"u","createdAt":"2024-01-01T00:00:00Z","context":[1]}',
        "session:agent": b'{"userId":"u","createdAt":"2024-01-01T00:00:00Z","agent":7}',
    }
    for k, v in bad.items():
        src.set(k, v, px=600_000)
    expiry = {k: src.pexpiretime(k) for k in bad}
    seed(src, 3)
    rc, out, err = run("--redis-url", src_url, "--to", "python")
    assert rc == 8
    assert "skipped malformed: 7" in out and "converted to python: 3" in out
    for k in bad:
        assert f"malformed {k}:" in err
    assert 'malformed session:badtime: createdAt="yesterday" is not a readable time' in err
    assert "malformed session:ctx: context is a list, not an object" in err
    for k, v in bad.items():
        assert src.get(k) == v
        assert src.pexpiretime(k) == expiry[k]


def expire_now(r: redis.Redis, key: str) -> None:
    """Let ``key`` run out of time between the migration's read and its write."""
    r.pexpire(key, 5)
    time.sleep(0.05)


def _delay_writes(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], None]) -> None:
    original = getattr(mig.SessionMigrator, name)

    def delayed(self: mig.SessionMigrator, *args: Any) -> None:
        action()
        original(self, *args)

    monkeypatch.setattr(mig.SessionMigrator, name, delayed)


def test_a_key_expiring_mid_run_is_not_resurrected_in_place(
    src: redis.Redis, src_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    src.set("session:short", legacy_raw(wire("short")), px=600_000)
    src.set("session:long", legacy_raw(wire("long")), px=600_000)
    _delay_writes(monkeypatch, "_write_inplace", lambda: expire_now(src, "session:short"))
    rc, out, _ = run("--redis-url", src_url, "--to", "python")
    assert rc == 0, out
    assert "expired meanwhile: 1" in out and "converted to python: 1" in out
    assert src.exists("session:short") == 0
    assert b'"user_id"' in src.get("session:long")  # type: ignore[operator]


def test_a_key_expiring_mid_run_is_not_resurrected_in_the_target(
    src: redis.Redis, dst: redis.Redis, src_url: str, dst_url: str, run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    src.set("session:short", legacy_raw(wire("short")), px=600_000)
    src.set("session:long", legacy_raw(wire("long")), px=600_000)
    # the read sees 100 ms left; the write comes 300 ms later
    _delay_writes(monkeypatch, "_batch", lambda: src.pexpire("session:short", 100))
    _delay_writes(monkeypatch, "_write_target", lambda: time.sleep(0.3))
    rc, out, _ = run("--redis-url", src_url, "--to", "python", "--target-url", dst_url)
    assert rc == 0, out
    assert "expired meanwhile: 1" in out
    assert dst.exists("session:short") == 0 and dst.exists("session:long") == 1


def test_a_record_rewritten_by_a_live_service_mid_run_is_left_as_written(
    src: redis.Redis, src_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    src.set("session:hot", legacy_raw(wire("hot")), px=600_000)
    fresh = legacy_raw(wire("hot", agent="human", updated_at="2025-01-01T00:00:00.000Z"))
    _delay_writes(monkeypatch, "_write_inplace", lambda: src.set("session:hot", fresh, ex=86400))
    rc, out, err = run("--redis-url", src_url, "--to", "python")
    assert rc == 8
    assert "changed meanwhile (left alone): 1" in out
    assert "changed meanwhile session:hot" in err
    assert src.get("session:hot") == fresh


# --------------------------------------------------------------------------- output


def test_password_in_the_url_is_printed_redacted(src: redis.Redis, src_url: str, run: Run) -> None:
    url = src_url.replace("redis://", "redis://:hunter2@")
    rc, out, err = run("--redis-url", url, "--to", "python", "--dry-run")
    assert "hunter2" not in out + err
    if rc == 0:  # a Redis without requirepass accepts (and ignores) AUTH with a password
        assert ":***@" in out
    else:
        assert rc == 1 and ":***@" in err


def test_progress_bar_renders_with_carriage_returns_when_forced(
    src: redis.Redis, src_url: str, run: Run
) -> None:
    seed(src, 50)
    rc, _, err = run("--redis-url", src_url, "--to", "python", "--progress", "--batch", "10")
    assert rc == 0
    assert "\r[" in err and "keys/s" not in err and "/s ETA" in err and "100.0%" in err
