"""Shared test fixtures: real services, or a clear skip (a failure under CI).

Tests talk to real Redis, real MariaDB and real Node processes. When one of them is
missing on a developer's machine the test is skipped with the reason; `.ci/run` sets
``CHATGW_REQUIRE_SERVICES=1`` so that in CI the same situation is a failure instead.

Isolation: every test session takes its own Redis database number (``redis_db``) and
creates throw-away MariaDB databases (``mysql_database``), dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from tests_support import free_ports, need

REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))
MYSQL_HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("TEST_MYSQL_PASSWORD", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_available() -> bool:
    if not _tcp_open(REDIS_HOST, REDIS_PORT):
        return False
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def mysql_available() -> bool:
    if not _tcp_open(MYSQL_HOST, MYSQL_PORT):
        return False
    try:
        import pymysql

        pymysql.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD
        ).close()
        return True
    except Exception:
        return False


def node_available() -> bool:
    return shutil.which("node") is not None


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number for this test session, flushed before and after.

    Pick it with ``TEST_REDIS_DB`` (default 13) so that parallel developers do not collide.
    Pub/sub channels are shared by all database numbers: use unique ids in channel names.
    """
    need(redis_available(), f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    import redis

    db = int(os.environ.get("TEST_REDIS_DB", "13"))
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    yield db
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_url(redis_db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"


@pytest.fixture
def mysql_database() -> Iterator[Callable[[], str]]:
    """Factory: each call creates an empty MariaDB database and returns its name."""
    need(mysql_available(), f"MariaDB is not reachable at {MYSQL_HOST}:{MYSQL_PORT}")
    import pymysql

    made: list[str] = []

    def make() -> str:
        name = "cgw_t_" + secrets.token_hex(4)
        conn = pymysql.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD
        )
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        conn.close()
        made.append(name)
        return name

    yield make
    conn = pymysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD
    )
    with conn.cursor() as cur:
        for name in made:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def mysql_url(database: str, driver: str = "asyncmy") -> str:
    """A ``DATABASE_URL`` for the test MariaDB, user and password URL-escaped."""
    user = quote(MYSQL_USER, safe="")
    password = quote(MYSQL_PASSWORD, safe="")
    auth = f"{user}:{password}" if password else user
    return f"mysql+{driver}://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{database}"


# --------------------------------------------------------------------------- legacy stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_DIR = os.path.join(ROOT, "deploy", "legacy")
TEST_JWT_SECRET = "test-jwt-secret-0123456789-0123456789-abcdef"  # ≥ 32 bytes (RFC 7518 §3.2)
TEST_PROVIDER_KEY = "sk-fake-test"


def make_token(
    sub: object = "u-1",
    role: str = "customer",
    *,
    secret: str = TEST_JWT_SECRET,
    exp_in: float | None = 3600,
    algorithm: str = "HS256",
    **claims: object,
) -> str:
    """Mint a JWT as the legacy clients get them (HS256, ``sub``, ``role``, ``exp``)."""
    import time

    import jwt

    payload: dict[str, object] = {"sub": sub, "role": role, **claims}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return jwt.encode(payload, secret, algorithm=algorithm)


class LegacyStack:
    """A running copy of the four legacy Node services (``deploy/legacy/stack up``)."""

    def __init__(self, env: dict[str, str], state_dir: str) -> None:
        self.env = env
        self.state_dir = state_dir
        port = {k: int(env[k]) for k in env if k.endswith("_PORT") and k != "DB_PORT"}
        self.core = f"http://127.0.0.1:{port['CHAT_CORE_PORT']}"
        self.core2 = f"http://127.0.0.1:{port['CHAT_CORE2_PORT']}"
        self.ai = f"http://127.0.0.1:{port['AI_SERVICE_PORT']}"
        self.session = f"http://127.0.0.1:{port['CHAT_SESSION_PORT']}"
        self.admin = f"http://127.0.0.1:{port['CHAT_ADMIN_PORT']}"
        self.provider = f"http://127.0.0.1:{port['FAKE_DASHSCOPE_PORT']}"
        self.jwt_secret = env["JWT_SECRET"]
        self.redis_db = int(env["REDIS_DB"])
        self.mysql_db = env["DB_NAME"]
        self.redis_url = f"redis://{env['REDIS_HOST']}:{env['REDIS_PORT']}/{self.redis_db}"

    def run(self, verb: str) -> str:
        import subprocess

        proc = subprocess.run(
            [os.path.join(LEGACY_DIR, "stack"), verb],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode != 0 and verb == "up":
            raise RuntimeError(f"stack up failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def redis(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db)

    def mysql(self):  # type: ignore[no-untyped-def]
        import pymysql

        return pymysql.connect(
            host=MYSQL_HOST,
            port=MYSQL_PORT,
            user=MYSQL_USER,
            password=MYSQL_PASSWORD,
            database=self.mysql_db,
            autocommit=True,
            charset="utf8mb4",
        )


@pytest.fixture(scope="session")
def legacy_stack(redis_db: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LegacyStack]:
    """The legacy Node stack on ephemeral ports, its own Redis db and MariaDB database.

    Timeouts are shortened for tests (provider 3 s, chat-core → ai-service 5 s) through the
    services' test knobs; everything else is the contract's behaviour.
    """
    need(node_available(), "node is not installed")
    need(mysql_available(), f"MariaDB is not reachable at {MYSQL_HOST}:{MYSQL_PORT}")
    need(os.path.exists(os.path.join(LEGACY_DIR, "stack")), "deploy/legacy/stack is missing")
    db_name = "cgw_stack_" + secrets.token_hex(4)
    core, core2, ai, session, admin, provider = free_ports(6)
    env = {
        "CHAT_CORE_PORT": str(core),
        "CHAT_CORE2_PORT": str(core2),
        "AI_SERVICE_PORT": str(ai),
        "CHAT_SESSION_PORT": str(session),
        "CHAT_ADMIN_PORT": str(admin),
        "FAKE_DASHSCOPE_PORT": str(provider),
        "DB_HOST": MYSQL_HOST,
        "DB_PORT": str(MYSQL_PORT),
        "DB_USER": MYSQL_USER,
        "DB_PASSWORD": MYSQL_PASSWORD,
        "DB_NAME": db_name,
        "REDIS_HOST": REDIS_HOST,
        "REDIS_PORT": str(REDIS_PORT),
        "REDIS_DB": str(redis_db),
        "JWT_SECRET": TEST_JWT_SECRET,
        "DASHSCOPE_API_KEY": TEST_PROVIDER_KEY,
        "DASHSCOPE_TIMEOUT_MS": "3000",
        "AI_SERVICE_TIMEOUT_MS": "5000",
    }
    env.pop("DASHSCOPE_BASE_URL", None)
    state = str(tmp_path_factory.mktemp("legacy-stack"))
    stack = LegacyStack({**env, "STACK_STATE_DIR": state}, state)
    stack.env["STACK_STATE_DIR"] = state
    os.environ.pop("DASHSCOPE_BASE_URL", None)
    try:
        stack.run("up")
        yield stack
    finally:
        stack.run("down")
        try:
            import pymysql

            conn = pymysql.connect(
                host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD
            )
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{db_name}`")
            conn.close()
        except Exception:  # noqa: S110 - best-effort cleanup of a throw-away database
            pass
