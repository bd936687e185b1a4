"""Module settings, read once from the environment (``ModuleContext.env``).

Example::

    settings = Settings.from_env(os.environ)
    settings.dashscope_model  # "qwen-turbo" unless DASHSCOPE_MODEL says otherwise
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

WriteShape = Literal["legacy", "python", "both"]
WRITE_SHAPES: tuple[WriteShape, ...] = ("legacy", "python", "both")


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists every problem and its fix."""


@dataclass(frozen=True)
class Settings:
    """Settings of the modules (names are the Python ``.env`` names of the migration guide).

    - ``REDIS_URL``: shared Redis; unset -> an in-process store (single process only).
    - ``DATABASE_URL``: MySQL for chat-core / chat-admin modules; unset -> SQLite.
    - ``JWT_SECRET_KEY``: HS256 secret; unset -> every authenticated request is 401.
    - ``DASHSCOPE_API_KEY``, ``DASHSCOPE_BASE_URL``, ``DASHSCOPE_MODEL``.
    - ``DASHSCOPE_TIMEOUT_MS``: provider timeout (30 s in production; a test knob).
    - ``SESSION_WRITE_SHAPE``: ``legacy`` (default, readable by the Node services),
      ``python`` or ``both``.
    """

    redis_url: str | None = None
    database_url: str | None = None
    jwt_secret_key: str | None = None
    dashscope_api_key: str | None = None
    dashscope_base_url: str = "https://dashscope.aliyuncs.com"
    dashscope_model: str = "qwen-turbo"
    dashscope_timeout_ms: int = 30000
    session_write_shape: WriteShape = "legacy"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and validate every setting; all problems are reported at once."""
        problems: list[str] = []

        def opt(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        timeout_raw = env.get("DASHSCOPE_TIMEOUT_MS") or "30000"
        timeout = 30000
        if timeout_raw.isdigit() and int(timeout_raw) > 0:
            timeout = int(timeout_raw)
        else:
            problems.append(
                f"DASHSCOPE_TIMEOUT_MS={timeout_raw!r} is not a positive integer of milliseconds"
            )
        shape = (env.get("SESSION_WRITE_SHAPE") or "legacy").strip().lower()
        if shape not in WRITE_SHAPES:
            problems.append(
                f"SESSION_WRITE_SHAPE={shape!r} is not one of {', '.join(WRITE_SHAPES)}"
            )
            shape = "legacy"
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(
            redis_url=opt("REDIS_URL"),
            database_url=opt("DATABASE_URL"),
            jwt_secret_key=opt("JWT_SECRET_KEY"),
            dashscope_api_key=opt("DASHSCOPE_API_KEY"),
            dashscope_base_url=(opt("DASHSCOPE_BASE_URL") or cls.dashscope_base_url).rstrip("/"),
            dashscope_model=opt("DASHSCOPE_MODEL") or cls.dashscope_model,
            dashscope_timeout_ms=timeout,
            session_write_shape=cast(WriteShape, shape),
        )
