"""The one place that builds boto3 clients: region, retry modes, pool sizes, assumed roles.

Everything else receives clients from an :class:`AwsClients`, so tests hand in clients bound to moto
(``AWS_ENDPOINT_URL`` or ``endpoint_url``) without monkey-patching. Retry settings are the reference's:
boto3's own retry modes do the back-off, we do not write our own around them.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from botocore.session import Session as BotocoreSession

from . import redact
from .inference.invoke import LeanInvoker
from .lean import LeanJsonClient

ROLE_SESSION_NAME = "AWSOversightMLModelRunner"

# DynamoDB and Kinesis carry the bulk payloads (feature items, one record per feature); botocore's client-
# side parameter validation walks every nested value of them, and our requests are built by code, not users.
_RETRIES: dict[str, dict[str, Any]] = {
    "dynamodb": {"retries": {"mode": "standard", "max_attempts": 3}, "max_pool_connections": 50,
                 "parameter_validation": False},
    "kinesis": {"retries": {"mode": "standard", "max_attempts": 15}, "parameter_validation": False},
    "sagemaker-runtime": {"retries": {"mode": "adaptive", "max_attempts": 30}},
    "sagemaker": {"retries": {"mode": "adaptive", "max_attempts": 30}},
}
_DEFAULT = {"retries": {"mode": "standard", "max_attempts": 15}}
#: Bulk operations sent without botocore's per-call machinery when they succeed (:mod:`modelrunner.lean`):
#: the feature table's writes and the Kinesis records.
LEAN_OPERATIONS: dict[str, tuple[str, ...]] = {"dynamodb": ("BatchWriteItem",), "kinesis": ("PutRecords",)}
#: The clients a worker uses for every job (assumed-role clients are built when a request names a role).
WORKER_SERVICES = ("sqs", "sns", "dynamodb", "s3", "kinesis", "sagemaker-runtime")


class AwsClients:
    """A cache of thread-safe boto3 clients built from one session.

    ``pool_size`` sizes the connection pools of the clients that worker threads share (the model endpoint
    and DynamoDB), so WORKERS threads never queue for a connection.
    """

    def __init__(self, region: str, *, session: boto3.Session | None = None, pool_size: int = 10,
                 endpoint_urls: dict[str, str] | None = None) -> None:
        self.region = region
        self.session = session or boto3.Session(region_name=region)
        self.pool_size = max(10, pool_size)
        self._endpoint_urls = endpoint_urls or {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._roles: dict[str, AwsClients] = {}
        self._invoker: LeanInvoker | None = None
        self._lean: dict[str, LeanJsonClient] = {}
        self._lock = threading.RLock()  # for_role builds its STS client while holding it

    def client(self, service: str) -> Any:
        key = (service, "")
        with self._lock:
            if key not in self._clients:
                options = dict(_RETRIES.get(service, _DEFAULT))
                options["max_pool_connections"] = max(options.get("max_pool_connections", 10), self.pool_size)
                kwargs: dict[str, Any] = {"region_name": self.region, "config": Config(**options)}
                if service in self._endpoint_urls:
                    kwargs["endpoint_url"] = self._endpoint_urls[service]
                # The stubs type each service by a literal name; this method takes any.
                self._clients[key] = self.session.client(service, **kwargs)  # type: ignore[call-overload]
            return self._clients[key]

    def warm(self, services: tuple[str, ...] = WORKER_SERVICES) -> None:
        """Build these clients now. Building one loads its service model: tens of milliseconds each, S3's
        the most. A worker calls this before it takes its first message, so its first job does not pay."""
        for service in services:
            self.client(service)

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @property
    def sqs(self) -> Any:
        return self.client("sqs")

    @property
    def sns(self) -> Any:
        return self.client("sns")

    @property
    def dynamodb(self) -> Any:
        """The DynamoDB client, its BatchWriteItem calls on the fast path (:mod:`modelrunner.lean`)."""
        return self._lean_client("dynamodb")

    @property
    def kinesis(self) -> Any:
        """The Kinesis client, its PutRecords calls on the fast path (:mod:`modelrunner.lean`)."""
        return self._lean_client("kinesis")

    def _lean_client(self, service: str) -> Any:
        client = self.client(service)
        with self._lock:
            if service not in self._lean:
                self._lean[service] = LeanJsonClient(client, LEAN_OPERATIONS[service])
            return self._lean[service]

    @property
    def sagemaker_runtime(self) -> Any:
        """The SageMaker runtime client, its successful InvokeEndpoint calls made without botocore's per-call
        machinery (:class:`~modelrunner.inference.invoke.LeanInvoker`; failures and retries are botocore's)."""
        client = self.client("sagemaker-runtime")
        with self._lock:
            if self._invoker is None:
                self._invoker = LeanInvoker(client)
            return self._invoker

    def for_role(self, role_arn: str | None) -> AwsClients:
        """Clients acting as ``role_arn`` (STS AssumeRole, refreshed before expiry); self when no role."""
        if not role_arn:
            return self
        with self._lock:
            if role_arn not in self._roles:
                self._roles[role_arn] = AwsClients(
                    self.region, session=self._assumed_session(role_arn), pool_size=self.pool_size,
                    endpoint_urls=self._endpoint_urls)
            return self._roles[role_arn]

    def _assumed_session(self, role_arn: str) -> boto3.Session:
        sts = self.client("sts")

        def refresh() -> dict[str, str]:
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=ROLE_SESSION_NAME)["Credentials"]
            return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                    "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

        core = BotocoreSession()
        # botocore has no public setter for deferred (refresh-on-first-use) credentials.
        core._credentials = DeferredRefreshableCredentials(  # type: ignore[attr-defined]
            refresh_using=refresh, method="sts-assume-role")
        return boto3.Session(botocore_session=core, region_name=self.region)

    def assumed_credentials(self, role_arn: str) -> dict[str, str]:
        """Frozen credentials of an assumed role, for GDAL's ``/vsis3/`` (which reads its own options)."""
        credentials = self.for_role(role_arn).session.get_credentials()
        if credentials is None:  # never for an assumed-role session; a clear error rather than AttributeError
            raise RuntimeError(f"no credentials for role {role_arn}")
        creds = credentials.get_frozen_credentials()
        redact.register(creds.access_key, creds.secret_key, creds.token)
        return {"AWS_ACCESS_KEY_ID": creds.access_key or "", "AWS_SECRET_ACCESS_KEY": creds.secret_key or "",
                "AWS_SESSION_TOKEN": creds.token or ""}


#: Error codes AWS services answer for throttling or a passing fault (botocore's standard retry mode retries
#: the same ones; this list decides what is still transient once its retries are spent).
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure",
    "ServiceUnavailable", "TransactionConflict", "KMSThrottlingException",
})


def is_transient(err: BaseException) -> bool:
    """True for an AWS error worth trying again later (throttling, a 5xx, a connection or read failure);
    False for one that the same request will meet again (a missing resource, a refused permission, an
    invalid parameter)."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error.get("Code", "") in TRANSIENT_CODES or status >= 500
    return isinstance(err, HTTPClientError | BotoConnectionError)
