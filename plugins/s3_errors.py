"""The one table from what boto3 raises to gateway errors (as s3fs/errors.py does for s3fs).

Remote error codes that mean the same to our client pass through as the
same S3 error; "not found" becomes NoSuchBucket or NoSuchKey with *our*
bucket and key names (the remote ones may carry a prefix); anything that
says the remote store is down, slow or refusing us becomes a 503, never a
500 and never a hang (botocore's connect and read timeouts bound each try).
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from gateway import errors

# Remote error code -> gateway error class, for codes that mean the same thing to our client.
SAME_MEANING: dict[str, type[errors.GatewayError]] = {
    "InvalidRange": errors.InvalidRange,
    "BucketNotEmpty": errors.BucketNotEmpty,
    "BucketAlreadyOwnedByYou": errors.BucketAlreadyOwnedByYou,
    "BucketAlreadyExists": errors.BucketAlreadyOwnedByYou,
    "NoSuchUpload": errors.NoSuchUpload,
    "InvalidPart": errors.InvalidPart,
    "InvalidPartOrder": errors.InvalidPartOrder,
    "EntityTooSmall": errors.EntityTooSmall,
    "EntityTooLarge": errors.EntityTooLarge,
    "KeyTooLongError": errors.KeyTooLongError,
    "MetadataTooLarge": errors.MetadataTooLarge,
    "BadDigest": errors.BadDigest,
    "InvalidDigest": errors.InvalidDigest,
    "IncompleteBody": errors.IncompleteBody,
    "PreconditionFailed": errors.PreconditionFailed,
    "MalformedXML": errors.MalformedXML,
    "InvalidBucketName": errors.InvalidBucketName,
    "SlowDown": errors.SlowDown,
}
# Remote codes that mean the remote store is unusable for us now: a 503 naming the cause.
UNAVAILABLE = {
    "AccessDenied": "the remote store denied access (check the credentials and their permissions)",
    "InvalidAccessKeyId": "the remote store does not know the access key (setting access_key_id)",
    "SignatureDoesNotMatch": "the remote store rejected the signature (setting secret_access_key)",
    "ExpiredToken": "the remote credentials have expired",
    "InvalidToken": "the remote credentials are not valid",
    "RequestTimeTooSkewed": "this host's clock differs too much from the remote store's",
    "ServiceUnavailable": "the remote store is unavailable",
    "InternalError": "the remote store had an internal error",
    "RequestTimeout": "the remote store timed out",
    "Throttling": "the remote store is throttling requests",
    "ThrottlingException": "the remote store is throttling requests",
    "TooManyRequests": "the remote store is throttling requests",
}
# The UNAVAILABLE codes of a store that is not serving now, whatever the status says.
PASSING = frozenset({"ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException",
                     "TooManyRequests"})
NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
# What a client should wait before retrying a 503 from this backend (remote store down, slow, throttling).
RETRY_AFTER = "5"


def retry_later(error: errors.GatewayError) -> errors.GatewayError:
    """A 503 says when to retry (Retry-After), as the gateway's other 503s do."""
    if error.status == 503:
        error.headers.setdefault("Retry-After", "1" if error.code == "SlowDown" else RETRY_AFTER)
    return error


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def translate(exc: BaseException, where: str, bucket: str = "", key: str | None = None) -> BaseException:
    """Return the gateway error for ``exc`` (raised by a boto3 call about ``bucket``/``key``); a 503 carries
    Retry-After."""
    translated = _translate(exc, where, bucket, key)
    return retry_later(translated) if isinstance(translated, errors.GatewayError) else translated


def _translate(exc: BaseException, where: str, bucket: str, key: str | None) -> BaseException:
    if isinstance(exc, errors.GatewayError):
        return exc
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in NOT_FOUND or (status == 404 and not code):
            if code == "NoSuchKey" or (key is not None and code != "NoSuchBucket"):
                return errors.NoSuchKey(Key=key or "")
            return errors.NoSuchBucket(BucketName=bucket)
        if code in SAME_MEANING:
            error = SAME_MEANING[code](message)
            return error
        if code in UNAVAILABLE:
            # Not serving now (its 5xx, throttling) passes; refused credentials or a clock off do not.
            passes = status >= 500 or status == 429 or code in PASSING
            kind = errors.BackendUnreachable if passes else errors.BackendUnavailable
            return kind(f"{where}: {UNAVAILABLE[code]} ({code})")
        if status == 416:
            return errors.InvalidRange()
        if status == 412:
            return errors.PreconditionFailed()
        if status in (403, 401):
            return errors.BackendUnavailable(f"{where}: the remote store refused the request ({status} {code})")
        if status == 429 or status >= 500:
            return errors.BackendUnreachable(f"{where}: the remote store answered {status} {code}")
        if 400 <= status < 500:
            return errors.InvalidRequest(f"{where}: the remote store refused the request: {code}: {message}")
        return errors.BackendUnavailable(f"{where}: unexpected answer from the remote store: {code or status}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        return errors.BackendUnreachable(f"{where}: the remote store cannot be reached ({exc})")
    if isinstance(exc, ReadTimeoutError):
        return errors.BackendUnreachable(f"{where}: the remote store did not answer in time ({exc})")
    if isinstance(exc, NoCredentialsError):
        return errors.BackendUnavailable(f"{where}: no credentials found (settings access_key_id/secret_access_key, "
                                         f"or the AWS credentials chain)")
    if isinstance(exc, ParamValidationError):
        return errors.InvalidArgument(f"{where}: {exc}")
    if isinstance(exc, (BotoCoreError, ConnectionError, TimeoutError)):
        return errors.BackendUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    return exc
