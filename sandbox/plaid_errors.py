"""Plaid's error object, and the errors the emulated endpoints raise.

Every error answers with the HTTP status Plaid uses for its ``error_type`` and the body
``{error_type, error_code, error_message, display_message, request_id, ...}``.
"""

from __future__ import annotations

from typing import Any

STATUS_BY_TYPE = {
    "INVALID_REQUEST": 400,
    "INVALID_INPUT": 400,
    "INVALID_RESULT": 400,
    "ITEM_ERROR": 400,
    "INSTITUTION_ERROR": 400,
    "RATE_LIMIT_EXCEEDED": 429,
    "API_ERROR": 500,
}

ITEM_LOGIN_REQUIRED_MESSAGE = (
    "the login details of this item have changed (credentials, MFA, or required user action) and a user "
    "login is required to update this information. use Link's update mode to restore the item to a good state"
)


def documentation_url(error_type: str, error_code: str) -> str:
    return f"https://plaid.com/docs/errors/{error_type.lower().replace('_', '-')}/#{error_code.lower()}"


def error_object(
    *,
    error_type: str,
    error_code: str,
    error_message: str,
    display_message: str | None = None,
    request_id: str = "",
    status: int | None = None,
    suggested_action: str | None = None,
) -> dict[str, Any]:
    """Plaid's error object, as both error responses and webhook ``error`` fields carry it."""
    return {
        "error_type": error_type,
        "error_code": error_code,
        "error_code_reason": None,
        "error_message": error_message,
        "display_message": display_message,
        "request_id": request_id,
        "causes": [],
        "status": status if status is not None else STATUS_BY_TYPE.get(error_type, 400),
        "documentation_url": documentation_url(error_type, error_code),
        "suggested_action": suggested_action,
    }


class PlaidAPIError(Exception):
    """An emulated Plaid endpoint refused the request."""

    def __init__(
        self,
        error_type: str,
        error_code: str,
        error_message: str,
        *,
        display_message: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{error_type}/{error_code}: {error_message}")
        self.error_type = error_type
        self.error_code = error_code
        self.error_message = error_message
        self.display_message = display_message
        self.status = status if status is not None else STATUS_BY_TYPE.get(error_type, 400)

    def body(self, request_id: str) -> dict[str, Any]:
        return error_object(
            error_type=self.error_type,
            error_code=self.error_code,
            error_message=self.error_message,
            display_message=self.display_message,
            request_id=request_id,
            status=self.status,
        )


def invalid_request(code: str, message: str) -> PlaidAPIError:
    return PlaidAPIError("INVALID_REQUEST", code, message)


def invalid_input(code: str, message: str) -> PlaidAPIError:
    return PlaidAPIError("INVALID_INPUT", code, message)


def item_error(code: str, message: str, display_message: str | None = None) -> PlaidAPIError:
    return PlaidAPIError("ITEM_ERROR", code, message, display_message=display_message)


def item_login_required() -> PlaidAPIError:
    return item_error("ITEM_LOGIN_REQUIRED", ITEM_LOGIN_REQUIRED_MESSAGE)


def item_login_required_object() -> dict[str, Any]:
    """The ``error`` an Item carries (and the ITEM ERROR webhook sends) while login is required."""
    return error_object(
        error_type="ITEM_ERROR", error_code="ITEM_LOGIN_REQUIRED", error_message=ITEM_LOGIN_REQUIRED_MESSAGE
    )
