"""``chatgw migrate sessions|env``, ``chatgw backup redis``, ``chatgw restore redis``.

Exit codes (added to ``gateway.cli``'s table; distinct from the control commands' 4-7):
0 done; 1 a failed action (verify found mismatches, errors, unreachable Redis, target
file exists, required keys missing); 2 bad usage; 8 done but records were left untouched
(malformed, or rewritten by a live service meanwhile): see the report; 9 stopped before
the end (``--max-batches`` or Ctrl-C), progress saved: run again with ``--resume``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

EXIT_UNTOUCHED = 8
EXIT_STOPPED = 9


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def add_commands(sub: Any) -> None:
    """Add ``migrate``, ``backup`` and ``restore`` to the ``chatgw`` sub-parsers."""
    m = sub.add_parser("migrate", help="migration kit: session records, .env files")
    msub = m.add_subparsers(dest="migrate_command", required=True)

    s = msub.add_parser(
        "sessions",
        help="rewrite session records between the legacy and the Python shape",
        description="SCAN-based, TTL- and createdAt-preserving, idempotent, resumable.",
    )
    s.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="source Redis")
    s.add_argument("--to", choices=["python", "legacy"], required=True, help="target shape")
    s.add_argument("--target-url", help="write into this Redis URL/db instead of in place")
    s.add_argument("--batch", type=_positive, default=1000, help="SCAN COUNT (default 1000)")
    s.add_argument("--dry-run", action="store_true", help="count and show samples, write nothing")
    s.add_argument("--samples", type=int, default=3, help="before/after samples to print")
    s.add_argument(
        "--verify", action="store_true", help="only check every target record against its source"
    )
    s.add_argument(
        "--ttl-tolerance", type=int, default=1000, metavar="MS", help="verify: TTL drift allowed"
    )
    s.add_argument("--state", help="state file (default .run/migrate-sessions.<hash>.json)")
    s.add_argument("--resume", action="store_true", help="continue from the state file")
    s.add_argument("--max-batches", type=_positive, help="stop after N batches (resume later)")
    s.add_argument(
        "--progress", action="store_true", help="progress bar on stderr even when not a TTY"
    )
    s.set_defaults(func=cmd_migrate_sessions)

    e = msub.add_parser("env", help="legacy Node .env -> Python .env (DATABASE_URL, REDIS_URL…)")
    e.add_argument("--from", dest="source", required=True, metavar="LEGACY_ENV")
    e.add_argument("--to", dest="target", required=True, metavar="ENV")
    e.add_argument("--force", action="store_true", help="replace an existing target file")
    e.add_argument("--keep-unmapped", action="store_true", help="carry unknown keys as they are")
    e.set_defaults(func=cmd_migrate_env)

    b = sub.add_parser("backup", help="logical backups (see deploy/scripts/backup)")
    bsub = b.add_subparsers(dest="backup_command", required=True)
    br = bsub.add_parser("redis", help="SCAN + DUMP of session:*, user_sessions:*, history:*")
    br.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    br.add_argument("--out", required=True, help="file to write (gzip'd JSON lines)")
    br.add_argument("--batch", type=_positive, default=1000)
    br.set_defaults(func=cmd_backup_redis)

    r = sub.add_parser("restore", help="restore a logical backup (see deploy/scripts/restore)")
    rsub = r.add_subparsers(dest="restore_command", required=True)
    rr = rsub.add_parser("redis", help="RESTORE … ABSTTL the keys of a `backup redis` file")
    rr.add_argument("--in", dest="source", required=True, help="backup file")
    rr.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    rr.add_argument("--replace", action="store_true", help="overwrite keys that exist")
    rr.add_argument(
        "--prune", action="store_true", help="also delete chat keys that are not in the backup"
    )
    rr.add_argument("--batch", type=_positive, default=1000)
    rr.set_defaults(func=cmd_restore_redis)


def _err(msg: str) -> None:
    print(f"chatgw: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------- sessions


def cmd_migrate_sessions(args: argparse.Namespace) -> int:
    import redis

    from . import redact_url
    from .sessions import (
        MigrateError,
        Options,
        SessionMigrator,
        default_state_path,
        load_state,
        save_state,
        summary,
    )

    if not args.redis_url:
        _err("--redis-url is required (or set REDIS_URL)")
        return 2
    if args.verify and (args.dry_run or args.resume):
        _err("--verify checks only: it does not combine with --dry-run or --resume")
        return 2
    opts = Options(
        to=args.to,
        batch=args.batch,
        dry_run=args.dry_run,
        samples=max(args.samples, 0),
        max_batches=args.max_batches,
        ttl_tolerance_ms=args.ttl_tolerance,
        progress=args.progress or sys.stderr.isatty(),
    )
    where = (
        f"into {redact_url(args.target_url)}"
        if args.target_url and args.target_url != args.redis_url
        else "in place"
    )
    try:
        mig = SessionMigrator(args.redis_url, args.target_url, opts)
    except (redis.RedisError, ValueError) as exc:
        _err(f"cannot use {redact_url(args.redis_url)}: {exc}")
        return 1
    try:
        if args.verify:
            print(
                f"verifying session records of {redact_url(args.redis_url)} "
                f"({where}, {args.to} shape)"
            )
            started = time.monotonic()
            c, bad = mig.verify()
            print(
                f"verified {c.sessions} session records"
                + (f" and {c.index_keys} user_sessions indexes" if mig.dst is not None else "")
                + f" in {time.monotonic() - started:.1f} s: {bad} mismatches, "
                f"{c.malformed} malformed (left untouched), {c.expired} expired meanwhile"
            )
            if bad:
                return 1
            return EXIT_UNTOUCHED if c.malformed else 0

        state_path = args.state or default_state_path(args.redis_url, args.target_url, args.to)
        prev = load_state(state_path)
        state = mig.new_state()
        if args.resume and prev is not None and not prev.done:
            if (prev.source, prev.target, prev.to) != (state.source, state.target, state.to):
                _err(f"{state_path} belongs to another run ({prev.source} -> {prev.target}, "
                     f"{prev.to}); pass --state for this one")  # fmt: skip
                return 1
            state = prev
            print(f"resuming from {state_path}: cursor {state.cursor}, "
                  f"{state.counters.scanned} keys already scanned")  # fmt: skip
        elif args.resume:
            print(f"nothing to resume in {state_path}: starting from the beginning")
        elif prev is not None and not prev.done and not args.dry_run:
            print(f"note: {state_path} holds an unfinished run; starting over "
                  "(use --resume to continue it)")  # fmt: skip
        mode = "dry run: " if args.dry_run else ""
        print(f"{mode}migrating session records of {redact_url(args.redis_url)} to the "
              f"{args.to} shape {where} (batch {args.batch})")  # fmt: skip
        try:
            result = mig.run(state, lambda st: save_state(state_path, st))
        except KeyboardInterrupt:
            print(summary(state, opts, mig.dst is not None))
            _err(f"interrupted; progress saved in {state_path}: run again with --resume")
            return EXIT_STOPPED
        print(summary(result.state, opts, mig.dst is not None))
        if result.stopped:
            print(f"stopped after {args.max_batches} batches; progress saved in {state_path}: "
                  "run again with --resume")  # fmt: skip
            return EXIT_STOPPED
        c = result.state.counters
        if c.errors:
            return 1
        if c.malformed or c.changed:
            return EXIT_UNTOUCHED
        return 0
    except MigrateError as exc:
        _err(str(exc))
        return 1
    except redis.RedisError as exc:
        _err(f"Redis error: {exc}")
        return 1
    finally:
        mig.close()


# --------------------------------------------------------------------------- env


def cmd_migrate_env(args: argparse.Namespace) -> int:
    from .env import EnvSyntaxError, describe, map_env, parse_env, render_env, write_env_file

    try:
        with open(args.source, encoding="utf-8") as f:
            legacy = parse_env(f.read())
    except OSError as exc:
        _err(f"cannot read {args.source}: {exc.strerror}")
        return 1
    except EnvSyntaxError as exc:
        _err(f"{args.source}: {exc}")
        return 1
    report = map_env(legacy, keep_unmapped=args.keep_unmapped)
    if report.missing:
        _err(f"{args.source}: required keys missing: {', '.join(report.missing)}; "
             f"nothing written")  # fmt: skip
        return 1
    try:
        text, report.shell_only = render_env(report.values)
    except ValueError as exc:
        _err(f"{args.source}: {exc}")
        return 1
    try:
        write_env_file(args.target, text, args.force)
    except FileExistsError:
        _err(f"{args.target} exists; not overwritten (use --force to replace it)")
        return 1
    except OSError as exc:
        _err(f"cannot write {args.target}: {exc.strerror}")
        return 1
    print(f"{args.source} -> {args.target} (mode 0600), {len(report.values)} keys:")
    for line in describe(report, args.keep_unmapped):
        print(line)
    return 0


# --------------------------------------------------------------------------- backup


def cmd_backup_redis(args: argparse.Namespace) -> int:
    import redis

    from . import redact_url
    from .redis_backup import backup

    if not args.redis_url:
        _err("--redis-url is required (or set REDIS_URL)")
        return 2
    started = time.monotonic()
    try:
        n = backup(args.redis_url, args.out, batch=args.batch)
    except (redis.RedisError, OSError) as exc:
        _err(f"backup of {redact_url(args.redis_url)} failed: {exc}")
        return 1
    print(f"{redact_url(args.redis_url)}: {n} keys -> {args.out} "
          f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    return 0


def cmd_restore_redis(args: argparse.Namespace) -> int:
    import redis

    from . import redact_url
    from .redis_backup import BackupError, restore

    if not args.redis_url:
        _err("--redis-url is required (or set REDIS_URL)")
        return 2
    started = time.monotonic()
    try:
        c = restore(
            args.redis_url, args.source, replace=args.replace, prune=args.prune, batch=args.batch
        )
    except (redis.RedisError, OSError, BackupError, ValueError) as exc:
        _err(f"restore into {redact_url(args.redis_url)} failed: {exc}")
        return 1
    print(f"{args.source} -> {redact_url(args.redis_url)} in "
          f"{time.monotonic() - started:.1f} s: restored {c.restored}, kept existing "
          f"{c.kept_existing}{'' if args.replace else ' (use --replace to overwrite)'}, "
          f"expired since the backup {c.expired}, pruned {c.pruned}, errors {c.errors}")  # fmt: skip
    return 1 if c.errors else 0
