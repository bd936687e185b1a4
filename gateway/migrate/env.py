"""``chatgw migrate env``: the Node services' ``.env`` -> the Python gateway's ``.env``.

Mapping (the migration guide's, with the choices it leaves open)::

    PORT                                 -> CHATGW_PORT   (the port ``chatgw serve`` reads;
                                            no ``PORT``: nothing in the gateway reads it)
    DB_HOST DB_PORT DB_USER DB_PASSWORD DB_NAME
                                         -> DATABASE_URL=mysql+asyncmy://user:pw@host:port/db
    REDIS_HOST REDIS_PORT REDIS_PASSWORD REDIS_DB
                                         -> REDIS_URL=redis://:pw@host:port/db
    JWT_SECRET                           -> JWT_SECRET_KEY
    DASHSCOPE_API_KEY DASHSCOPE_BASE_URL DASHSCOPE_MODEL DASHSCOPE_TIMEOUT_MS -> same names

User names and passwords are percent-escaped (``quote(safe="")``) inside the URLs. A
missing ``DB_*``/``REDIS_*`` key takes the legacy services' default (``lib/common.js``:
127.0.0.1, 3306, root, empty password, ``chat``; 6379, no password, db 0) and is reported
as defaulted; ``JWT_SECRET`` and ``DASHSCOPE_API_KEY`` are required (exit 1 without them).
Other keys are reported by name and carried verbatim only with ``--keep-unmapped``.

Reading follows POSIX shell rules (what ``source``/``set -a`` does, and what the legacy
deployment used): ``#`` comments (inline only after whitespace), blank lines, ``export``,
``'single'`` (literal), ``"double"`` (``\\\\ \\" \\$ \\```  escapes), ``\\`` outside
quotes, concatenated segments (``'it'\\''s'``), ``=`` inside values; ``$VAR`` is not
expanded (the value is taken literally).

Writing quotes every value so that ``source`` and a python-dotenv-style reader get the
exact value: ``'value'`` when that is unambiguous for both, otherwise ``"value"`` with
``\\\\``, ``\\"``, ``\\$`` and ``\\``` escaped. A value holding ``'`` or ``\\`` *and*
``$`` or a backtick has no spelling both read the same (python-dotenv keeps ``\\$``); it is
written for POSIX shells and named in the report. The file is created with mode 0600, and
never over an existing file without ``--force``. Values of secrets are never printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

DB_DEFAULTS = {
    "DB_HOST": "127.0.0.1",
    "DB_PORT": "3306",
    "DB_USER": "root",
    "DB_PASSWORD": "",
    "DB_NAME": "chat",
}
REDIS_DEFAULTS = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6379", "REDIS_DB": "0"}
REQUIRED = ("JWT_SECRET", "DASHSCOPE_API_KEY")
CARRIED = ("DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL", "DASHSCOPE_MODEL", "DASHSCOPE_TIMEOUT_MS")
CONSUMED = frozenset(
    ["PORT", "JWT_SECRET", "REDIS_PASSWORD", *DB_DEFAULTS, *REDIS_DEFAULTS, *CARRIED]
)
# Output keys whose value is secret or embeds a secret (printed as ***).
SECRET_OUTPUTS = frozenset(["DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "DASHSCOPE_API_KEY"])
_SECRET_HINT = re.compile(r"PASS|SECRET|KEY|TOKEN|CREDENTIAL|PRIVATE|AUTH", re.IGNORECASE)


class EnvSyntaxError(ValueError):
    """A line the parser cannot read; the message has the line number."""


# --------------------------------------------------------------------------- parse


def parse_env(text: str) -> dict[str, str]:
    """A ``.env`` text -> ``{name: value}`` (shell rules; the last assignment wins)."""
    out: dict[str, str] = {}
    i, n, line = 0, len(text), 1
    while i < n:
        # skip blank space and comment lines
        while i < n and text[i] in " \t\r\n":
            line += text[i] == "\n"
            i += 1
        if i >= n:
            break
        if text[i] == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if text.startswith("export", i) and i + 6 < n and text[i + 6] in " \t":
            i += 6
            while i < n and text[i] in " \t":
                i += 1
        m = _NAME.match(text, i)
        if m is None:
            raise EnvSyntaxError(f"line {line}: expected NAME=value")
        name = m.group(0)
        i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            raise EnvSyntaxError(f"line {line}: {name} has no '='")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        value, i, line = _value(text, i, line)
        out[name] = value
    return out


def _value(text: str, i: int, line: int) -> tuple[str, int, int]:
    n = len(text)
    buf: list[str] = []
    start_line = line
    while i < n:
        ch = text[i]
        if ch == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise EnvSyntaxError(f"line {start_line}: unterminated single quote")
            seg = text[i + 1 : j]
            line += seg.count("\n")
            buf.append(seg)
            i = j + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise EnvSyntaxError(f"line {start_line}: unterminated double quote")
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] in '\\"$`\n':
                    if text[i + 1] != "\n":  # backslash-newline: a line continuation
                        buf.append(text[i + 1])
                    line += text[i + 1] == "\n"
                    i += 2
                    continue
                line += ch == "\n"
                buf.append(ch)
                i += 1
        elif ch == "\\":
            if i + 1 < n and text[i + 1] != "\n":
                buf.append(text[i + 1])
            i += 2
        elif ch in " \t":
            # unquoted whitespace ends the value; the rest may only be a comment
            j = i
            while j < n and text[j] in " \t\r":
                j += 1
            if j < n and text[j] not in "#\n":
                raise EnvSyntaxError(
                    f"line {line}: unquoted space inside a value (quote the value)"
                )
            while j < n and text[j] != "\n":
                j += 1
            return "".join(buf), j, line
        elif ch in "\r\n":
            return "".join(buf), i, line
        else:
            buf.append(ch)
            i += 1
    return "".join(buf), i, line


# --------------------------------------------------------------------------- write


def _dotenv_single_ok(v: str) -> bool:
    return "'" not in v and "\\\\" not in v and not v.endswith("\\")


def quote_value(v: str) -> tuple[str, bool]:
    """The value spelled for the file, and whether every reader gets it back exactly."""
    if "\n" in v or "\r" in v or "\0" in v:
        raise ValueError("a value with a line break or NUL cannot be written to a .env file")
    if _dotenv_single_ok(v):  # literal for shells, and for dotenv here
        return f"'{v}'", "${" not in v
    escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return f'"{escaped}"', "$" not in v and "`" not in v


def render_env(values: Mapping[str, str]) -> tuple[str, list[str]]:
    """File text for ``values`` and the names a python-dotenv reader would not read exactly."""
    lines = ["# written by `chatgw migrate env`; values are quoted for `source` and dotenv"]
    shell_only: list[str] = []
    for name, value in values.items():
        spelled, portable = quote_value(value)
        if not portable:
            shell_only.append(name)
        lines.append(f"{name}={spelled}")
    return "\n".join(lines) + "\n", shell_only


# --------------------------------------------------------------------------- map


@dataclass
class EnvReport:
    values: dict[str, str] = field(default_factory=dict)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    defaulted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    shell_only: list[str] = field(default_factory=list)


def map_env(legacy: Mapping[str, str], keep_unmapped: bool = False) -> EnvReport:
    """Legacy names -> Python names (see the module docstring)."""
    r = EnvReport()

    def get(name: str, defaults: Mapping[str, str]) -> str:
        value = legacy.get(name)
        if value is None:
            r.defaulted.append(name)
            return defaults[name]
        return value

    if legacy.get("PORT"):
        r.values["CHATGW_PORT"] = legacy["PORT"]
        r.mapped.append(("PORT", "CHATGW_PORT"))

    host, port, user, password, db = (get(k, DB_DEFAULTS) for k in DB_DEFAULTS)
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    r.values["DATABASE_URL"] = f"mysql+asyncmy://{auth}@{_host(host)}:{port}/{quote(db, safe='')}"
    r.mapped.append(("DB_HOST DB_PORT DB_USER DB_PASSWORD DB_NAME", "DATABASE_URL"))

    rhost, rport, rdb = (get(k, REDIS_DEFAULTS) for k in REDIS_DEFAULTS)
    rpass = legacy.get("REDIS_PASSWORD") or ""
    rauth = f":{quote(rpass, safe='')}@" if rpass else ""
    r.values["REDIS_URL"] = f"redis://{rauth}{_host(rhost)}:{rport}/{rdb}"
    r.mapped.append(("REDIS_HOST REDIS_PORT REDIS_PASSWORD REDIS_DB", "REDIS_URL"))

    if legacy.get("JWT_SECRET"):
        r.values["JWT_SECRET_KEY"] = legacy["JWT_SECRET"]
        r.mapped.append(("JWT_SECRET", "JWT_SECRET_KEY"))
    for name in CARRIED:
        if legacy.get(name):
            r.values[name] = legacy[name]
            r.mapped.append((name, name))
    r.missing = [name for name in REQUIRED if not legacy.get(name)]
    r.unmapped = [name for name in legacy if name not in CONSUMED]
    if keep_unmapped:
        for name in r.unmapped:
            r.values.setdefault(name, legacy[name])
    return r


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_secret(name: str) -> bool:
    return name in SECRET_OUTPUTS or bool(_SECRET_HINT.search(name))


def describe(report: EnvReport, keep_unmapped: bool) -> list[str]:
    """The report lines: names only, secret values as ``***``."""
    lines = []
    for src, dst in report.mapped:
        value = report.values[dst]
        shown = "***" if is_secret(dst) else value
        lines.append(f"  {src} -> {dst}={shown}")
    if report.defaulted:
        lines.append(
            "  defaulted as the legacy services do (absent): " + ", ".join(report.defaulted)
        )
    if report.unmapped:
        what = "carried as is" if keep_unmapped else "not carried (use --keep-unmapped)"
        lines.append(f"  unmapped, {what}: " + ", ".join(report.unmapped))
    if report.shell_only:
        lines.append(
            "  written for POSIX shells (' or \\ together with $ or `: python-dotenv would "
            "read them differently): " + ", ".join(report.shell_only)
        )
    return lines


def write_env_file(path: str, text: str, force: bool) -> None:
    """Create ``path`` with mode 0600 (replacing it only with ``force``), atomically."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
