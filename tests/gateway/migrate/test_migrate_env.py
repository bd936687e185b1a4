"""``chatgw migrate env``: mapping, quoting round trips, secrets never printed."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dotenv
import pytest

from gateway.migrate.env import map_env, parse_env, quote_value, render_env

ROOT = Path(__file__).resolve().parents[3]
NASTY = "p@:/#%?&= \"'\\$ x"  # every character the guide's script pasted unescaped
SPECIAL = [
    NASTY,
    " leading and trailing ",
    "${HOME}$HOME`id`$(id)",
    "back\\slash\\\\double\\",
    "it's",
    'say "hi"',
    "plain-value_1.2",
    "",
    "=starts=with=equals",
    "#not-a-comment",
    "ünïcødé 密码",
]


def chatgw(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def legacy_env(tmp_path: Path, password: str = NASTY, extra: str = "") -> Path:
    text = (
        "# legacy Node services\n"
        "export PORT=8080\n"
        "DB_HOST=db.internal\nDB_PORT=3307\nDB_USER='chat app'\n"
        f"DB_PASSWORD={quote_value(password)[0]}\nDB_NAME=chat\n"
        "REDIS_HOST=redis.internal\nREDIS_PORT=6380\n"
        f"REDIS_PASSWORD={quote_value(password + 'r')[0]}\nREDIS_DB=3\n"
        'JWT_SECRET="jwt-$ecret-value\\"q"   # inline comment\n'
        "DASHSCOPE_API_KEY=sk-abcdef0123456789\n"
        "DASHSCOPE_MODEL=qwen-turbo\n"
        "CHAT_CORE_PORT=8001\n" + extra
    )
    p = tmp_path / "legacy.env"
    p.write_text(text)
    return p


def test_parser_reads_comments_export_quotes_escapes_and_equals() -> None:
    text = (
        "# comment\n\n"
        "export A=1\n"
        "B = two  # trailing comment\n"
        "C='single # not comment $HOME \\n'\n"
        'D="dq \\"x\\" \\$HOME \\\\ \\n"\n'
        "E=a=b=c\n"
        "F='it'\\''s'\n"
        "G=\n"
        "H=x#y\n"
        'I="multi\nline"\n'
    )
    assert parse_env(text) == {
        "A": "1",
        "B": "two",
        "C": "single # not comment $HOME \\n",
        "D": 'dq "x" $HOME \\ \\n',
        "E": "a=b=c",
        "F": "it's",
        "G": "",
        "H": "x#y",
        "I": "multi\nline",
    }


def test_mapping_escapes_user_and_password_in_the_urls(tmp_path: Path) -> None:
    legacy = parse_env(legacy_env(tmp_path).read_text())
    assert legacy["DB_PASSWORD"] == NASTY and legacy["JWT_SECRET"] == 'jwt-$ecret-value"q'
    out = map_env(legacy).values
    db = urlsplit(out["DATABASE_URL"])
    assert db.scheme == "mysql+asyncmy" and db.hostname == "db.internal" and db.port == 3307
    assert unquote(db.username or "") == "chat app" and unquote(db.password or "") == NASTY
    assert db.path == "/chat"
    rd = urlsplit(out["REDIS_URL"])
    assert (rd.hostname, rd.port, rd.path) == ("redis.internal", 6380, "/3")
    assert unquote(rd.password or "") == NASTY + "r" and rd.username == ""
    assert out["JWT_SECRET_KEY"] == 'jwt-$ecret-value"q'
    assert out["CHATGW_PORT"] == "8080"
    assert out["DASHSCOPE_API_KEY"] == "sk-abcdef0123456789"


def test_written_values_round_trip_through_the_parser_bash_and_dotenv(tmp_path: Path) -> None:
    values = {f"V{i}": v for i, v in enumerate(SPECIAL)}
    text, shell_only = render_env(values)
    assert parse_env(text) == values
    f = tmp_path / "out.env"
    f.write_text(text)
    dump = "import json, os; print(json.dumps({k: os.environ[k] for k in os.environ if k.startswith('V')}))"
    proc = subprocess.run(
        ["bash", "-c", f'set -a; source "$1"; set +a; exec "{sys.executable}" -c "$2"', "_",
         str(f), dump],
        env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(proc.stdout) == values
    read = dotenv.dotenv_values(stream=io.StringIO(text), interpolate=False)
    for name, value in values.items():
        if name not in shell_only:
            assert read[name] == value, name
    assert shell_only == ["V0", "V2"]  # ' or \ together with $ or `: no common spelling


def test_cli_writes_mode_0600_and_never_prints_secret_values(tmp_path: Path) -> None:
    src = legacy_env(tmp_path, extra="SOME_TOKEN=tok-123456\n")
    proc = chatgw("migrate", "env", "--from", str(src), "--to", str(tmp_path / ".env"),
                  "--keep-unmapped", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout + proc.stderr
    for secret in (NASTY, "p@", "p%40", "jwt-", "sk-abcdef", "tok-123456", "hunter"):
        assert secret not in printed
    assert "DATABASE_URL=***" in printed and "JWT_SECRET_KEY=***" in printed
    assert "CHAT_CORE_PORT" in printed and "SOME_TOKEN" in printed
    mode = stat.S_IMODE((tmp_path / ".env").stat().st_mode)
    assert mode == 0o600
    written = parse_env((tmp_path / ".env").read_text())
    assert written["SOME_TOKEN"] == "tok-123456" and written["CHAT_CORE_PORT"] == "8001"
    assert unquote(urlsplit(written["DATABASE_URL"]).password or "") == NASTY


def test_existing_target_is_kept_without_force(tmp_path: Path) -> None:
    src = legacy_env(tmp_path)
    target = tmp_path / ".env"
    target.write_text("KEEP=me\n")
    proc = chatgw("migrate", "env", "--from", str(src), "--to", str(target), cwd=tmp_path)
    assert proc.returncode == 1
    assert "exists" in proc.stderr and "--force" in proc.stderr
    assert target.read_text() == "KEEP=me\n"
    proc = chatgw("migrate", "env", "--from", str(src), "--to", str(target), "--force",
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0
    assert "REDIS_URL" in parse_env(target.read_text())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_unmapped_keys_are_reported_by_name_and_carried_only_on_request(tmp_path: Path) -> None:
    src = legacy_env(tmp_path)
    proc = chatgw("migrate", "env", "--from", str(src), "--to", str(tmp_path / "a.env"),
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0
    assert "unmapped, not carried (use --keep-unmapped): CHAT_CORE_PORT" in proc.stdout
    assert "CHAT_CORE_PORT" not in parse_env((tmp_path / "a.env").read_text())


@pytest.mark.parametrize("missing", ["JWT_SECRET", "DASHSCOPE_API_KEY"])
def test_missing_required_keys_exit_1_and_write_nothing(tmp_path: Path, missing: str) -> None:
    src = legacy_env(tmp_path)
    src.write_text(
        "\n".join(ln for ln in src.read_text().splitlines() if not ln.startswith(missing))
    )
    proc = chatgw("migrate", "env", "--from", str(src), "--to", str(tmp_path / "b.env"),
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert f"required keys missing: {missing}" in proc.stderr
    assert not (tmp_path / "b.env").exists()


def test_absent_db_and_redis_keys_take_the_legacy_defaults() -> None:
    report = map_env({"JWT_SECRET": "j", "DASHSCOPE_API_KEY": "k"})
    assert report.values["DATABASE_URL"] == "mysql+asyncmy://root@127.0.0.1:3306/chat"
    assert report.values["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert "DB_HOST" in report.defaulted and "REDIS_DB" in report.defaulted
