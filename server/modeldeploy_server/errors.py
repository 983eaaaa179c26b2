"""The one error hierarchy of the server: each request error carries its HTTP status.

Raised by `protocol`, `contract` and `service`; turned into `{"error": "..."}` responses in one
place (`app`). `LoadRefused` is different: a startup refusal (bad digest, unsafe format, version
mismatch, failed self-check) that ends the process with one clear line and a non-zero exit code.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be answered with a prediction; `status` is the HTTP status code."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedRequest(RequestError):
    """The body is not JSON (or not the JSON shape of the endpoint at all)."""

    status = 400


class NotFound(RequestError):
    """Unknown model name or path."""

    status = 404


class MethodNotAllowed(RequestError):
    status = 405


class PayloadTooLarge(RequestError):
    """Body over `MODELDEPLOY_MAX_BODY_BYTES`."""

    status = 413


class ContractViolation(RequestError):
    """The input breaks the input contract: names the row, the feature and the reason."""

    status = 422

    def __init__(self, message: str, reason: str, row: int | None = None, feature: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.row = row
        self.feature = feature


class NotReady(RequestError):
    """The model is not loaded (yet), or the server is shutting down."""

    status = 503


class ModelFailure(RequestError):
    """The model itself raised on input that passed the contract."""

    status = 500


class LoadRefused(Exception):
    """The artifact must not be served: the message is the one line printed before exiting non-zero."""

    exit_code = 2
