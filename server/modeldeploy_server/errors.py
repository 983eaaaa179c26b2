"""The one error table of the server: each request error carries its HTTP status and metric outcome.

Raised by `protocol`, `contract`, `service` and `app`; turned into `{"error": "..."}` responses in
one place (`app`), and counted in one place (`app` -> `metrics`). The `outcome` label says whose
fault an answer is: `success`, `rejected` (the client's request, 4xx), `error` (the model or the
server failed, 5xx: the canary's error rate), `unavailable` (503: not loaded yet or draining) and
`client_closed` (499: the client went away before its answer; no response is sent).
`LoadRefused` is different: a startup refusal (bad digest, unsafe format, version mismatch, failed
self-check) that ends the process with one clear line and a non-zero exit code.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be answered with a prediction: HTTP `status`, metric `outcome`."""

    status, outcome = 500, "error"

    def __init__(self, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


# class                                        status  outcome           meaning
class MalformedRequest(RequestError):
    status, outcome = 400, "rejected"  # not JSON, not UTF-8, or not the endpoint's JSON shape


class NotFound(RequestError):
    status, outcome = 404, "rejected"  # unknown model, version or path


class Forbidden(RequestError):
    status, outcome = 403, "rejected"  # a shadow endpoint called without this ModelDeployment's token


class MethodNotAllowed(RequestError):
    status, outcome = 405, "rejected"  # the route exists; `headers` carries `Allow`


class PayloadTooLarge(RequestError):
    status, outcome = 413, "rejected"  # body over MAX_BODY_BYTES, rows over MAX_REQUEST_ROWS


class UnsupportedMediaType(RequestError):
    status, outcome = 415, "rejected"  # a Content-Type that is not JSON


class ContractViolation(RequestError):
    """422: the input breaks the input contract; names the row, the feature and the reason."""

    status, outcome = 422, "rejected"

    def __init__(self, message: str, reason: str, row: int | None = None, feature: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.row = row
        self.feature = feature


class ClientClosed(RequestError):
    status, outcome = 499, "client_closed"  # the client disconnected first: nobody to answer, not an error


class ModelFailure(RequestError):
    status, outcome = 500, "error"  # the model raised, or answered NaN/inf, on contract-valid input


class NonFiniteOutput(ModelFailure):
    """500: the model answered NaN or inf for `rows` of the request's rows (counted apart too)."""

    def __init__(self, message: str, rows: int) -> None:
        super().__init__(message)
        self.rows = rows


class NotReady(RequestError):
    status, outcome = 503, "unavailable"  # not loaded (yet), or shutting down


# status -> outcome, for every status a request can end in (`metrics` pre-creates these series)
OUTCOMES: dict[int, str] = {200: "success"} | {
    cls.status: cls.outcome
    for cls in (MalformedRequest, NotFound, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType,
                ContractViolation, ClientClosed, ModelFailure, NotReady)
}  # fmt: skip


def outcome_of(status: int) -> str:
    return OUTCOMES.get(status) or ("success" if status < 400 else "rejected" if status < 500 else "error")


class LoadRefused(Exception):
    """The artifact must not be served: the message is the one line printed before exiting non-zero."""

    exit_code = 2
