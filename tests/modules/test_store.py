"""One suite, both stores: the in-process store must behave as Redis does."""

import asyncio
import uuid

import pytest

from modules.common.store import MemoryStore, RedisStore, StoreError, open_store


def run(backend_url, fn):
    async def main():
        async with open_store(backend_url) as store:
            await fn(store, "t-" + uuid.uuid4().hex[:10] + ":")

    asyncio.run(main())


def test_set_get_delete_round_trip(backend_url):
    async def body(s, p):
        assert await s.get(p + "k") is None
        assert await s.set(p + "k", "välue")
        assert await s.get(p + "k") == "välue"
        assert await s.mget([p + "k", p + "missing"]) == ["välue", None]
        assert await s.exists(p + "k")
        assert await s.delete(p + "k", p + "missing") == 1
        assert await s.get(p + "k") is None

    run(backend_url, body)


def test_set_with_ex_and_px_sets_ttl_and_plain_set_clears_it(backend_url):
    async def body(s, p):
        await s.set(p + "a", "1", ex=100)
        assert 99_000 < await s.pttl(p + "a") <= 100_000
        await s.set(p + "b", "1", px=5000)
        assert 4_000 < await s.pttl(p + "b") <= 5_000
        await s.set(p + "a", "2")
        assert await s.pttl(p + "a") == -1
        assert await s.pttl(p + "none") == -2

    run(backend_url, body)


def test_expired_key_is_gone(backend_url):
    async def body(s, p):
        await s.set(p + "k", "v", px=50)
        await asyncio.sleep(0.12)
        assert await s.get(p + "k") is None
        assert await s.pttl(p + "k") == -2

    run(backend_url, body)


def test_expire_and_pexpire_only_touch_existing_keys(backend_url):
    async def body(s, p):
        assert not await s.expire(p + "none", 10)
        await s.set(p + "k", "v")
        assert await s.expire(p + "k", 10)
        assert 9_000 < await s.pttl(p + "k") <= 10_000
        assert await s.pexpire(p + "k", 2000)
        assert 1_000 < await s.pttl(p + "k") <= 2_000

    run(backend_url, body)


def test_sorted_set_orders_by_score_then_member(backend_url):
    async def body(s, p):
        k = p + "z"
        assert await s.zadd(k, {"b": 2, "a": 2, "c": 1}) == 3
        assert await s.zadd(k, {"c": 3}) == 0
        assert await s.zrange(k, 0, -1) == ["a", "b", "c"]
        assert await s.zrevrange(k, 0, -1) == ["c", "b", "a"]
        assert await s.zrevrange(k, 0, 0) == ["c"]
        assert await s.zrange_withscores(k, -2, -1) == [("b", 2.0), ("c", 3.0)]
        assert await s.zrevrange_withscores(k, 1, 5) == [("b", 2.0), ("a", 2.0)]
        assert await s.zscore(k, "c") == 3.0
        assert await s.zscore(k, "x") is None
        assert await s.zrem(k, "a", "x") == 1
        assert await s.zrem(k, "b", "c") == 2
        assert await s.exists(k) is False

    run(backend_url, body)


def test_list_push_range_trim_like_redis(backend_url):
    async def body(s, p):
        k = p + "l"
        assert await s.rpush(k, *[str(i) for i in range(10)]) == 10
        assert await s.lrange(k, -3, -1) == ["7", "8", "9"]
        assert await s.lrange(k, 8, 100) == ["8", "9"]
        assert await s.lrange(k, 5, 2) == []
        assert await s.ltrim(k, -4, -1)
        assert await s.lrange(k, 0, -1) == ["6", "7", "8", "9"]
        assert await s.llen(k) == 4
        await s.ltrim(k, 5, 1)
        assert await s.exists(k) is False

    run(backend_url, body)


def test_transaction_runs_all_commands_in_order(backend_url):
    async def body(s, p):
        tx = s.transaction()
        tx.set(p + "s", "{}", ex=86400)
        tx.zadd(p + "idx", {"s1": 1704103200000})
        tx.expire(p + "idx", 86400)
        tx.rpush(p + "h", "a", "b", "c")
        tx.ltrim(p + "h", -2, -1)
        tx.pexpire(p + "h", 5000)
        results = await tx.execute()
        assert results == [True, 1, True, 3, True, True]
        assert await s.lrange(p + "h", 0, -1) == ["b", "c"]
        assert await s.zrange_withscores(p + "idx", 0, -1) == [("s1", 1704103200000.0)]
        tx = s.transaction()
        tx.delete(p + "s")
        tx.zrem(p + "idx", "s1")
        assert await tx.execute() == [1, 1]

    run(backend_url, body)


def test_wrong_type_is_a_store_error(backend_url):
    async def body(s, p):
        await s.set(p + "k", "v")
        with pytest.raises(StoreError):
            await s.rpush(p + "k", "x")

    run(backend_url, body)


def test_publish_reaches_subscribers_once_subscribe_returns(backend_url):
    async def body(s, p):
        ch = p + "chat:session:x"
        sub = s.subscription()
        await sub.subscribe(ch)
        assert await s.publish(ch, '{"frame":1}') == 1
        await s.publish(p + "other", "ignored")
        it = aiter(sub)
        assert await asyncio.wait_for(anext(it), 5) == (ch, '{"frame":1}')
        await sub.unsubscribe(ch)
        await asyncio.sleep(0.05)
        assert await s.publish(ch, "late") == 0
        await sub.aclose()

    run(backend_url, body)


def test_open_store_shares_one_store_per_url_and_loop(backend_url):
    async def main():
        async with open_store(backend_url) as a, open_store(backend_url) as b:
            assert a is b
            assert isinstance(a, RedisStore if backend_url else MemoryStore)
            assert await a.ping()

    asyncio.run(main())
