"""InvokeEndpoint without botocore's per-call machinery: the one AWS call made for every tile.

A botocore ``invoke_endpoint`` call costs 0.3-0.5 ms more CPU than this module's (``scripts/bench_invoke``:
its event hooks, endpoint rules, serialiser, ``AWSRequest`` preparation and response parsing), 2-3 % of
what the worker spends per tile. :class:`LeanInvoker` wraps the botocore client and, for a call that
succeeds, does only what such a call needs: the request botocore would build (URL and headers from
the operation model), signed by botocore's own SigV4 signer with the client's credentials, sent over a
urllib3 pool sized like the client's.

The first call goes through botocore, and the URL botocore resolved for it (its endpoint rules: FIPS,
dual-stack, a configured endpoint) must be the one built here, or the fast path is not used. Everything
else stays botocore's. The first answer that is not a 2xx, or a transport error, sends that call, and every
call after it, through the wrapped client, whose retry mode then does what it always did
(adaptive: back-off with jitter, a client-side rate limit once throttled, errors raised as ``ClientError``
/ ``BotoCoreError``). The tile of that first failure is thus sent once more than botocore alone would send
it, once per process. The fast path is not used at all (the client is called directly) where it could
differ from botocore: a proxy, a client certificate, a signature version other than SigV4, no credentials.
Any other operation or attribute is the wrapped client's (``invoker.meta``, ...).
"""

from __future__ import annotations

import io
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from botocore.awsrequest import AWSRequest

from ..lean import SignedPath, sent_over_http

OPERATION = "InvokeEndpoint"


class LeanInvoker:
    """A botocore ``sagemaker-runtime`` client whose successful ``invoke_endpoint`` calls skip botocore
    (signing, the pool and eligibility are :class:`~modelrunner.lean.SignedPath`'s)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._path = SignedPath(client, tag="lean-invoke")
        operation = client.meta.service_model.operation_model(OPERATION)
        self._uri = operation.http["requestUri"]
        #: request member -> header name, from the operation model (ContentType -> Content-Type, ...)
        self._headers = _header_members(operation.input_shape)
        self._answer_headers = _header_members(operation.output_shape)
        self.fast = self._path.eligible
        self.checked = False  # whether a call through botocore has shown that its URL is the one built here
        self._expected = threading.local()  # per thread: the URL its checking call should be sent to
        # Registered once, here (not per call: registering while other threads emit is not safe).
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service}.{OPERATION}", self._check_url)
        client.meta.events.register(f"after-call.{service}.{OPERATION}", self._confirm)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def url(self, kwargs: Mapping[str, Any]) -> str:
        """The URL of ``invoke_endpoint(**kwargs)``: the client's endpoint and the operation's path."""
        name = urllib.parse.quote(str(kwargs["EndpointName"]), safe="~")
        return str(self._client.meta.endpoint_url).rstrip("/") + str(self._uri).replace("{EndpointName}", name)

    def request(self, kwargs: Mapping[str, Any]) -> AWSRequest:
        """The signed request botocore would send for ``invoke_endpoint(**kwargs)`` (less its SDK headers)."""
        headers = {self._headers[key]: str(value) for key, value in kwargs.items() if key in self._headers}
        return self._path.sign(self.url(kwargs), kwargs.get("Body", b""), headers)

    def invoke_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        """``invoke_endpoint`` as botocore answers it (``Body`` a readable stream, ``ContentType``, ...)."""
        if not self.fast or not set(kwargs) <= {"EndpointName", "Body", *self._headers}:
            return self._botocore(kwargs)
        if not self.checked:
            return self._checking_call(kwargs)
        response = self._path.send(self.request(kwargs))
        if response is None or not 200 <= response.status < 300:
            self.fast = False  # from here on botocore's retries, rate limit and errors, as before
            return self._botocore(kwargs)
        answer: dict[str, Any] = {key: response.headers[header] for key, header in self._answer_headers.items()
                                  if header in response.headers}
        answer["Body"] = io.BytesIO(response.data)
        answer["ResponseMetadata"] = {
            "HTTPStatusCode": response.status, "HTTPHeaders": {k.lower(): v for k, v in response.headers.items()},
            "RequestId": response.headers.get("x-amzn-RequestId", ""), "RetryAttempts": 0}
        return answer

    def _botocore(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call through botocore's client (retries, adaptive rate limit, its errors)."""
        answer: dict[str, Any] = self._client.invoke_endpoint(**kwargs)
        return answer

    def _checking_call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``invoke_endpoint`` through botocore, its URL compared with :meth:`url`'s (:meth:`_check_url`)."""
        self._expected.url = self.url(kwargs)
        self._expected.same = False
        try:
            return self._botocore(kwargs)
        finally:
            self._expected.url = None
            self._expected.same = False

    def _check_url(self, request: Any, **_: Any) -> None:
        """botocore's ``before-send`` hook: on a checking call's first attempt, a URL other than the one
        built here turns the fast path off for good; the same URL is confirmed by :meth:`_confirm`."""
        expected = getattr(self._expected, "url", None)
        if expected is None:
            return
        self._expected.url = None
        if request.url == expected:
            self._expected.same = True
            return
        with self._lock:
            self.fast = False
            self.checked = True

    def _confirm(self, http_response: Any, **_: Any) -> None:
        """botocore's ``after-call`` hook: the check is done once a call to the same URL came back over
        HTTP. An answer made in-process (moto's ``mock_aws``, a test's own ``before-send`` stub) proves
        nothing, so the next call checks again and the fast path never sends what a test meant for a stub
        to the service."""
        if not getattr(self._expected, "same", False):
            return
        self._expected.same = False
        if sent_over_http(http_response):
            with self._lock:
                self.checked = True


def _header_members(shape: Any) -> dict[str, str]:
    """Member name -> HTTP header name, for the members of a request or answer shape that are headers."""
    return {name: member.serialization["name"] for name, member in shape.members.items()
            if member.serialization.get("location") == "header"}
