"""Migration kit (issue 8): session records, ``.env`` files, Redis backups.

- :mod:`gateway.migrate.sessions`: ``chatgw migrate sessions`` (legacy <-> Python record
  shape, SCAN-based, TTL- and timestamp-preserving, dry-run, verify, resumable).
- :mod:`gateway.migrate.env`: ``chatgw migrate env`` (Node ``.env`` -> Python ``.env``).
- :mod:`gateway.migrate.redis_backup`: ``chatgw backup redis`` / ``chatgw restore redis``
  (logical DUMP/RESTORE of the chat keys, used by ``deploy/scripts/backup|restore``).
- :mod:`gateway.migrate.cli`: the argparse wiring, added to ``chatgw`` by ``gateway.cli``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, safe to print."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
