"""The weight stores: versioned atomic changes, restarts, an append-only audit trail."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from control_helpers import run

from gateway.control.store import (
    AuditEntry,
    Change,
    LocalWeightStore,
    Ramp,
    RedisWeightStore,
    WeightStore,
    redact,
    store_from_env,
)
from gateway.errors import StoreUnavailable

StoreFactory = Callable[[], WeightStore]


@pytest.fixture(params=["redis", "local"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each call is a new store instance on the same state (a restarted replica)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("prefix")
        return lambda: RedisWeightStore(url, prefix)
    return lambda: LocalWeightStore(str(tmp_path / "state"))


def entry(route: str, to: float, reason: str = "test") -> AuditEntry:
    return AuditEntry("alice", "api", "set", route, 0.0, to, reason)


def test_empty_store_is_version_zero_without_overrides(make_store: StoreFactory) -> None:
    async def go() -> None:
        store = make_store()
        snap = await store.snapshot()
        assert (snap.version, dict(snap.weights), dict(snap.ramps)) == (0, {}, {})
        assert await store.audit() == []
        await store.close()

    run(go())


def test_each_commit_bumps_the_version_by_one(make_store: StoreFactory) -> None:
    async def go() -> None:
        store = make_store()
        v1 = await store.commit(Change({"alpha": 2500}, {}, [entry("alpha", 25)]))
        v2 = await store.commit(Change({"beta": 100, "alpha": None}, {}, [entry("beta", 1)]))
        assert (v1, v2) == (1, 2)
        assert await store.version() == 2
        snap = await store.snapshot()
        assert snap.version == 2 and dict(snap.weights) == {"beta": 100}
        await store.close()

    run(go())


def test_state_survives_a_new_store_instance(make_store: StoreFactory) -> None:
    ramp = Ramp("alpha", (100, 500), 0.2, "host:9000", "alice", "canary", 1.0)

    async def go() -> None:
        first = make_store()
        await first.commit(Change({"alpha": 500}, {"alpha": ramp}, [entry("alpha", 5)]))
        await first.close()
        second = make_store()
        snap = await second.snapshot()
        assert snap.version == 1
        assert dict(snap.weights) == {"alpha": 500}
        assert snap.ramps["alpha"] == ramp
        assert [e.reason for e in await second.audit()] == ["test"]
        await second.close()

    run(go())


def test_audit_is_appended_and_read_newest_first(make_store: StoreFactory) -> None:
    async def go() -> None:
        store = make_store()
        for i in range(5):
            await store.commit(Change({"alpha": i * 100}, {}, [entry("alpha", i, f"r{i}")]))
        await store.record(AuditEntry("file-watch", "reload", "reload", "*", None, None, "x"))
        await store.commit(Change({"beta": 1}, {}, [entry("beta", 0.01, "b")]))
        everything = await store.audit()
        assert [e.reason for e in everything] == ["b", "x", "r4", "r3", "r2", "r1", "r0"]
        assert len({e.id for e in everything}) == 7 and all(e.id for e in everything)
        assert [e.reason for e in await store.audit(limit=2)] == ["b", "x"]
        # A route's trail includes config reloads ("*"), not other routes.
        assert [e.reason for e in await store.audit(route="alpha", limit=3)] == ["x", "r4", "r3"]
        again = await store.audit()
        assert again == everything  # reading changes nothing
        await store.close()

    run(go())


def test_local_store_leaves_one_valid_json_file(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def go() -> None:
        store = LocalWeightStore(str(state))
        for i in range(20):
            await store.commit(Change({"alpha": i}, {}, [entry("alpha", i / 100)]))

    run(go())
    names = sorted(os.listdir(state))
    assert names == ["audit.jsonl", "control.json", "control.lock"]  # no temporary left over
    body = json.loads((state / "control.json").read_text())
    assert body["version"] == 20 and body["weights"] == {"alpha": 19}
    assert len((state / "audit.jsonl").read_text().splitlines()) == 20


def test_redis_unreachable_commit_refused_with_a_clear_error(tmp_path: Path) -> None:
    from gw_helpers import free_port

    store = RedisWeightStore(f"redis://:s3cret@127.0.0.1:{free_port()}/0", "x:", timeout=0.5)

    async def go() -> None:
        with pytest.raises(StoreUnavailable) as info:
            await store.commit(Change({"alpha": 1}, {}, []))
        message = str(info.value)
        assert "unreachable" in message and "nothing was changed" in message
        assert "s3cret" not in message  # the password is never shown
        with pytest.raises(StoreUnavailable):
            await store.snapshot()
        await store.close()

    run(go())


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://u:p@h:1/2") == "redis://u:***@h:1/2"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_store_from_env_prefers_chatgw_redis_url(tmp_path: Path) -> None:
    s = store_from_env({"CHATGW_REDIS_URL": "redis://a/1", "REDIS_URL": "redis://b/2"})
    assert isinstance(s, RedisWeightStore) and s.where == "redis://a/1" and s.prefix == "chatgw:"
    s2 = store_from_env({"REDIS_URL": "redis://b/2", "CHATGW_CONTROL_PREFIX": "p:"})
    assert isinstance(s2, RedisWeightStore) and s2.prefix == "p:" and s2.channel == "p:control"
    s3 = store_from_env({"CHATGW_STATE_DIR": str(tmp_path)})
    assert isinstance(s3, LocalWeightStore) and s3.where == str(tmp_path)


def test_change_conditional_on_a_stopped_ramp_is_not_stored(make_store: StoreFactory) -> None:
    from gateway.control.store import RampGone

    ramp = Ramp("alpha", (100, 500), 0.2, "host:9000", "alice", "canary", 1.0)

    async def go() -> None:
        store = make_store()
        await store.commit(Change({}, {"alpha": ramp}, []))
        step = Change({"alpha": 100}, {"alpha": ramp}, [], if_ramp=("alpha", 1.0))
        assert await store.commit(step) == 2
        await store.commit(Change({}, {"alpha": None}, []))  # stopped by another replica
        with pytest.raises(RampGone):
            await store.commit(step)
        snap = await store.snapshot()
        assert snap.version == 3 and snap.ramps == {} and dict(snap.weights) == {"alpha": 100}
        await store.close()

    run(go())
