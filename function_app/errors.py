"""The one error type handlers raise, and how ACS SDK errors map onto it (502 with ACS's code and message)."""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError


class ApiError(Exception):
    """An answer to the client: HTTP status, a stable code, a safe message, and the request field at fault."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        err.update(self.extra)
        return {"error": err}


def bad_request(field: str, message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", f"{field}: {message}", field=field)


def from_acs(exc: AzureError, action: str) -> ApiError:
    """ACS said no (or could not be reached). 404 on an existing-call action stays a 404; the rest is a 502."""
    if isinstance(exc, HttpResponseError):
        err = getattr(exc, "error", None)
        code = getattr(err, "code", None) or (exc.reason or "Unknown")
        message = getattr(err, "message", None) or exc.message or str(exc)
        if isinstance(exc, ResourceNotFoundError) and action != "create_call":
            return ApiError(404, "CallNotFound", f"ACS does not know this call: {message}",
                            acsStatus=exc.status_code, acsCode=code)
        return ApiError(502, "AcsError", f"ACS {action} failed: {message}",
                        acsStatus=exc.status_code, acsCode=code, acsMessage=message)
    return ApiError(502, "AcsUnreachable", f"ACS {action} failed: {exc.__class__.__name__}")
