"""The OpenAPI 3.1 document of the control API (hand-written; ``tests/gateway/control``
validates it with openapi-spec-validator and checks it names every mounted endpoint)."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/NoToken"},
    "404": {"$ref": "#/components/responses/NotFound"},
    "409": {"$ref": "#/components/responses/Conflict"},
    "503": {"$ref": "#/components/responses/StoreUnavailable"},
}

_ROUTE_PARAM = {
    "name": "route",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the route's name in routes.yaml",
}


def _write(
    summary: str, body: str | None, ok: dict[str, Any], *, code: str = "200"
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [_ROUTE_PARAM],
        "responses": {code: _json(ok, "done, and applied on this replica"), **_ERRORS},
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


_SOURCE = {
    "type": "string",
    "enum": ["api", "cli", "dashboard"],
    "default": "api",
    "description": "recorded in the audit trail",
}
_REASON = {"type": "string", "minLength": 1, "maxLength": 500, "description": "why (audited)"}
_PCT = {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}
_NPCT = {"type": ["number", "null"]}
_STATS = {
    "type": "object",
    "properties": {
        "requests": {"type": "integer"},
        "errors": {"type": "integer", "description": "5xx answers"},
        "rps": {"type": "number"},
        "error_rate": {"type": "number", "description": "5xx share, 0..1"},
        "p95_ms": {"type": ["number", "null"]},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "chat-gateway control API",
        "version": "1",
        "description": (
            "Live weights, rollbacks, ramps, hot reload and the audit trail of a chat-gateway "
            "fleet. Served on the admin listener; every operation needs a bearer token "
            "(GATEWAY_ADMIN_TOKEN or a named one from GATEWAY_ADMIN_TOKENS)."
        ),
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/routes": {
            "get": {
                "summary": "Every route with its live share, ramp and figures per side",
                "responses": {"200": _json(_ref("Status"), "the fleet state as this replica applies it"),
                              "401": _ERRORS["401"], "403": _ERRORS["403"]},
            }
        },
        "/api/routes/{route}": {
            "get": {
                "summary": "One route",
                "parameters": [_ROUTE_PARAM],
                "responses": {"200": _json(_ref("RouteView"), "the route"),
                              "401": _ERRORS["401"], "403": _ERRORS["403"], "404": _ERRORS["404"]},
            }
        },
        "/api/routes/{route}/percent": {
            "put": _write("Set the route's live share of new (stops a ramp on it)", "SetPercent", _ref("Change"))
        },
        "/api/routes/{route}/reset": {
            "post": _write("Drop the live override: back to the routes.yaml share", "Reason", _ref("Change"))
        },
        "/api/routes/{route}/rollback": {
            "post": _write("Send the route back to legacy (0 % new) and stop its ramp", "Reason", _ref("Rollback"))
        },
        "/api/rollback": {
            "post": {
                "summary": "Send every route with a module back to legacy",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Reason")}}},
                "responses": {"200": _json(_ref("Rollback"), "done"), **_ERRORS},
            }
        },
        "/api/routes/{route}/ramp": {
            "post": _write("Start a staged ramp, owned by this replica", "RampStart",
                           {"type": "object"}, code="201")
        },
        "/api/routes/{route}/ramp/stop": {
            "post": {
                **_write("Stop the route's ramp (any replica)", None, {"type": "object"}),
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("OptionalReason")}}},
            }
        },
        "/api/audit": {
            "get": {
                "summary": "The audit trail, newest first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
                    {"name": "route", "in": "query", "schema": {"type": "string"}, "description": "this route (and config reloads) only"},
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {"entries": {"type": "array", "items": _ref("AuditEntry")}}}, "entries"),
                    **_ERRORS,
                },
            }
        },
        "/api/reload": {
            "post": {
                "summary": "Re-read routes.yaml; applied whole or refused whole",
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("OptionalReason")}}},
                "responses": {
                    "200": _json({"type": "object"}, "applied"),
                    "422": _json(_ref("ConfigRefused"), "refused; the last good config keeps serving"),
                    "401": _ERRORS["401"], "403": _ERRORS["403"],
                },
            }
        },
        "/api/guard": {
            "get": {
                "summary": "Each module route's guard: state (green, red, idle, off), reason, figures",
                "responses": {"200": _json({"type": "object", "properties": {
                    "enabled": {"type": "boolean"},
                    "routes": {"type": "object", "additionalProperties": {
                        "type": "object", "properties": {
                            "state": {"type": "string", "enum": ["green", "red", "idle", "off"]},
                            "reason": {"type": "string"}, "figures": {"type": "object"}}}}}},
                    "the guard of every route with a module"),
                    "401": _ERRORS["401"], "403": _ERRORS["403"]},
            }
        },
        "/api/shadow": {
            "get": {
                "summary": "Shadow comparison: per route copies, matches, mismatches, errors",
                "responses": {"200": _json({"type": "object"}, "the shadow figures of this replica"),
                              "401": _ERRORS["401"], "403": _ERRORS["403"]},
            }
        },
        "/api/shadow/samples": {
            "get": {
                "summary": "Recent mismatching pairs (secrets redacted), newest first",
                "parameters": [
                    {"name": "route", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
                ],
                "responses": {"200": _json({"type": "object", "properties": {
                    "data": {"type": "array", "items": {"type": "object"}}}}, "the samples"),
                    "400": _ERRORS["400"], "401": _ERRORS["401"], "403": _ERRORS["403"]},
            }
        },
        "/api/version": {
            "get": {
                "summary": "The live-weights version applied on this replica (cheap; for probes)",
                "responses": {"200": _json({"type": "object", "properties": {
                    "version": {"type": "integer"}, "applied_at": {"type": "number"},
                    "degraded": {"type": "boolean"}}}, "the version"),
                    "401": _ERRORS["401"], "403": _ERRORS["403"]},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            name: _json(_ref("Error"), text)
            for name, text in {
                "BadRequest": "invalid input (percent, steps, duration, missing reason)",
                "Unauthorized": "missing or wrong bearer token",
                "NoToken": "no admin token is configured on the gateway: the API is disabled",
                "NotFound": "no such route (or no ramp on it)",
                "Conflict": "cannot be done as asked (route without a module, ramp already running)",
                "StoreUnavailable": "the weight store is unreachable: nothing was changed",
            }.items()
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                               "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            },
            "ConfigRefused": {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {
                    "code": {"const": "config_refused"}, "message": {"type": "string"},
                    "issues": {"type": "array", "items": {"type": "object", "properties": {
                        "file": {"type": "string"}, "line": {"type": ["integer", "null"]},
                        "path": {"type": "string"}, "message": {"type": "string"},
                        "text": {"type": "string", "description": "file:line path: message"}}}}}}},
            },
            "Reason": {"type": "object", "required": ["reason"],
                       "properties": {"reason": _REASON, "source": _SOURCE}},
            "OptionalReason": {"type": "object", "properties": {"reason": {"type": "string"}, "source": _SOURCE}},
            "SetPercent": {"type": "object", "required": ["percent", "reason"],
                           "properties": {"percent": _PCT, "reason": _REASON, "source": _SOURCE}},
            "RampStart": {
                "type": "object", "required": ["steps", "every", "reason"],
                "properties": {
                    "steps": {"type": "array", "minItems": 1, "items": _PCT},
                    "every": {"type": "string", "description": "a duration: 200ms, 30s, 10m, 1h"},
                    "reason": _REASON, "source": _SOURCE,
                },
            },
            "Change": {"type": "object", "properties": {
                "route": {"type": "string"}, "from": _PCT, "to": _PCT, "version": {"type": "integer"}}},
            "Rollback": {"type": "object", "properties": {
                "changed": {"type": "array", "items": {"type": "object"}}, "version": {"type": "integer"}}},
            "Ramp": {"type": ["object", "null"], "properties": {
                "steps": {"type": "array", "items": {"type": "number"}},
                "every_seconds": {"type": "number"}, "step": {"type": "integer", "description": "index of the step applied last, -1 before the first"},
                "state": {"enum": ["running", "halted"]}, "owner": {"type": "string"},
                "who": {"type": "string"}, "reason": {"type": "string"},
                "started_at": {"type": "number"}, "note": {"type": "string"}}},
            "RouteView": {"type": "object", "properties": {
                "name": {"type": "string"}, "match": {"type": "string"}, "legacy": {"type": "string"},
                "module": {"type": ["string", "null"]}, "percent": _PCT,
                "default_percent": _PCT, "override_percent": _NPCT, "ramp": _ref("Ramp"),
                "window_seconds": {"type": "integer"},
                "sides": {"type": "object", "properties": {"legacy": _STATS, "new": _STATS}}}},
            "Status": {"type": "object", "properties": {
                "replica": {"type": "string"}, "version": {"type": "integer"},
                "applied_at": {"type": "number"}, "config": {"type": "string"},
                "store": {"type": "object", "properties": {
                    "kind": {"enum": ["redis", "local"]}, "where": {"type": "string"},
                    "reachable": {"type": "boolean"}, "error": {"type": ["string", "null"]},
                    "degraded_since": _NPCT}},
                "routes": {"type": "array", "items": _ref("RouteView")}}},
            "AuditEntry": {"type": "object", "properties": {
                "id": {"type": "string"}, "ts": {"type": "number"}, "who": {"type": "string"},
                "source": {"enum": ["api", "cli", "dashboard", "guard", "ramp", "reload"]},
                "action": {"type": "string"}, "route": {"type": "string", "description": "* for reloads"},
                "from_percent": _NPCT, "to_percent": _NPCT, "reason": {"type": "string"},
                "detail": {"type": "string"}}},
        },
    },
}  # fmt: skip
