"""The controller: store snapshots applied to a gateway, by message and by reconcile, and
the last known weights kept while the store is down."""

from __future__ import annotations

import asyncio

import pytest
from control_helpers import OwnRedis, eventually, gateway, run

from gateway.control.controller import Controller
from gateway.control.store import AuditEntry, Change, RedisWeightStore
from gateway.errors import StoreUnavailable


def _entry(route: str) -> AuditEntry:
    return AuditEntry("t", "api", "set", route, None, None, "test")


def _basis(ctl: Controller, route: str) -> int:
    table = ctl.gateway.table
    r = table.config.route(route)
    assert r is not None
    return table.basis(r)


def test_change_published_by_one_replica_applied_by_another(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        # Reconcile every 30 s: only the channel can bring the change in time.
        a = Controller(gateway(), RedisWeightStore(redis_url, prefix), reconcile_interval=30)
        b = Controller(gateway(), RedisWeightStore(redis_url, prefix), reconcile_interval=30)
        await a.start()
        await b.start()
        await asyncio.sleep(0.2)  # b's subscription is in place
        version = await a.store.commit(Change({"alpha": 4200}, {}, [_entry("alpha")]))
        took = await eventually(lambda: b.snapshot.version == version, timeout=2)
        assert _basis(b, "alpha") == 4200 and took < 1
        assert b.gateway.metrics.new_percent.labels("alpha")._value.get() == 42
        await a.stop()
        await b.stop()

    run(go())


def test_missed_message_caught_by_reconcile(redis_url: str, prefix: str, redis_client) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        ctl = Controller(gateway(), RedisWeightStore(redis_url, prefix), reconcile_interval=0.2)
        await ctl.start()
        # A change written without its announcement (as if the message were lost).
        redis_client.hset(prefix + "weights", "beta", 700)
        redis_client.incr(prefix + "version")
        await eventually(lambda: _basis(ctl, "beta") == 700, timeout=2)
        assert ctl.snapshot.version == 1 and not ctl.degraded
        await ctl.stop()

    run(go())


def test_weights_of_unknown_routes_are_ignored_not_fatal(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        ctl = Controller(gateway(), RedisWeightStore(redis_url, prefix), reconcile_interval=0.2)
        await ctl.store.commit(Change({"gone": 100, "alpha": 300}, {}, []))
        await ctl.start()
        assert dict(ctl.gateway.table.weights) == {"alpha": 300}
        await ctl.stop()

    run(go())


def test_store_down_keeps_last_weights_flags_degraded_and_refuses_writes(
    own_redis: OwnRedis,
) -> None:
    async def go() -> None:
        store = RedisWeightStore(own_redis.url, "d:", timeout=0.3)
        ctl = Controller(gateway(), store, reconcile_interval=0.1)
        await ctl.start()
        await store.commit(Change({"alpha": 2500}, {}, [_entry("alpha")]))
        await eventually(lambda: _basis(ctl, "alpha") == 2500)
        assert (
            not ctl.degraded
            and ctl.gateway.metrics.registry.get_sample_value("gateway_control_store_up") == 1
        )

        own_redis.stop()
        await eventually(lambda: ctl.degraded, timeout=3)
        assert _basis(ctl, "alpha") == 2500  # the last known weights keep serving
        assert "unreachable" in ctl.error
        assert ctl.gateway.metrics.registry.get_sample_value("gateway_control_store_up") == 0
        with pytest.raises(StoreUnavailable, match="nothing was changed"):
            await store.commit(Change({"alpha": 0}, {}, [_entry("alpha")]))
        assert _basis(ctl, "alpha") == 2500

        # Redis back, empty (no persistence): the fleet follows the store, degraded clears.
        own_redis.start()
        await eventually(lambda: not ctl.degraded, timeout=5)
        assert ctl.snapshot.version == 0 and _basis(ctl, "alpha") == 1000  # routes.yaml share
        await ctl.stop()

    run(go())


def test_start_with_store_down_serves_routes_yaml_and_is_degraded(own_redis: OwnRedis) -> None:
    own_redis.stop()

    async def go() -> None:
        ctl = Controller(gateway(), RedisWeightStore(own_redis.url, "d:", timeout=0.3))
        await ctl.start()
        assert ctl.degraded and _basis(ctl, "alpha") == 1000
        await ctl.stop()

    run(go())
