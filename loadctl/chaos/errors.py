"""The error the chaos API answers with, in Toxiproxy's shape."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """`{"error": message, "status": status}` with that HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_body(detail: str) -> ApiError:
    return ApiError(400, f"bad request body: {detail}")


def missing_field(name: str) -> ApiError:
    return ApiError(400, f"missing required field: {name}")


PROXY_NOT_FOUND = (404, "proxy not found")
PROXY_EXISTS = (409, "proxy already exists")
TOXIC_NOT_FOUND = (404, "toxic not found")
TOXIC_EXISTS = (409, "toxic already exists")
INVALID_STREAM = (400, "stream was invalid, can be either upstream or downstream")
INVALID_TYPE = (400, "invalid toxic type")
