"""What a request may make a worker read or call: image URLs and HTTP model endpoints.

A request comes from a queue message, so every string in it is treated as hostile. GDAL reads far more
than files (``/vsicurl/`` with header files, ``http://``, driver-prefixed connection strings that read raw
memory, VRTs that point anywhere: see ``shared/gdal-notes.md``), and an HTTP model URL could name the
instance metadata service. The rules, checked before anything is opened or called:

- image URLs are ``s3://bucket/key`` only; local paths only when ``MR_LOCAL_IMAGE_ROOT`` is set, and then
  only under that folder after resolving ``..`` and links. No other scheme, no ``/vsi*/`` prefix, no
  driver prefix (``NITF_IM:0:...``), no query string or option syntax, no key GDAL would read as anything
  but an S3 object;
- HTTP model URLs only to hosts in ``MR_HTTP_ENDPOINT_HOSTS``; link-local and metadata addresses only
  when listed literally, also when an allowed name resolves to one;
- SageMaker endpoint names follow SageMaker's own naming rule (nothing else reaches ``InvokeEndpoint``).

GDAL's drivers are limited separately, where images are opened (``ImageSource.open``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import RequestError

# S3 bucket names: 3-63 characters of lowercase letters, digits, dots and hyphens, starting and ending with
# a letter or digit (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# SageMaker endpoint names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$ (the CreateEndpoint API's pattern).
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# A GDAL driver prefix (``NITF_IM:0:``, ``GTIFF_DIR:1:``, ``MEM:::``, ``PG:``, ``vrt://``...).
_DRIVER_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:")
S3_KEY_MAX_BYTES = 1024
_METADATA_HOSTS = ("metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal")

Resolver = Callable[[str], Sequence[str]]


def _resolve(host: str) -> list[str]:
    """The addresses a host name resolves to (empty when it does not resolve: the call will fail anyway)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError):
        return []


def _is_sensitive(address: str) -> bool:
    """Link-local (169.254/16, fe80::/10: the EC2 and ECS metadata services live there) or the EC2 IPv6
    metadata address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254")


@dataclass(frozen=True)
class AccessPolicy:
    """The configured rules (from :class:`~modelrunner.config.Settings`); pure checks, no IO but DNS."""

    local_image_root: str | None = None
    http_endpoint_hosts: tuple[str, ...] = ()
    resolver: Resolver = _resolve

    # Images ----------------------------------------------------------------------------------------------
    def image_path(self, url: str, field: str = "imageUrls[0]") -> str:
        """The path GDAL may open for ``url`` (``/vsis3/bucket/key`` or a resolved local path), or a
        RequestError on ``field`` saying why the URL is refused."""
        if any(ord(c) < 0x20 or c == "\x7f" for c in url):
            raise RequestError(field, "must not contain control characters")
        if url.startswith("s3://"):
            bucket, key = _s3_parts(url, field)
            return f"/vsis3/{bucket}/{key}"
        lowered = url.lower()
        if lowered.startswith("/vsi"):
            raise RequestError(field, "GDAL virtual file systems (/vsi...) are not accepted; use an s3:// URL")
        if "://" in url and ":" not in url.split("://", 1)[0]:
            scheme = url.split("://", 1)[0]
            raise RequestError(field, f"the {scheme}:// scheme is not accepted; image URLs must be s3:// URLs")
        if _DRIVER_PREFIX.match(url):
            raise RequestError(field, "GDAL driver prefixes and connection strings are not accepted; "
                                      "image URLs must be s3:// URLs")
        if self.local_image_root is None:
            raise RequestError(field, "must be an s3:// URL (local paths are not enabled on this worker: "
                                      "MR_LOCAL_IMAGE_ROOT is unset)")
        if not os.path.isabs(url):
            raise RequestError(field, "a local image path must be absolute")
        root = os.path.realpath(self.local_image_root)
        resolved = os.path.realpath(url)
        if os.path.commonpath([root, resolved]) != root:
            raise RequestError(field, f"local image paths must lie under {root} (MR_LOCAL_IMAGE_ROOT), "
                                      "after resolving '..' and links")
        return resolved

    # Models ----------------------------------------------------------------------------------------------
    def check_model(self, mode: str, name: str, field: str = "imageProcessor.name") -> None:
        """Refuse a SageMaker endpoint name SageMaker would not accept, or an HTTP URL to a host that is not
        allowed."""
        if mode == "HTTP_ENDPOINT":
            self._check_http(name, field)
        elif not _ENDPOINT_NAME.match(name):
            raise RequestError(field, "must be a SageMaker endpoint name (letters, digits and hyphens, at most "
                                      f"63 characters), got {name[:80]!r}")

    def _check_http(self, url: str, field: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(field, "must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise RequestError(field, "must not carry credentials (user:password@)")
        host = parts.hostname.lower()
        try:
            port = parts.port
        except ValueError:
            raise RequestError(field, "has an invalid port") from None
        port = port or (443 if parts.scheme == "https" else 80)
        listed = [entry.lower() for entry in self.http_endpoint_hosts]
        exact = {host, f"{host}:{port}", f"[{host}]", f"[{host}]:{port}"}
        if not any(entry in exact for entry in listed) and not any(
                fnmatch.fnmatchcase(host, entry) or fnmatch.fnmatchcase(f"{host}:{port}", entry)
                for entry in listed if "*" in entry):
            allowed = ", ".join(self.http_endpoint_hosts) or "none (MR_HTTP_ENDPOINT_HOSTS is unset)"
            raise RequestError(field, f"host {host}:{port} is not an allowed model endpoint host; allowed: {allowed}")
        literal = any(entry in exact for entry in listed)
        if literal:
            return  # named explicitly by the operator, metadata addresses included
        if host in _METADATA_HOSTS or _is_sensitive(host) or any(_is_sensitive(a) for a in self.resolver(host)):
            raise RequestError(field, f"host {host} is a link-local or metadata address; list it explicitly in "
                                      "MR_HTTP_ENDPOINT_HOSTS to allow it")


def _s3_parts(url: str, field: str) -> tuple[str, str]:
    """Bucket and key of an ``s3://`` URL that GDAL's ``/vsis3/`` will read as exactly that object."""
    bucket, slash, key = url[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise RequestError(field, f"{bucket[:80]!r} is not a valid S3 bucket name")
    if not slash or not key:
        raise RequestError(field, "must name an object: s3://bucket/key")
    if len(key.encode("utf-8")) > S3_KEY_MAX_BYTES:
        raise RequestError(field, f"the S3 key is longer than {S3_KEY_MAX_BYTES} bytes")
    # GDAL normalises '..' in a /vsis3/ path: a key could otherwise reach another bucket, with this one's
    # credentials.
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise RequestError(field, "the S3 key must not contain empty, '.' or '..' path segments")
    if any(c in key for c in "?#\\"):
        raise RequestError(field, "the S3 key must not contain '?', '#' or '\\' (GDAL would read them as "
                                  "options or another path)")
    return bucket, key
