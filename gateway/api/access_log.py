"""The access log (--access-log): uvicorn's line for every request, with the request id an S3 client
sees in its error (``x-amz-request-id``, boto3's RequestId) at its end, and presigned signatures
redacted.

Requests answered below ASGI (protocol.py's fast reads) log their line themselves, with the id they
answered with; requests through ASGI log through uvicorn, which knows nothing of the id: S3App puts
it in REQUEST_ID, a context variable of the request's task, where the filter finds it when uvicorn
logs the response's start from that task. "-" where there is none (admin and peer routes, a read
passed through from another node, whose id is in that node's log)."""

from __future__ import annotations

import copy
import logging
import re
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("access_log_request_id", default="-")

FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s %(request_id)s'

_SIGNATURE_PARAMETER = re.compile(r"(?<=[?&])((?:X-Amz-)?Signature=)[^&\s]*")


class AccessLogFilter(logging.Filter):
    """Adds the request id, and replaces the signature of a presigned URL (SigV4 X-Amz-Signature, SigV2
    Signature) by REDACTED: logged, the URL would open its object to whoever reads the log, for as
    long as it lives (up to a week). The rest of the query stays, for debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        args = record.args
        if isinstance(args, tuple) and any(isinstance(arg, str) and "Signature=" in arg for arg in args):
            record.args = tuple(_SIGNATURE_PARAMETER.sub(r"\1REDACTED", arg) if isinstance(arg, str) else arg
                                for arg in args)
        return True


def log_config(base: dict) -> dict:
    """uvicorn's logging configuration ``base`` with the access line's format ending in the request id."""
    config = copy.deepcopy(base)
    config["formatters"]["access"]["fmt"] = FORMAT
    return config


def install() -> None:
    """Log every request at INFO, whatever --log-level says (uvicorn gives the access logger that level:
    with warning or error, --access-log logged nothing, silently). After uvicorn configured logging."""
    access = logging.getLogger("uvicorn.access")
    access.addFilter(AccessLogFilter())
    access.setLevel(logging.INFO)
