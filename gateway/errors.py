"""Errors every layer raises; the S3 API turns each into its XML error body.

Each class carries the S3 error code and HTTP status, so there is exactly one
table from failure to response (the classes themselves).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: ``code`` and ``status`` are what an S3 client sees."""

    code = "InternalError"
    status = 500
    default_message = "We encountered an internal error. Please try again."
    retry_after: str | None = None  # seconds, for the Retry-After header of every error of this class

    def __init__(self, message: str | None = None, **fields: str):
        self.message = message or self.default_message
        # Extra elements for the XML body (BucketName, Key, UploadId, ...).
        self.fields = fields
        # Extra response headers (Retry-After, ...).
        self.headers: dict[str, str] = {"Retry-After": self.retry_after} if self.retry_after else {}
        super().__init__(self.message)


def _error(name: str, status: int, message: str, base: type = GatewayError) -> type:
    return type(name, (base,), {"code": name, "status": status, "default_message": message})


# Not found
NoSuchBucket = _error("NoSuchBucket", 404, "The specified bucket does not exist.")
NoSuchKey = _error("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _error(
    "NoSuchUpload", 404,
    "The specified multipart upload does not exist. The upload ID might be invalid, "
    "or the multipart upload might have been aborted or completed.",
)

# Conflicts
BucketAlreadyOwnedByYou = _error(
    "BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket succeeded and you already own it."
)
BucketNotEmpty = _error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty.")

# Bad requests
InvalidBucketName = _error("InvalidBucketName", 400, "The specified bucket is not valid.")
KeyTooLongError = _error("KeyTooLongError", 400, "Your key is too long.")
InvalidArgument = _error("InvalidArgument", 400, "Invalid Argument.")
InvalidURI = _error("InvalidURI", 400, "Couldn't parse the specified URI.")
RequestHeaderSectionTooLarge = _error(
    "RequestHeaderSectionTooLarge", 400, "Your request header section exceeds the maximum allowed size."
)
InvalidRequest = _error("InvalidRequest", 400, "Invalid Request.")
InvalidRedirectLocation = _error(
    "InvalidRedirectLocation", 400, "The website redirect location must have a prefix of 'http://' or 'https://' or '/'.")
MalformedXML = _error(
    "MalformedXML", 400, "The XML you provided was not well-formed or did not validate against our published schema."
)
InvalidPart = _error(
    "InvalidPart", 400,
    "One or more of the specified parts could not be found. The part might not have been uploaded, "
    "or the specified entity tag might not have matched the part's entity tag.",
)
InvalidPartOrder = _error(
    "InvalidPartOrder", 400, "The list of parts was not in ascending order. Parts must be ordered by part number."
)
EntityTooSmall = _error("EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed object size.")
EntityTooLarge = _error("EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed object size.")
BadDigest = _error("BadDigest", 400, "The Content-MD5 or checksum you specified did not match what we received.")
InvalidDigest = _error("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
IncompleteBody = _error("IncompleteBody", 400, "You did not provide the number of bytes specified by the Content-Length HTTP header.")
MissingContentLength = _error("MissingContentLength", 411, "You must provide the Content-Length HTTP header.")
XAmzContentSHA256Mismatch = _error(
    "XAmzContentSHA256Mismatch", 400, "The provided 'x-amz-content-sha256' header does not match what was computed."
)
MetadataTooLarge = _error("MetadataTooLarge", 400, "Your metadata headers exceed the maximum allowed metadata size (2 KB).")


class InvalidRange(_error("InvalidRange", 416, "The requested range is not satisfiable")):
    """416 with the object's size in ``Content-Range: bytes */SIZE`` (RFC 9110 15.5.17; curl and download
    managers look for it there) as well as in ActualObjectSize; also when rebuilt from a peer's answer."""

    def __init__(self, message: str | None = None, **fields: str):
        super().__init__(message, **fields)
        if "ActualObjectSize" in fields:
            self.headers["Content-Range"] = f"bytes */{fields['ActualObjectSize']}"


RequestTimeout = _error("RequestTimeout", 400, "Your socket connection to the server was not read from or written to within the timeout period.")
MethodNotAllowed = _error("MethodNotAllowed", 405, "The specified method is not allowed against this resource.")
NotImplementedError_ = _error("NotImplemented", 501, "A header or query you provided implies functionality that is not implemented.")

# Conditional requests
PreconditionFailed = _error("PreconditionFailed", 412, "At least one of the preconditions you specified did not hold.")


class NotModified(GatewayError):
    """304: not an error for the client, but it ends the request the same way."""

    code = "NotModified"
    status = 304
    default_message = "Not Modified"


# Authentication
AccessDenied = _error("AccessDenied", 403, "Access Denied")
InvalidAccessKeyId = _error(
    "InvalidAccessKeyId", 403, "The AWS Access Key Id you provided does not exist in our records."
)
SignatureDoesNotMatch = _error(
    "SignatureDoesNotMatch", 403,
    "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
)
RequestTimeTooSkewed = _error(
    "RequestTimeTooSkewed", 403, "The difference between the request time and the server's time is too large."
)
AuthorizationHeaderMalformed = _error(
    "AuthorizationHeaderMalformed", 400, "The authorization header you provided is invalid."
)
AuthorizationQueryParametersError = _error(
    "AuthorizationQueryParametersError", 400, "Error parsing the X-Amz-Credential parameter."
)

# Server side
InternalError = _error("InternalError", 500, GatewayError.default_message)
ServiceUnavailable = _error("ServiceUnavailable", 503, "The storage behind this gateway is unavailable. Please retry.")
SlowDown = _error("SlowDown", 503, "Please reduce your request rate.")
# Every 503 says when to come back, whichever backend or layer raised it (a raiser may set another
# value): without it a client retries at once, and an S3 SDK's backoff is its only guide.
ServiceUnavailable.retry_after = "5"
SlowDown.retry_after = "1"
# 507 (RFC 4918): not retried by S3 clients, which is right, a full disk does not clear itself.
InsufficientStorage = _error("InsufficientStorage", 507, "The storage behind this gateway is full.")
FULL_ERRNOS = frozenset({28, 122})  # ENOSPC, EDQUOT
# The filesystem under the store failed, not the request: an I/O error, a filesystem the kernel
# remounted read-only after errors, an NFS handle gone stale.
FAILED_ERRNOS = frozenset({5, 30, 116})  # EIO, EROFS, ESTALE
DENIED_ERRNOS = frozenset({1, 13})  # EPERM, EACCES: the files belong to another user, or their modes shut it out
# This process (EMFILE) or the whole system (ENFILE) has no file descriptor left: too much at once, not a fault
# of the request or of the store.
DESCRIPTORS_ERRNOS = frozenset({23, 24})


class BackendUnavailable(ServiceUnavailable):
    """A backend could not be reached (server down, timeout); always a 503, never a hang."""


class NodeUnreachable(ServiceUnavailable):
    """A cluster node that holds (or would take) the object could not be reached: the node, not its
    store; so not a BackendUnavailable, which leaves a store out of write placement (cluster/unwritable.py)."""


class NodeCatchingUp(ServiceUnavailable):
    """A node that has just run again after standing still refuses a peer's write for a moment (its
    senders gave up on the ones sent meanwhile): the sender places the write on another node."""


class BackendUnreachable(BackendUnavailable):
    """The backend's store did not answer at all, or answered that it is not serving now (refused or
    reset connection, a timeout, a 5xx): something that passes, unlike a refused password or a missing
    share. Raised by a backend's start(), the gateway starts without that backend and tries again
    (gateway/services/pending.py); raised later, it is a 503 like any BackendUnavailable."""


def storage_error(exc: BaseException, where: str = "the storage behind this gateway") -> GatewayError | None:
    """The answer to an OSError of the filesystem under a store that no backend turned into one, or None.

    Out of space (ENOSPC, EDQUOT) is 507, which S3 clients do not retry; a failed filesystem (EIO,
    EROFS, ESTALE) is a 503 with Retry-After, which they do. In a cluster either makes the node that
    placed the write place it again on another node (docs/cluster.md, "A write placed again"). Both
    name the cause and what to do.
    """
    if not isinstance(exc, OSError):
        return None
    cause = exc.strerror or str(exc)
    subject = where[:1].upper() + where[1:]
    if exc.errno in FULL_ERRNOS:
        return InsufficientStorage(f"{subject} is full ({cause}); nothing was stored. "
                                   "Free space on the server or add storage, then retry.")
    if exc.errno in FAILED_ERRNOS:
        return BackendUnavailable(f"{subject} failed ({cause}, errno {exc.errno}). "
                                  "Check the server's disk or mount (a filesystem remounted read-only "
                                  "after errors shows in `dmesg`); the request can be retried.")
    if exc.errno in DENIED_ERRNOS:
        # Files that belong to another user (a restore or a copy run as root): the operator's to fix,
        # not a fault of the request, and not a 500 with a traceback. A rename names both its paths:
        # the one denied is as often the destination's directory as the source.
        paths = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name)
        return BackendUnavailable(f"{subject} refused this gateway's user access ({cause}"
                                  f"{f': {paths}' if paths else ''}). The files under the data "
                                  "directory must belong to the user the gateway runs as (`chown -R USER: "
                                  "DATA_DIR`); the request can be retried.")
    if exc.errno in DESCRIPTORS_ERRNOS:
        return SlowDown(f"This gateway has no file descriptor left ({cause}): too many requests at once. "
                        "Retry later; if it persists, raise the gateway's open-file limit (LimitNOFILE= in "
                        "its systemd unit, `ulimit -n` in a shell).")
    return None
