"""The object store (any S3-compatible service): presigned URLs, HEAD, ranged reads, puts, deletes.

Why aiobotocore: the API is one asyncio event loop, and the ranged GET that checks an upload
(attaching), the thumbnail worker's GET/PUT and the sweeper's DELETE must not block it;
aiobotocore is botocore (the request signing, endpoint and addressing rules every
S3-compatible store is tested against, and the same presigning code as boto3) on aiohttp,
which the API already runs.
boto3 would need a thread per call; the minio SDK is synchronous too and signs POST policies
with its own code. Presigning is local computation (no network): CreateUpload and
GetAttachmentUrl never wait on the store. The one call on a send's path (``probe``) is a URL
presigned here and fetched on a kept-open aiohttp session when the store's keys are explicit,
which costs the API a fraction of a botocore call's CPU (the method says why).

Bounded work: every call has connect and read timeouts of S3_TIMEOUT and runs under an
``asyncio.timeout`` of the same length plus a little (botocore's timeouts are per socket
operation), and botocore's retries are off (``max_attempts`` 1): a dead store costs one
bounded wait, never a hidden retry loop. Store errors become ``ObjectStoreError`` (``from`` the
original); a missing object is ``None``, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from aiobotocore.session import get_session
from botocore.auth import S3SigV4PostAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from chat_api.settings import ObjectStoreSettings


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ObjectStoreError(Exception):
    """The store failed or did not answer in time."""


@dataclass(frozen=True, slots=True)
class ObjectHead:
    size: int
    content_type: str


@dataclass(frozen=True, slots=True)
class ObjectProbe:
    """What one ranged GET tells of an object: its size, its type and its first bytes."""
    size: int
    content_type: str
    first: bytes


@dataclass(frozen=True, slots=True)
class PresignedPost:
    url: str
    fields: dict[str, str]


_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_TOTAL = re.compile(r"bytes \d+-\d+/(\d+)$")
"""The object's size in a 206's ``Content-Range``."""
_PROBE_URL_TTL = 60
"""Seconds a probe's presigned URL is valid: it is used at once, once."""


def _encoded(value: str) -> str:
    """RFC 3986 percent-encoding, as SigV4 wants it (botocore's ``percent_encode``)."""
    return quote(value, safe="-_.~")


def _host(url: str) -> str:
    """The Host header a client sends to ``url``, as SigV4 signs it (botocore's
    ``_host_from_url``): lower case, no user info, the port only when not the scheme's own."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class QuerySigner:
    """Presigned GET URLs (SigV4 query parameters), as botocore's ``S3SigV4QueryAuth`` signs
    them for explicit keys without a session token, with the day's signing key kept.

    Why not botocore's signer: per URL it builds a request object, parses and re-serialises
    the URL, derives the signing key (four HMACs) and runs its header and path normalisation:
    87-286 us a URL against 25 us here (timeit, load average 2-6), on the path of every send
    with attachments (the probe) and every GetAttachmentUrl. The output is botocore's, byte
    for byte, with the same time (tests/unit/test_query_signer.py compares them for path and
    virtual-host style, ports, IPv6, encoded keys and parameters, a change of day;
    tests/integration/test_object_store.py against the client's ``generate_presigned_url``).
    """

    def __init__(self, access_key_id: str, secret_access_key: str, region: str) -> None:
        self._access_key_id = access_key_id
        self._secret = f"AWS4{secret_access_key}".encode()
        self._region = region
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = hmac.new(self._secret, day.encode(), hashlib.sha256).digest()
            for part in (self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key, self._day = key, day
        return self._key

    def sign(self, url: str, expires: int, params: Mapping[str, str] | None = None,
             now: datetime | None = None) -> str:
        """``url`` (no query) presigned for a GET valid ``expires`` seconds from ``now``,
        with the operation's ``params`` (``response-content-type``, ...) in its query."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self._region}/s3/aws4_request"
        pairs = [(_encoded(k), _encoded(v)) for k, v in (params or {}).items()]
        pairs += [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                  ("X-Amz-Credential", _encoded(f"{self._access_key_id}/{scope}")),
                  ("X-Amz-Date", stamp), ("X-Amz-Expires", str(expires)),
                  ("X-Amz-SignedHeaders", "host")]
        parts = urlsplit(url)
        canonical = "\n".join((
            "GET", parts.path or "/", "&".join(f"{k}={v}" for k, v in sorted(pairs)),
            f"host:{_host(url)}", "", "host", "UNSIGNED-PAYLOAD"))
        to_sign = "\n".join(("AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        query = "&".join(f"{k}={v}" for k, v in pairs) + f"&X-Amz-Signature={signature}"
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class ObjectStore:
    """One aiobotocore client, opened by ``open`` and closed by ``close`` (the app's lifecycle)."""

    def __init__(self, settings: ObjectStoreSettings) -> None:
        self._settings = settings
        self.bucket = settings.s3_bucket
        self._timeout = settings.s3_timeout
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._credentials = (Credentials(settings.s3_access_key_id, settings.s3_secret_access_key)
                             if settings.s3_access_key_id and settings.s3_secret_access_key
                             else None)
        self._query_signer = (QuerySigner(settings.s3_access_key_id,
                                          settings.s3_secret_access_key, settings.s3_region)
                              if self._credentials is not None else None)

    async def open(self) -> None:
        s = self._settings
        config = Config(
            signature_version="s3v4", connect_timeout=s.s3_timeout, read_timeout=s.s3_timeout,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path" if s.s3_path_style else "virtual"},
            max_pool_connections=50)
        session = get_session()
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
            aws_access_key_id=s.s3_access_key_id or None,
            aws_secret_access_key=s.s3_secret_access_key or None, config=config))
        # Presigned URLs name the endpoint clients reach (SigV4 signs the host): a second
        # client for signing only, which never connects.
        self._signer = self._client
        if s.s3_public_endpoint and s.s3_public_endpoint != s.s3_endpoint:
            self._signer = await self._stack.enter_async_context(session.create_client(
                "s3", endpoint_url=s.s3_public_endpoint, region_name=s.s3_region,
                aws_access_key_id=s.s3_access_key_id or None,
                aws_secret_access_key=s.s3_secret_access_key or None, config=config))

        if self._credentials is not None:
            # Probes (``probe``), the one store call on a send's path, go through a session
            # of their own kept open: the same pool size, connections kept alive.
            self._http = await self._stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=50), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(sock_connect=s.s3_timeout,
                                              sock_read=s.s3_timeout)))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._signer = self._http = None

    async def presign_post(self, key: str, content_type: str, size: int, expires: int
                           ) -> PresignedPost:
        """A browser-form upload of exactly ``size`` bytes of ``content_type`` to ``key``:
        the store refuses any other size, type or key (the policy's conditions).

        With explicit keys the policy is signed here with botocore's own POST signer
        (``S3SigV4PostAuth``, what ``generate_presigned_post`` ends in, with the same policy
        and fields), which skips the client's per-call endpoint resolution, serialisation and
        event hooks: 21 us instead of 115 us a form (in-process CPU, load average 2). Without
        keys (a workload identity) the client signs, with the credentials it resolved."""
        fields = {"Content-Type": content_type}
        conditions: list[Any] = [["content-length-range", size, size],
                                 {"Content-Type": content_type}]
        if self._credentials is None:
            post = await self._signer.generate_presigned_post(
                self.bucket, key, Fields=fields, Conditions=conditions, ExpiresIn=expires)
            return PresignedPost(post["url"], dict(post["fields"]))
        expiration = datetime.now(UTC) + timedelta(seconds=expires)
        fields["key"] = key
        request = AWSRequest(method="POST", url=self._bucket_url())
        request.context["s3-presign-post-fields"] = fields
        request.context["s3-presign-post-policy"] = {
            "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "conditions": [*conditions, {"bucket": self.bucket}, {"key": key}]}
        S3SigV4PostAuth(self._credentials, "s3", self._settings.s3_region).add_auth(request)
        return PresignedPost(str(request.url), fields)

    async def presign_get(self, key: str, expires: int, *, disposition: str = "",
                          content_type: str = "") -> str:
        """A presigned GET. With explicit keys it is signed here (``QuerySigner``: what
        ``generate_presigned_url`` makes, without the client's per-call request machinery:
        0.58 ms instead of 2.16 ms a URL on a loaded 2-core machine with botocore's
        ``S3SigV4QueryAuth``, less again with the signing key kept; GetAttachmentUrl's budget
        is 2 ms). Without keys (a workload identity) the client signs, with the credentials
        it resolved."""
        if self._query_signer is not None:
            query = {}
            if content_type:
                query["response-content-type"] = content_type
            if disposition:
                query["response-content-disposition"] = disposition
            return self._query_signer.sign(self._object_url(key), expires, query)
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        if content_type:
            params["ResponseContentType"] = content_type
        url: str = await self._signer.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires)
        return url

    def _bucket_url(self, *, internal: bool = False) -> str:
        """The bucket's URL at the public endpoint (what clients reach: where upload forms
        are posted), or at S3_ENDPOINT (``internal``: what this process reaches), as botocore
        writes it (path style without a trailing slash)."""
        s = self._settings
        base = urlsplit(s.s3_endpoint if internal else s.s3_public_endpoint or s.s3_endpoint)
        if s.s3_path_style or _is_ip(base.hostname or ""):  # as botocore: no bucket.<IP>
            return f"{base.scheme}://{base.netloc}/{self.bucket}"
        return f"{base.scheme}://{self.bucket}.{base.netloc}/"

    def _object_url(self, key: str, *, internal: bool = False) -> str:
        """The object's URL at the public endpoint (what clients reach), or at S3_ENDPOINT
        (``internal``: what this process reaches)."""
        return f"{self._bucket_url(internal=internal).rstrip('/')}/{quote(key, safe='/~')}"

    async def head(self, key: str) -> ObjectHead | None:
        resp = await self._call(self._client.head_object(Bucket=self.bucket, Key=key))
        if resp is None:
            return None
        return ObjectHead(int(resp["ContentLength"]), str(resp.get("ContentType", "")))

    async def read(self, key: str, max_bytes: int) -> bytes | None:
        """The object's first ``max_bytes`` bytes (a ranged GET), None when it is missing."""
        async def fetch() -> bytes | None:
            resp = await self._client.get_object(Bucket=self.bucket, Key=key,
                                                 Range=f"bytes=0-{max_bytes - 1}")
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data[:max_bytes]

        data: bytes | None = await self._call(fetch())
        return data

    async def probe(self, key: str, first_bytes: int) -> ObjectProbe | None:
        """The object's size, type and first ``first_bytes`` bytes from one ranged GET
        (``Range: bytes=0-N``; the size is in its ``Content-Range``); None when it is missing.

        With explicit keys the GET is a presigned URL (signed here, as ``presign_get``) sent
        on this store's own aiohttp session: botocore's per-call machinery (parameter
        validation, serialisation, event hooks, response parsing) cost more of the API's CPU
        than the request itself: 3.1 ms a HEAD through the client against 1.4 ms a probe
        here (in-process CPU per call against the development S3 server, load average 2.4).
        Without keys the client makes the same ranged GET.
        """
        if self._http is None:
            probe: ObjectProbe | None = await self._call(
                self._probe_with_client(key, first_bytes))
            return probe
        http = self._http
        assert self._query_signer is not None  # with the session (explicit keys)
        url = URL(self._query_signer.sign(self._object_url(key, internal=True), _PROBE_URL_TTL),
                  encoded=True)

        async def fetch() -> ObjectProbe | None:
            async with http.get(url, headers={"Range": f"bytes=0-{first_bytes - 1}"},
                                allow_redirects=False) as resp:
                if resp.status == 404:
                    return None
                if resp.status == 416:  # an empty object: no byte 0 to start from
                    return ObjectProbe(0, "", b"")
                if resp.status not in (200, 206):
                    body = await resp.content.read(1024)
                    code = re.search(rb"<Code>([^<]*)</Code>", body)
                    raise ObjectStoreError("object store: " + (
                        code[1].decode(errors="replace") if code else str(resp.status)))
                # A store that ignores the range answers 200 with the whole object: read the
                # first bytes only (the connection is then closed, not drained).
                first = b""
                while len(first) < first_bytes:
                    chunk = await resp.content.read(first_bytes - len(first))
                    if not chunk:
                        break
                    first += chunk
                if resp.status == 206:
                    total = _TOTAL.match(resp.headers.get("Content-Range", ""))
                    if total is None:
                        raise ObjectStoreError("object store: a 206 without Content-Range")
                    size = int(total[1])
                else:
                    size = int(resp.headers.get("Content-Length", "-1"))
                return ObjectProbe(size, resp.headers.get("Content-Type", ""), first)

        try:
            async with asyncio.timeout(self._timeout * 2 + 0.5):
                return await fetch()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise ObjectStoreError(f"object store: {type(exc).__name__}") from exc

    async def _probe_with_client(self, key: str, first_bytes: int) -> ObjectProbe | None:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=key,
                                                 Range=f"bytes=0-{first_bytes - 1}")
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "InvalidRange":
                return ObjectProbe(0, "", b"")
            raise
        async with resp["Body"] as body:
            first: bytes = await body.read()
        total = _TOTAL.match(str(resp.get("ContentRange", "")))
        size = int(total[1]) if total is not None else int(resp["ContentLength"])
        return ObjectProbe(size, str(resp.get("ContentType", "")), first[:first_bytes])

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._call(self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                                 ContentType=content_type))

    async def delete(self, keys: list[str]) -> None:
        """Deletes the objects (a missing one is no error: deletes are repeated safely)."""
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            chunk = keys[start:start + 1000]
            await self._call(self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}))

    async def _call(self, coro: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout * 2 + 0.5):
                return await coro
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return None
            raise ObjectStoreError(f"object store: {code or exc}") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ObjectStoreError(f"object store: {type(exc).__name__}") from exc
