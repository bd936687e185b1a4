"""routes.yaml loading and validation: every error at once, with file, line and fix."""

from __future__ import annotations

import os
import textwrap

import pytest

from gateway.config import load_config, parse_config, parse_percent
from gateway.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = ["session", "ai", "admin", "websocket"]

GOOD = """
upstreams:
  core: {url: "http://127.0.0.1:8001"}
routes:
  - name: a
    match: {path: "/api/a/{id}"}
    legacy: core
    module: session
    new_percent: 12.5
"""


def parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(textwrap.dedent(text), "routes.yaml", env=env or {}, known_modules=MODULES)


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return [str(i) for i in info.value.issues]


def test_shipped_routes_yaml_is_valid_and_all_at_zero_percent() -> None:
    config = load_config(os.path.join(ROOT, "routes.yaml"), env={}, known_modules=MODULES)
    assert {r.new_basis for r in config.routes} == {0}
    assert {u.url for u in config.upstreams.values()} == {
        "http://127.0.0.1:8001", "http://127.0.0.1:8003", "http://127.0.0.1:8004", "http://127.0.0.1:8005",
    }  # fmt: skip


def test_shipped_timeouts_outlast_the_services_own_timeouts() -> None:
    config = load_config(os.path.join(ROOT, "routes.yaml"), env={}, known_modules=MODULES)
    by_name = {r.name: r for r in config.routes}
    assert by_name["ai-chat"].timeout > 30 and by_name["ai-chat-stream"].timeout > 30
    assert by_name["messages"].timeout > 40


def test_env_substitution_with_default_and_override() -> None:
    text = GOOD.replace('"http://127.0.0.1:8001"', '"${CORE_URL:-http://127.0.0.1:9}"')
    assert parse(text).upstreams["core"].url == "http://127.0.0.1:9"
    assert (
        parse(text, {"CORE_URL": "http://10.0.0.1:80"}).upstreams["core"].url
        == "http://10.0.0.1:80"
    )


def test_env_substitution_of_plain_scalar_keeps_its_type() -> None:
    text = GOOD.replace("new_percent: 12.5", "new_percent: ${PCT:-5}")
    assert parse(text).routes[0].new_basis == 500


def test_unset_variable_without_default_names_line_and_fix() -> None:
    text = GOOD.replace('"http://127.0.0.1:8001"', '"${CORE_URL}"')
    (issue,) = issues_of(text)
    assert issue.startswith("routes.yaml:3 upstreams.core.url:")
    assert "CORE_URL is not set" in issue and "${CORE_URL:-default}" in issue


def test_every_error_is_reported_at_once_with_line_and_path() -> None:
    text = """
    upstreams:
      core: {url: "http://127.0.0.1:8001", pool_size: 0}
    routes:
      - name: a
        match: {path: "/api/a/{id}"}
        legacy: core
        module: session
        new_percent: 120
      - name: b
        match: {prefix: /api/b}
        legacy: nowhere
        sticky: jwt.subject
      - name: c
        match: {path: /api/c}
        legacy: core
        timout: 5s
    """
    issues = issues_of(text)
    assert (
        "routes.yaml:3 upstreams.core.pool_size: 0 is not a whole number between 1 and 10000"
        in issues
    )
    assert (
        "routes.yaml:9 routes[0].new_percent: 120 is not between 0 and 100 with at most two decimals"
        in issues
    )
    assert any(
        i.startswith("routes.yaml:12 routes[1].legacy: 'nowhere' is not an upstream name")
        for i in issues
    )
    assert any(i.startswith("routes.yaml:13 routes[1].sticky:") for i in issues)
    assert any(
        i.startswith(
            "routes.yaml:17 routes[2].timout: unknown key 'timout': did you mean 'timeout'?"
        )
        for i in issues
    )
    assert len(issues) == 5


@pytest.mark.parametrize(
    ("value", "basis"),
    [(0, 0), (100, 10000), (12.5, 1250), ("33.33", 3333), (0.01, 1), (50, 5000)],
)
def test_percent_accepts_two_decimals(value: object, basis: int) -> None:
    assert parse_percent(value) == basis


@pytest.mark.parametrize("value", [-1, 100.01, 1.005, "abc", True, None, "nan", [1]])
def test_percent_refuses_out_of_range_or_too_precise(value: object) -> None:
    assert parse_percent(value) is None


def test_tie_between_two_routes_is_a_config_error() -> None:
    text = """
    upstreams:
      core: {url: "http://127.0.0.1:8001"}
    routes:
      - name: a
        match: {path: "/api/x/{id}"}
        legacy: core
      - name: b
        match: {path: "/api/x/{other}", methods: [GET]}
        legacy: core
    """
    (issue,) = issues_of(text)
    assert issue.startswith("routes.yaml:8 routes[1].match: route 'b' ties with route 'a'")


def test_disjoint_methods_are_not_a_tie() -> None:
    text = """
    upstreams:
      core: {url: "http://127.0.0.1:8001"}
    routes:
      - name: a
        match: {path: "/api/x/{id}", methods: [GET]}
        legacy: core
      - name: b
        match: {path: "/api/x/{id}", methods: [POST]}
        legacy: core
    """
    assert len(parse(text).routes) == 2


def test_unknown_module_lists_known_ones() -> None:
    (issue,) = issues_of(GOOD.replace("module: session", "module: sesion"))
    assert (
        "routes[0].module: 'sesion' is not a registered module (known: admin, ai, session, websocket)"
        in issue
    )


def test_percent_without_module_is_refused() -> None:
    (issue,) = issues_of(GOOD.replace("    module: session\n", ""))
    assert "a route without a module always goes to legacy" in issue


def test_invalid_yaml_names_the_line() -> None:
    (issue,) = issues_of("upstreams:\n  core: {url: [\nroutes: []\n")
    assert issue.startswith("routes.yaml:") and "is not valid YAML" in issue


def test_empty_file_is_refused() -> None:
    (issue,) = issues_of("")
    assert "is empty" in issue


def test_duplicate_key_and_duplicate_route_name() -> None:
    text = """
    upstreams:
      core: {url: "http://127.0.0.1:8001"}
    routes:
      - name: a
        match: {path: /api/a}
        legacy: core
        legacy: core
      - name: a
        match: {path: /api/b}
        legacy: core
    """
    issues = issues_of(text)
    assert any("routes[0].legacy: duplicate key 'legacy'" in i for i in issues)
    assert any("route name 'a' is already used by routes[0]" in i for i in issues)


def test_garbage_values_never_crash_the_validator() -> None:
    text = """
    upstreams:
      core: [1, 2]
      other: {url: {a: 1}}
    routes:
      - 7
      - name: [x]
        match: {path: 5, methods: GET, websocket: maybe}
        legacy: {x: 1}
        module: [a]
        sticky: 3
        timeout: -1
        body_limit: huge
    """
    assert len(issues_of(text)) >= 8


def test_missing_file_is_a_config_error_not_oserror(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "cannot be read" in str(info.value)


def test_durations_and_sizes_with_units() -> None:
    text = GOOD.replace(
        "new_percent: 12.5", "new_percent: 0\n    timeout: 500ms\n    body_limit: 512KiB"
    )
    route = parse(text).routes[0]
    assert route.timeout == 0.5 and route.body_limit == 512 * 1024


def test_route_timeout_defaults_to_upstream_read_timeout() -> None:
    text = GOOD.replace(
        '{url: "http://127.0.0.1:8001"}', '{url: "http://127.0.0.1:8001", read_timeout: 7s}'
    )
    assert parse(text).routes[0].timeout == 7.0


def test_shadow_isolation_and_nice() -> None:
    settings = parse(GOOD + "settings:\n  shadow: {isolation: process, nice: 19}\n").settings
    assert (settings.shadow.isolation, settings.shadow.nice) == ("process", 19)
    default = parse(GOOD).settings.shadow
    assert (default.isolation, default.nice) == ("loop", "idle")
    idle = parse(GOOD + "settings:\n  shadow: {isolation: process, nice: idle}\n").settings
    assert idle.shadow.nice == "idle"
    text = GOOD + "settings:\n  shadow: {isolation: thread, nice: 20}\n"
    assert issues_of(text) == [
        "routes.yaml:11 settings.shadow.isolation: 'thread' must be loop (copies in the serving"
        " process) or process (copies in a child process at lower CPU priority)",
        "routes.yaml:11 settings.shadow.nice: 20 must be idle (the scheduler's idle class: only"
        " CPU no other process wants) or a nice value from 0 to 19",
    ]
