"""Plaid's error object, and the errors the emulated endpoints raise.

Every error answers with the HTTP status Plaid uses for its ``error_type`` and the body
``{error_type, error_code, error_message, display_message, request_id, documentation_url,
suggested_action}``; the same object inside a webhook or an Item has ``status`` (and ``causes``,
``error_code_reason``) instead of ``request_id``.
"""

from __future__ import annotations

from typing import Any

STATUS_BY_TYPE = {
    "INVALID_REQUEST": 400,
    "INVALID_INPUT": 400,
    "INVALID_RESULT": 400,
    "ITEM_ERROR": 400,
    "INSTITUTION_ERROR": 400,
    "SANDBOX_ERROR": 400,
    "RATE_LIMIT_EXCEEDED": 429,
    "API_ERROR": 500,
}

ITEM_LOGIN_REQUIRED_MESSAGE = (
    "the login details of this item have changed (credentials, MFA, or required user action) and a user "
    "login is required to update this information. use Link's update mode to restore the item to a good state"
)


def documentation_url(error_type: str, error_code: str) -> str:
    """Plaid's page for an error: ``ITEM_ERROR`` → ``/docs/errors/item/``, ``INVALID_INPUT`` →
    ``/docs/errors/invalid-input/``, anchored at the code."""
    page = error_type.removesuffix("_ERROR").lower().replace("_", "-")
    return f"https://plaid.com/docs/errors/{page}/#{error_code.lower()}"


def error_object(
    *,
    error_type: str,
    error_code: str,
    error_message: str,
    display_message: str | None = None,
    request_id: str | None = None,
    status: int | None = None,
    suggested_action: str | None = None,
) -> dict[str, Any]:
    """Plaid's error object. An API error answer carries the ``request_id`` (its HTTP status is the
    response's); an error inside a webhook or an Item carries the ``status`` and ``causes`` instead
    and no ``request_id``: pass ``request_id`` for the first, leave it out for the second."""
    error: dict[str, Any] = {
        "error_type": error_type,
        "error_code": error_code,
        "error_message": error_message,
        "display_message": display_message,
    }
    if request_id is not None:
        error["request_id"] = request_id
    else:
        error["error_code_reason"] = None
        error["status"] = status if status is not None else STATUS_BY_TYPE.get(error_type, 400)
        error["causes"] = []
    error["documentation_url"] = documentation_url(error_type, error_code)
    error["suggested_action"] = suggested_action
    return error


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
        """The answer's body (its HTTP status is :attr:`status`)."""
        return error_object(
            error_type=self.error_type,
            error_code=self.error_code,
            error_message=self.error_message,
            display_message=self.display_message,
            request_id=request_id,
        )


def invalid_request(code: str, message: str) -> PlaidAPIError:
    return PlaidAPIError("INVALID_REQUEST", code, message)


def invalid_input(code: str, message: str) -> PlaidAPIError:
    return PlaidAPIError("INVALID_INPUT", code, message)


def item_error(code: str, message: str, display_message: str | None = None) -> PlaidAPIError:
    return PlaidAPIError("ITEM_ERROR", code, message, display_message=display_message)


def sandbox_error(code: str, message: str) -> PlaidAPIError:
    return PlaidAPIError("SANDBOX_ERROR", code, message)


def item_not_found() -> PlaidAPIError:
    """An access token of an Item removed with ``/item/remove``."""
    return item_error(
        "ITEM_NOT_FOUND",
        "The Item you requested cannot be found. This Item does not exist, has been previously removed "
        "via /item/remove, or has had access removed by the user.",
    )


def item_login_required() -> PlaidAPIError:
    return item_error("ITEM_LOGIN_REQUIRED", ITEM_LOGIN_REQUIRED_MESSAGE)


def item_login_required_object() -> dict[str, Any]:
    """The ``error`` an Item carries (and the ITEM ERROR webhook sends) while login is required."""
    return error_object(
        error_type="ITEM_ERROR", error_code="ITEM_LOGIN_REQUIRED", error_message=ITEM_LOGIN_REQUIRED_MESSAGE
    )


# -- Errors a Sandbox Item's creation can meet ---------------------------------------------------
# (error_type, error_message, display_message), as the sample responses in plaid.com/docs/errors/item/,
# /errors/institution/ and /errors/api/ give them. ``user_good`` with password ``error_<CODE>`` and
# ``user_custom`` with ``force_error`` make /sandbox/public_token/create fail with these.

INVALID_CREDENTIALS_MESSAGE = "the provided credentials were not correct"
_INSTITUTION_UNRESPONSIVE = (
    "this institution is not currently responding to this request. please try again soon",
    "This financial institution is not currently responding to requests. We apologize for the inconvenience.",
)
CREATION_ERRORS: dict[str, tuple[str, str, str | None]] = {
    "INSUFFICIENT_CREDENTIALS": (
        "ITEM_ERROR",
        "insufficient authorization was provided to complete the request",
        "INSUFFICIENT_CREDENTIALS",
    ),
    "INVALID_CREDENTIALS": (
        "ITEM_ERROR",
        INVALID_CREDENTIALS_MESSAGE,
        "The provided credentials were not correct. Please try again.",
    ),
    "INVALID_MFA": (
        "ITEM_ERROR",
        "the provided MFA response(s) were not correct",
        "The provided MFA responses were not correct. Please try again.",
    ),
    "INVALID_SEND_METHOD": ("ITEM_ERROR", "the provided MFA send_method was invalid", None),
    "ITEM_LOCKED": (
        "ITEM_ERROR",
        "the account is locked. prompt the user to visit the institution's site and unlock their account",
        "The given account has been locked by the financial institution. Please visit your financial "
        "institution's website to unlock your account.",
    ),
    "ITEM_LOGIN_REQUIRED": ("ITEM_ERROR", ITEM_LOGIN_REQUIRED_MESSAGE, None),
    "ITEM_NOT_SUPPORTED": (
        "ITEM_ERROR",
        "this account is currently not supported",
        "The given account is not currently supported for this financial institution. We apologize for the "
        "inconvenience.",
    ),
    "MFA_NOT_SUPPORTED": (
        "ITEM_ERROR",
        "this account requires a MFA type that we do not currently support for the institution",
        "The multi-factor security features enabled on this account are not currently supported for this "
        "financial institution. We apologize for the inconvenience.",
    ),
    "NO_ACCOUNTS": (
        "ITEM_ERROR",
        "no valid accounts were found for this item",
        "No valid accounts were found at the financial institution. Please visit your financial "
        "institution's website to confirm accounts are available.",
    ),
    "USER_INPUT_TIMEOUT": (
        "ITEM_ERROR",
        "user must retry this operation",
        "The application timed out waiting for user input",
    ),
    "USER_SETUP_REQUIRED": (
        "ITEM_ERROR",
        "the account has not been fully set up. prompt the user to visit the issuing institution's site and "
        "finish the setup process",
        "The given account is not fully setup. Please visit your financial institution's website to setup "
        "your account.",
    ),
    "INSTITUTION_DOWN": ("INSTITUTION_ERROR", *_INSTITUTION_UNRESPONSIVE),
    "INSTITUTION_NOT_RESPONDING": ("INSTITUTION_ERROR", *_INSTITUTION_UNRESPONSIVE),
    "INSTITUTION_NOT_AVAILABLE": ("INSTITUTION_ERROR", *_INSTITUTION_UNRESPONSIVE),
    "INSTITUTION_NO_LONGER_SUPPORTED": (
        "INSTITUTION_ERROR",
        "this institution is no longer supported",
        "This financial institution is no longer supported. We apologize for the inconvenience.",
    ),
    # API_ERROR answers HTTP 500 (STATUS_BY_TYPE).
    "INTERNAL_SERVER_ERROR": ("API_ERROR", "an unexpected error occurred", None),
    "INVALID_LINK_TOKEN": ("INVALID_INPUT", "invalid link_token provided", None),
}


def creation_error(code: str) -> PlaidAPIError:
    """The error for ``code`` (a key of :data:`CREATION_ERRORS`)."""
    error_type, message, display = CREATION_ERRORS[code]
    return PlaidAPIError(error_type, code, message, display_message=display)


def invalid_credentials() -> PlaidAPIError:
    return creation_error("INVALID_CREDENTIALS")
