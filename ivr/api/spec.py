"""The OpenAPI 3.1 document of ``/api/v1``, served at ``/api/v1/openapi.json``.

A test checks that every route the service registers is described here and nothing more.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}
_COMMON_ERRORS = {
    "401": {**_ERROR, "description": "missing, unknown or expired token"},
    "403": {**_ERROR, "description": "the token's role may not do this"},
}
_RECORDING_ID = {
    "name": "recording_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_REASON_QUERY = {
    "name": "reason",
    "in": "query",
    "required": True,
    "description": "why; recorded in the audit log",
    "schema": {"type": "string"},
}
_REASON_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["reason"],
                "properties": {"reason": {"type": "string"}},
            }
        }
    }
}
_SUBJECT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["phone", "reason"],
                "properties": {
                    "phone": {"type": "string", "description": "E.164, or national + region"},
                    "region": {"type": "string", "description": "e.g. SE"},
                    "reason": {"type": "string"},
                    "language": {"type": "string", "enum": ["en", "sv"]},
                },
            }
        }
    },
}
_RECORDING = {"$ref": "#/components/schemas/Recording"}


def _ok(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": "ok", "content": {media: {"schema": schema}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ivr-consent admin API",
        "version": "1",
        "description": (
            "Recordings, legal holds, subject requests and retention for one tenant per token. "
            "Roles: dpo (everything), supervisor (list, show, audio, withdraw), admin (list, "
            "show, retention), agent (withdraw a live call's recording for its caller). Another "
            "tenant's recording or call answers 404. Every request is audited."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Recording": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "tenant": {"type": "string"},
                    "status": {
                        "type": "string",
                        "enum": [
                            "recording",
                            "complete",
                            "incomplete",
                            "discarded",
                            "erased",
                            "failed",
                        ],
                    },
                    "lawful_basis": {
                        "type": "string",
                        "enum": [
                            "consent",
                            "contract",
                            "legal_obligation",
                            "vital_interests",
                            "public_task",
                            "legitimate_interests",
                        ],
                    },
                    "purpose": {"type": "string"},
                    "consent_evidence": {"type": ["object", "null"]},
                    "started_at": {"type": "string"},
                    "ended_at": {"type": ["string", "null"]},
                    "duration_ms": {"type": ["integer", "null"]},
                    "retention_until": {"type": ["string", "null"]},
                    "legal_hold": {"type": "boolean"},
                    "legal_hold_reason": {"type": ["string", "null"]},
                },
                "additionalProperties": True,
            }
        },
    },
    "paths": {
        "/api/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": _ok({"type": "object"}),
            }
        },
        "/api/v1/recordings": {
            "get": {
                "summary": "the tenant's recordings",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {"recordings": {"type": "array", "items": _RECORDING}},
                        }
                    ),
                    "400": _ERROR,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/v1/recordings/{recording_id}": {
            "get": {
                "summary": "one recording's record",
                "parameters": [_RECORDING_ID],
                "responses": {**_ok(_RECORDING), "404": _ERROR, **_COMMON_ERRORS},
            },
            "delete": {
                "summary": "erase (crypto-shred) a recording; dpo",
                "parameters": [_RECORDING_ID],
                "requestBody": _REASON_BODY,
                "responses": {
                    **_ok(_RECORDING),
                    "400": _ERROR,
                    "404": _ERROR,
                    "409": {**_ERROR, "description": "under legal hold, or still recording"},
                    **_COMMON_ERRORS,
                },
            },
        },
        "/api/v1/recordings/{recording_id}/audio": {
            "get": {
                "summary": "the recording as WAV, streamed (audited); dpo, supervisor",
                "parameters": [_RECORDING_ID, _REASON_QUERY],
                "responses": {
                    **_ok({"type": "string", "format": "binary"}, "audio/wav"),
                    "400": _ERROR,
                    "404": _ERROR,
                    "409": {**_ERROR, "description": "nothing to play (erased, discarded)"},
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/v1/recordings/{recording_id}/hold": {
            "post": {
                "summary": "put a legal hold on a recording; dpo",
                "parameters": [_RECORDING_ID],
                "requestBody": _REASON_BODY,
                "responses": {**_ok(_RECORDING), "400": _ERROR, "404": _ERROR, **_COMMON_ERRORS},
            },
            "delete": {
                "summary": "release a legal hold; dpo",
                "parameters": [_RECORDING_ID],
                "requestBody": _REASON_BODY,
                "responses": {
                    **_ok(_RECORDING),
                    "400": _ERROR,
                    "404": _ERROR,
                    "409": _ERROR,
                    **_COMMON_ERRORS,
                },
            },
        },
        "/api/v1/subject/export": {
            "post": {
                "summary": "everything about one caller, as a zip (Art. 15); dpo",
                "requestBody": _SUBJECT_BODY,
                "responses": {
                    **_ok({"type": "string", "format": "binary"}, "application/zip"),
                    "400": _ERROR,
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/v1/subject/erase": {
            "post": {
                "summary": "erase every recording of one caller (Art. 17); dpo",
                "requestBody": _SUBJECT_BODY,
                "responses": {**_ok({"type": "object"}), "400": _ERROR, **_COMMON_ERRORS},
            }
        },
        "/api/v1/calls/{call_id}/withdraw": {
            "post": {
                "summary": (
                    "stop a live call's recording for the caller who asked (the withdraw key's "
                    "step, by the agent; discarded or kept as the line says); agent, supervisor, "
                    "dpo"
                ),
                "parameters": [
                    {
                        "name": "call_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"note": {"type": "string", "maxLength": 500}},
                            }
                        }
                    },
                },
                "responses": {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {
                                "call_id": {"type": "string"},
                                "withdrawn": {"type": "boolean"},
                                "recording_id": {"type": ["string", "null"]},
                                "recording_status": {"type": ["string", "null"]},
                            },
                        }
                    ),
                    "400": _ERROR,
                    "404": {**_ERROR, "description": "no such call in progress for the tenant"},
                    "409": {
                        **_ERROR,
                        "description": "nothing is recorded, or the basis gives no withdrawal",
                    },
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/v1/retention": {
            "get": {
                "summary": "what is kept until when, what is overdue, what is held; dpo, admin",
                "responses": {**_ok({"type": "object"}), **_COMMON_ERRORS},
            }
        },
    },
}
