"""Hot AWS calls without botocore's per-call machinery: signed by botocore's SigV4 signer, sent over urllib3.

Three calls carry the worker's bulk: ``InvokeEndpoint`` (once per tile,
:class:`~modelrunner.inference.invoke.LeanInvoker`), ``PutRecords`` (a Kinesis call per 500 features) and
``BatchWriteItem`` (the feature table). botocore spends most of their client-side CPU on its generic
machinery: event hooks, endpoint rules, a serialiser that walks every value of the request against the
service model, ``AWSRequest`` preparation and a parser that walks every value of the answer.
``scripts/bench_lean`` measures it: a PutRecords call of 500 one-feature records costs about 9 ms of CPU
through botocore and about 1.5 ms here.

This module holds what every such call shares (:class:`SignedPath`: when the fast path may be used, the
connection pool, signing, the URL check) and :class:`LeanJsonClient`, a client wrapper for JSON-protocol
services (Kinesis, DynamoDB) whose chosen operations are serialised with orjson (blobs as base64) and whose
answers are parsed with orjson, or with botocore's own parser where the answer holds blobs or timestamps.

The rules every fast path keeps:

* botocore makes the first call of each operation, and the URL it resolved (its endpoint rules: FIPS,
  dual-stack, account-based endpoints, a configured endpoint) is the one the fast path then uses;
* any answer that is not a 2xx, or a transport error, sends that call and every later one through botocore,
  whose retry mode then does what it always did (back-off with jitter, adaptive rate limiting, errors raised
  as ``ClientError`` / ``BotoCoreError``). The failed call is sent once more than botocore alone would send
  it, once per client and operation;
* the fast path is not used at all where it could differ from botocore: a proxy, a client certificate, a
  signature version other than SigV4, no credentials, a request member that is a timestamp.
"""

from __future__ import annotations

import binascii
import threading
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import get_cert_path
from botocore.parsers import create_parser


class SignedPath:
    """What a botocore client's fast path needs: eligibility, credentials, a urllib3 pool sized like the
    client's, SigV4 signing with the client's signing name and region."""

    def __init__(self, client: Any, tag: str = "lean") -> None:
        self.client = client
        self.signing_name = client.meta.service_model.signing_name
        # The fast path's calls say so in the User-Agent (md/modelrunner#<tag>), for whoever reads the logs.
        self.user_agent = f"{client.meta.config.user_agent} md/modelrunner#{tag}"
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        #: URL -> its host's connection pool and its path (a few URLs: one per endpoint, stream, table)
        self._targets: dict[str, tuple[urllib3.HTTPConnectionPool, str]] = {}
        self.eligible = self._eligible()

    def _eligible(self) -> bool:
        config = self.client.meta.config
        return (self.credentials() is not None and not config.proxies and not urllib.request.getproxies()
                and not getattr(config, "client_cert", None)
                and (config.signature_version or "v4") in ("v4", "s3v4")
                and urllib.parse.urlsplit(self.client.meta.endpoint_url).scheme in ("http", "https"))

    def credentials(self) -> Any:
        return getattr(getattr(self.client, "_request_signer", None), "_credentials", None)

    def connections(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pool is None:
                config = self.client.meta.config
                # The client's TLS verification: a CA bundle path, True (botocore's default bundle) or False.
                session = getattr(getattr(self.client, "_endpoint", None), "http_session", None)
                verify = getattr(session, "_verify", True)
                bundle = verify if isinstance(verify, str) else get_cert_path(True)
                tls: dict[str, Any] = ({"cert_reqs": "CERT_NONE"} if verify is False
                                       else {"cert_reqs": "CERT_REQUIRED", "ca_certs": bundle})
                self._pool = urllib3.PoolManager(
                    num_pools=2, maxsize=max(1, config.max_pool_connections), block=False, retries=False,
                    timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout), **tls)
            return self._pool

    def sign(self, url: str, body: bytes, headers: dict[str, str]) -> AWSRequest:
        """The request, signed as botocore signs it (SigV4 over the body's SHA-256, the session token)."""
        headers["User-Agent"] = self.user_agent
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(self.credentials().get_frozen_credentials(), self.signing_name,
                  self.client.meta.region_name).add_auth(request)
        return request

    def send(self, request: AWSRequest) -> urllib3.BaseHTTPResponse | None:
        """Send a signed request; None on a transport error (the caller then uses botocore).

        Straight to the host's connection pool, found once per URL: the pool manager's request path (URL
        parsing, pool lookup by a normalised key, redirect handling) costs a tenth of a call again."""
        url = str(request.url)
        target = self._targets.get(url)
        if target is None:  # (urllib3 2's pool manager drops the pools it evicts without closing them)
            parsed = urllib3.util.parse_url(url)
            target = self._targets[url] = (self.connections().connection_from_url(url), parsed.request_uri)
        pool, path = target
        try:
            return pool.urlopen("POST", path, body=request.data, headers=dict(request.headers.items()),
                                preload_content=True, redirect=False, retries=False, assert_same_host=False)
        except urllib3.exceptions.HTTPError:
            return None


def _blob_text(value: Any) -> str:
    """orjson's fallback for what it does not encode: bytes are base64 (the JSON protocol's blobs)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return binascii.b2a_base64(value, newline=False).decode("ascii")  # base64.b64encode, one call less
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _has(shape: Any, kinds: frozenset[str], seen: set[str] | None = None) -> bool:
    """Whether a shape holds a member of one of ``kinds`` (blob, timestamp) at any depth (recursive
    shapes such as DynamoDB's AttributeValue are walked once)."""
    if shape is None:
        return False
    seen = set() if seen is None else seen
    if shape.name in seen:
        return False
    seen.add(shape.name)
    if shape.type_name in kinds:
        return True
    if shape.type_name == "structure":
        return any(_has(member, kinds, seen) for member in shape.members.values())
    if shape.type_name == "list":
        return _has(shape.member, kinds, seen)
    if shape.type_name == "map":
        return _has(shape.key, kinds, seen) or _has(shape.value, kinds, seen)
    return False


class _JsonOperation:
    """One operation of a JSON-protocol client on the fast path (see the module's docstring)."""

    def __init__(self, path: SignedPath, name: str) -> None:
        client = path.client
        model = client.meta.service_model
        operation = model.operation_model(name)
        self.path = path
        self.name = name
        self.method = getattr(client, _method_name(client, name))
        self.headers = {"X-Amz-Target": f"{model.metadata['targetPrefix']}.{name}",
                        "Content-Type": f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}"}
        self.output_shape = operation.output_shape
        # orjson renders timestamps in another form than the protocol's; blobs and timestamps in an answer
        # need botocore's parser (orjson alone would leave blobs as base64 text).
        self.fast = path.eligible and not _has(operation.input_shape, frozenset({"timestamp"}))
        self.plain_answer = not _has(self.output_shape, frozenset({"blob", "timestamp"}))
        self.url: str | None = None  # learnt from botocore's first call
        self._parser = create_parser(model.metadata["protocol"])
        self._learning = threading.local()
        self._lock = threading.Lock()  # the URL is learnt once, whichever thread's call comes back first
        service = model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service}.{name}", self._see_url)
        client.meta.events.register(f"after-call.{service}.{name}", self._learn_url)

    def __call__(self, **kwargs: Any) -> Any:
        if not self.fast or self.url is None:
            return self._botocore(kwargs)
        body = orjson.dumps(kwargs, default=_blob_text)
        response = self.path.send(self.path.sign(self.url, body, dict(self.headers)))
        if response is None or not 200 <= response.status < 300 or not _crc32_ok(response):
            self.fast = False  # from here on botocore's retries, rate limit and errors, as before
            return self._botocore(kwargs)
        headers = {k.lower(): v for k, v in response.headers.items()}
        if self.plain_answer:
            answer: dict[str, Any] = orjson.loads(response.data) if response.data else {}
        else:
            answer = self._parser.parse({"body": response.data, "headers": headers, "status_code": response.status},
                                        self.output_shape)
        answer["ResponseMetadata"] = {"HTTPStatusCode": response.status, "HTTPHeaders": headers,
                                      "RequestId": headers.get("x-amzn-requestid", ""), "RetryAttempts": 0}
        return answer

    def _botocore(self, kwargs: Mapping[str, Any]) -> Any:
        self._learning.on = self.fast and self.url is None
        self._learning.url = None
        try:
            return self.method(**kwargs)
        finally:
            self._learning.on = False

    def _see_url(self, request: Any, **_: Any) -> None:
        """botocore's ``before-send`` hook: the URL botocore resolved for a learning call."""
        if getattr(self._learning, "on", False):
            self._learning.url = str(request.url)

    def _learn_url(self, http_response: Any, **_: Any) -> None:
        """botocore's ``after-call`` hook: a learning call's URL becomes the fast path's, provided botocore
        sent it over HTTP itself. An answer made in-process (moto's ``mock_aws``, botocore's ``Stubber``)
        teaches nothing, so the fast path never sends what a test meant for a stub to the real service."""
        url = getattr(self._learning, "url", None)
        self._learning.on, self._learning.url = False, None
        if url is not None and sent_over_http(http_response):
            with self._lock:
                if self.url is None:
                    self.url = url


def sent_over_http(http_response: Any) -> bool:
    """Whether botocore's answer to a call came over HTTP (a urllib3 response under it), rather than being
    made in-process by a stand-in that hooks ``before-send`` (moto's ``mock_aws``, a test's stub): only a
    call that was really sent shows which URL the fast path may send to."""
    return isinstance(getattr(http_response, "raw", None), urllib3.BaseHTTPResponse)


def _method_name(client: Any, operation: str) -> str:
    for method, api in client.meta.method_to_api_mapping.items():
        if api == operation:
            return str(method)
    raise ValueError(f"{client.meta.service_model.service_name} has no operation {operation}")


def _crc32_ok(response: urllib3.BaseHTTPResponse) -> bool:
    """DynamoDB's ``x-amz-crc32`` of the body, checked as botocore checks it (a mismatch goes to botocore,
    which retries it)."""
    expected = response.headers.get("x-amz-crc32")
    return expected is None or int(expected) == zlib.crc32(response.data) & 0xFFFFFFFF


class LeanJsonClient:
    """A JSON-protocol botocore client (Kinesis, DynamoDB) whose ``operations`` take the fast path; every
    other method and attribute is the wrapped client's."""

    def __init__(self, client: Any, operations: tuple[str, ...]) -> None:
        self._client = client
        path = SignedPath(client)
        self._fast: dict[str, Callable[..., Any]] = {
            _method_name(client, name): _JsonOperation(path, name) for name in operations}

    def __getattr__(self, name: str) -> Any:
        fast = self.__dict__.get("_fast", {}).get(name)
        return fast if fast is not None else getattr(self._client, name)

    @property
    def wrapped(self) -> Any:
        """The botocore client itself."""
        return self._client
