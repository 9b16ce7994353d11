"""Keep credentials, signatures and presigned URLs out of every log line and status message.

Errors quote what failed, and what failed can carry secrets: a GDAL error quotes the URL it read (a
presigned URL carries its signature and credential), a botocore error may quote a header, a request may
carry keys. Every log line (``logs.JsonFormatter``) and every status reason (``status.StatusPublisher``)
goes through :func:`redact`. Besides the patterns below, the exact values of credentials the worker
obtained itself (assumed roles, ``aws.AwsClients.assumed_credentials``) are registered and replaced
wherever they appear.
"""

from __future__ import annotations

import re
import threading

MASK = "[REDACTED]"

_PATTERNS = [
    # Presigned URL and SigV4 query parameters.
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"'<>]+"),
    re.compile(r"(?i)([?&](?:Signature|AWSAccessKeyId|x-goog-signature|sig)=)[^&\s\"'<>]+"),
    # Authorization headers (SigV4, basic, bearer).
    re.compile(r"(?i)(Authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\n,}]+(?:,\s*\w+=[^\"'\n,}]+)*"),
    re.compile(r"(?i)(AWS4-HMAC-SHA256\s+)[^\"'\n]+"),
    # Named secrets in key = value, key: value or "key": "value" form.
    re.compile(r"(?i)((?:aws_)?(?:secret_access_key|session_token|secretaccesskey|sessiontoken|security_token|password)"
               r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]+"),
    # Access key ids (long-term AKIA, temporary ASIA).
    re.compile(r"\b()(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
]

class Redactor:
    """The patterns above plus the exact secret values registered with it, masked in any text."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def register(self, *secrets: str | None) -> None:
        """Replace these exact values wherever they appear from now on (credentials this worker holds)."""
        with self._lock:
            self._known.update(s for s in secrets if s and len(s) >= 8)

    def redact(self, text: str) -> str:
        """``text`` with every secret it holds replaced by ``[REDACTED]``."""
        if not text:
            return text
        with self._lock:
            known = tuple(self._known)
        for secret in known:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text


#: The process's one redactor, deliberately process-wide: log lines go through Python's logging, which is
#: process-wide (any thread, any library, any module's logger), and a credential assumed by one job's
#: thread must be masked in every line and status of the process, whoever writes it; an instance passed
#: down would miss the lines written where it was not passed.
SECRETS = Redactor()
register = SECRETS.register
redact = SECRETS.redact
