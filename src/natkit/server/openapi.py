"""The OpenAPI 3.1 description of the admin API, served at ``/openapi.json``.

One function builds the document from plain data, so the test suite can
check it against the routes the application registers
(:data:`natkit.server.admin.ENDPOINTS`): every route is described, nothing
else is, and every operation that needs a token says so.
"""

from typing import Any

from natkit import __version__

OPENAPI_VERSION = "3.1.0"

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {_JSON: {"schema": schema}}}


#: the answers every operation with a token may give
_AUTH_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "429": {"$ref": "#/components/responses/Throttled"},
}


def _op(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    role: str | None,
    tag: str,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One operation; ``role`` None means no token is needed."""
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": dict(responses),
    }
    if role is None:
        op["security"] = []
    else:
        op["description"] = f"Needs a token of role {role} or above."
        op["responses"].update(_AUTH_ERRORS)
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_REALM_PARAM = {
    "name": "realm",
    "in": "query",
    "required": False,
    "description": "The realm (default: the server's realm).",
    "schema": {"type": "string"},
}

_ERROR = _ref("Error")


def _schemas() -> dict[str, Any]:
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "listeners"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not-ready"]},
                "listeners": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Stats": {
            "type": "object",
            "description": "Counters of the STUN and TURN sides at one moment.",
            "required": ["stun", "streams", "turn"],
            "properties": {
                "stun": {"type": "object", "additionalProperties": {"type": "integer"}},
                "streams": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
                "turn": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": True},
                        {"type": "null"},
                    ]
                },
            },
        },
        "User": {
            "type": "object",
            "required": ["username", "realm", "algorithms", "created_at"],
            "properties": {
                "username": {"type": "string"},
                "realm": {"type": "string"},
                "algorithms": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["md5", "sha256"]},
                },
                "created_at": timestamp,
            },
        },
        "UserList": {
            "type": "object",
            "required": ["users"],
            "properties": {"users": {"type": "array", "items": _ref("User")}},
        },
        "UserCreate": {
            "type": "object",
            "required": ["username", "password"],
            "additionalProperties": False,
            "properties": {
                "username": {"type": "string"},
                "password": {"type": "string", "writeOnly": True},
                "realm": {"type": "string"},
                "algorithms": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["md5", "sha256"]},
                },
                "replace": {"type": "boolean", "default": False},
            },
        },
        "Secret": {
            "type": "object",
            "required": ["fingerprint", "newest"],
            "properties": {
                "fingerprint": {
                    "type": "string",
                    "description": "8 hex digits of the secret's SHA-256.",
                },
                "newest": {
                    "type": "boolean",
                    "description": "This secret mints new credentials.",
                },
            },
        },
        "SecretList": {
            "type": "object",
            "required": ["source", "secrets"],
            "properties": {
                "source": {
                    "type": "string",
                    "enum": ["data_dir", "config"],
                    "description": "config: auth_secret(_file), read-only here.",
                },
                "secrets": {"type": "array", "items": _ref("Secret")},
            },
        },
        "SecretAdd": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secret": {
                    "type": "string",
                    "writeOnly": True,
                    "description": "Base64, at least 16 bytes; random if left out.",
                }
            },
        },
        "SecretRotate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "retire_others": {
                    "type": "boolean",
                    "default": False,
                    "description": "Also retire every older secret at once.",
                }
            },
        },
        "SecretChange": {
            "type": "object",
            "required": ["fingerprint", "secrets"],
            "properties": {
                "fingerprint": {"type": "string"},
                "secrets": {"type": "array", "items": _ref("Secret")},
            },
        },
        "Allocation": {
            "type": "object",
            "required": [
                "id",
                "username",
                "transport",
                "client",
                "server",
                "relayed",
                "created_at",
                "expires_at",
            ],
            "properties": {
                "id": {"type": "string"},
                "username": {"type": "string"},
                "transport": {"type": "string", "enum": ["udp", "tcp", "tls"]},
                "client": {"type": "string"},
                "server": {"type": "string"},
                "relayed": {"type": "array", "items": {"type": "string"}},
                "created_at": timestamp,
                "expires_at": timestamp,
                "lifetime": {"type": "integer"},
                "permissions": {"type": "integer"},
                "channels": {"type": "integer"},
                "bytes_to_peer": {"type": "integer"},
                "packets_to_peer": {"type": "integer"},
                "bytes_to_client": {"type": "integer"},
                "packets_to_client": {"type": "integer"},
                "dropped": {"type": "integer"},
            },
        },
        "AllocationList": {
            "type": "object",
            "required": ["total", "allocations"],
            "properties": {
                "total": {"type": "integer"},
                "allocations": {"type": "array", "items": _ref("Allocation")},
            },
        },
        "Inventory": {
            "type": "object",
            "required": ["name", "version", "listeners"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "listeners": {"type": "array", "items": {"type": "string"}},
                "admin_listen": {"type": "string"},
                "record": {
                    "description": "The FedRAMP inventory record (natkit inventory)",
                    "oneOf": [
                        {"type": "object", "additionalProperties": True},
                        {"type": "null"},
                    ],
                },
            },
        },
        "Token": {
            "type": "object",
            "required": ["id", "name", "role", "created_at"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
                "name": {"type": "string"},
                "role": _ref("Role"),
                "created_at": timestamp,
            },
        },
        "IssuedToken": {
            "allOf": [
                _ref("Token"),
                {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        "token": {
                            "type": "string",
                            "description": "The bearer token; shown only once.",
                        }
                    },
                },
            ]
        },
        "TokenList": {
            "type": "object",
            "required": ["tokens"],
            "properties": {"tokens": {"type": "array", "items": _ref("Token")}},
        },
        "TokenCreate": {
            "type": "object",
            "required": ["name", "role"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "role": _ref("Role")},
        },
        "Role": {"type": "string", "enum": ["admin", "operator", "auditor"]},
    }


def _paths() -> dict[str, Any]:
    auditor, operator, admin = "auditor", "operator", "admin"
    not_found = {"404": _ok("Not found.", _ERROR)}
    conflict = {"409": _ok("Not possible in the current state.", _ERROR)}
    bad = {"400": _ok("The request is not valid.", _ERROR)}
    return {
        "/health": {
            "get": _op(
                "health",
                "Liveness: the process answers.",
                {"200": _ok("Alive.", _ref("Health"))},
                role=None,
                tag="probes",
            )
        },
        "/ready": {
            "get": _op(
                "ready",
                "Readiness: every STUN/TURN listener is open.",
                {
                    "200": _ok("Ready.", _ref("Ready")),
                    "503": _ok("Not ready.", _ref("Ready")),
                },
                role=None,
                tag="probes",
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "This document.",
                {"200": _ok("The OpenAPI document.", {"type": "object"})},
                role=None,
                tag="probes",
            )
        },
        "/metrics": {
            "get": {
                **_op(
                    "metrics",
                    "Prometheus metrics (text exposition format).",
                    {
                        "200": {
                            "description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                    role=auditor,
                    tag="metrics",
                ),
                "description": (
                    "Needs a token of any role; with metrics_public = true, "
                    "scrapes from a loopback address need none."
                ),
            }
        },
        "/v1/stats": {
            "get": _op(
                "getStats",
                "Server counters.",
                {"200": _ok("Counters.", _ref("Stats"))},
                role=auditor,
                tag="server",
            )
        },
        "/v1/inventory": {
            "get": _op(
                "getInventory",
                "What this server is: name, version, listeners, inventory record.",
                {"200": _ok("Inventory.", _ref("Inventory"))},
                role=auditor,
                tag="server",
            )
        },
        "/v1/users": {
            "get": _op(
                "listUsers",
                "Long-term TURN users of the store (never their keys).",
                {"200": _ok("Users.", _ref("UserList")), **conflict},
                role=auditor,
                tag="users",
                parameters=[_REALM_PARAM],
            ),
            "post": _op(
                "addUser",
                "Add (or replace) a long-term user; only derived keys are stored.",
                {"201": _ok("Added.", _ref("User")), **bad, **conflict},
                role=operator,
                tag="users",
                body=_json_body(_ref("UserCreate")),
            ),
        },
        "/v1/users/{username}": {
            "delete": _op(
                "removeUser",
                "Remove a long-term user.",
                {"204": _ok("Removed."), **not_found, **conflict},
                role=operator,
                tag="users",
                parameters=[_path_param("username", "The user."), _REALM_PARAM],
            )
        },
        "/v1/secrets": {
            "get": _op(
                "listSecrets",
                "REST shared secrets, by fingerprint, newest first.",
                {"200": _ok("Secrets.", _ref("SecretList"))},
                role=auditor,
                tag="secrets",
            ),
            "post": _op(
                "addSecret",
                "Add a REST secret in front (it mints from now on).",
                {"201": _ok("Added.", _ref("SecretChange")), **bad, **conflict},
                role=admin,
                tag="secrets",
                body=_json_body(_ref("SecretAdd"), required=False),
            ),
        },
        "/v1/secrets/rotate": {
            "post": _op(
                "rotateSecrets",
                "Add a new random secret; older ones stay valid unless retired.",
                {"201": _ok("Rotated.", _ref("SecretChange")), **bad, **conflict},
                role=admin,
                tag="secrets",
                body=_json_body(_ref("SecretRotate"), required=False),
            )
        },
        "/v1/secrets/{fingerprint}": {
            "delete": _op(
                "retireSecret",
                "Retire a secret: credentials minted with it stop working.",
                {
                    "200": _ok("Retired.", _ref("SecretChange")),
                    **bad,
                    **not_found,
                    **conflict,
                },
                role=admin,
                tag="secrets",
                parameters=[_path_param("fingerprint", "A fingerprint prefix.")],
            )
        },
        "/v1/allocations": {
            "get": _op(
                "listAllocations",
                "Live TURN allocations.",
                {"200": _ok("Allocations.", _ref("AllocationList")), **bad},
                role=auditor,
                tag="allocations",
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 10000,
                            "default": 1000,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                    },
                ],
            )
        },
        "/v1/allocations/{allocation_id}": {
            "delete": _op(
                "revokeAllocation",
                "Delete an allocation now and close its relay (RFC 8656 §7.3: "
                "the client's next Refresh gets 437).",
                {"204": _ok("Revoked."), **not_found, **conflict},
                role=operator,
                tag="allocations",
                parameters=[_path_param("allocation_id", "The allocation id.")],
            )
        },
        "/v1/tokens": {
            "get": _op(
                "listTokens",
                "Admin API tokens (never the tokens themselves).",
                {"200": _ok("Tokens.", _ref("TokenList"))},
                role=admin,
                tag="tokens",
            ),
            "post": _op(
                "createToken",
                "Create a token; the response holds it, once.",
                {"201": _ok("Created.", _ref("IssuedToken")), **bad},
                role=admin,
                tag="tokens",
                body=_json_body(_ref("TokenCreate")),
            ),
        },
        "/v1/tokens/{token_id}": {
            "delete": _op(
                "revokeToken",
                "Revoke a token (the last admin token cannot be revoked).",
                {"204": _ok("Revoked."), **not_found, **conflict},
                role=admin,
                tag="tokens",
                parameters=[_path_param("token_id", "The token id.")],
            )
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "natkit admin API",
            "version": __version__,
            "description": (
                "Administration of natkit serve over HTTPS (TLS 1.2+, AEAD "
                "suites), bearer tokens with the roles auditor < operator < "
                "admin. See docs/configuration.md."
            ),
        },
        "servers": [{"url": "https://127.0.0.1:8443"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": name}
            for name in (
                "probes",
                "metrics",
                "server",
                "users",
                "secrets",
                "allocations",
                "tokens",
            )
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "natkit.<id>.<secret>",
                }
            },
            "schemas": _schemas(),
            "responses": {
                "Unauthorized": _ok("No token, or not a valid one.", _ERROR),
                "Forbidden": _ok("The token's role does not allow this.", _ERROR),
                "Throttled": {
                    "description": "Too many failed logins from this source.",
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds to wait.",
                            "schema": {"type": "integer"},
                        }
                    },
                    "content": {_JSON: {"schema": _ERROR}},
                },
            },
        },
    }
