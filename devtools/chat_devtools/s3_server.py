"""The development S3 server: moto's standalone server, plus the upload checks moto leaves out.

moto (5.x) speaks the S3 API well enough for everything the API does (presigned POST and GET,
HEAD, ranged GET, DELETE), but it accepts any upload: it checks neither a POST policy (its
signature, expiration and conditions) nor the expiry of a presigned URL. AWS S3, MinIO and every
other real store refuse such requests, and the attachment contract relies on it: the declared
size and type are enforced by the store at upload time, and a URL stops working when it expires.
So this server puts those checks in front of moto, as S3 documents them
(https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-HTTPPOSTConstructPolicy.html):

- POST (browser form upload): the policy's SigV4 signature with the server's secret key, its
  ``expiration``, and every condition: exact matches (``{"field": value}``, ``["eq", ...]``),
  ``["starts-with", ...]`` and ``["content-length-range", min, max]`` on the file's size
  (``EntityTooLarge`` / ``EntityTooSmall``); a form field no condition covers is refused too;
- a presigned URL (query-string SigV4 or V2): refused after ``X-Amz-Date`` + ``X-Amz-Expires``
  (``Expires``).

Everything else passes to moto's S3 application unchanged (moto serves S3 only here).
Development and tests only: never in an image.

The HTTP server is waitress (HTTP/1.1, connections kept alive, a pool of worker threads), not
werkzeug's development server, which moto's own ``moto_server`` uses: werkzeug answers every
request with ``Connection: close``, so each request a client makes (the API's check of an
upload on every send with attachments) paid a new TCP connection and a new server thread.
Kept alive, a ranged GET costs its caller half the wall time and CPU (2.4 -> 1.2 ms wall,
0.62 -> 0.34 ms of the client's CPU, 1.23 -> 0.73 ms of the server's; 5 x 300 sequential
probes through ``ObjectStore.probe``, quiet 2-core machine). waitress drops request headers
with an underscore in their name (moto's werkzeug handler kept them, for object metadata such
as ``x-amz-meta-my_key``, which nothing here sends).

Usage: ``python -m chat_devtools.s3_server --host 127.0.0.1 --port PORT`` with
``S3_SECRET_ACCESS_KEY`` in the environment (the key the policies are signed with).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

THREADS = 8
"""Requests served at once (waitress's worker threads); more wait in its queue."""
CONNECTION_LIMIT = 1000
"""Open connections at most: kept-alive connections of the API's pools stay open."""
MAX_FORM_BYTES = 256 << 20
"""A POST body larger than this is refused before it is read (the tests upload kilobytes)."""

# Form fields S3 does not require a condition for.
_UNCHECKED_FIELDS = frozenset({"file", "policy", "x-amz-signature", "signature"})


class Refused(Exception):
    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def check_post_policy(fields: dict[str, str], file_size: int, bucket: str, secret: str,
                      now: datetime) -> None:
    """Raises Refused unless the form's policy is signed with ``secret``, unexpired, and every
    condition holds (field names compare case-insensitively, as S3 does)."""
    lowered = {k.lower(): v for k, v in fields.items()}
    policy_b64 = lowered.get("policy")
    if not policy_b64:
        raise Refused("403 Forbidden", "AccessDenied", "a POST upload needs a signed policy")
    credential = lowered.get("x-amz-credential", "")
    parts = credential.split("/")
    if len(parts) != 5 or lowered.get("x-amz-algorithm") != "AWS4-HMAC-SHA256":
        raise Refused("403 Forbidden", "AccessDenied", "only SigV4 POST policies are accepted")
    _, date, region, service, _ = parts
    expected = hmac.new(_signing_key(secret, date, region, service), policy_b64.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, lowered.get("x-amz-signature", "")):
        raise Refused("403 Forbidden", "SignatureDoesNotMatch", "the policy's signature is wrong")
    policy = json.loads(base64.b64decode(policy_b64))
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    if now > expiration:
        raise Refused("403 Forbidden", "AccessDenied", "Invalid according to Policy: "
                                                       "Policy expired.")
    values = dict(lowered, bucket=bucket)
    covered: set[str] = set()
    for condition in policy.get("conditions", []):
        if isinstance(condition, dict):
            for name, value in condition.items():
                _match("eq", name.lower(), str(value), values)
                covered.add(name.lower())
        elif condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if file_size > high:
                raise Refused("400 Bad Request", "EntityTooLarge",
                              "Your proposed upload exceeds the maximum allowed size")
            if file_size < low:
                raise Refused("400 Bad Request", "EntityTooSmall",
                              "Your proposed upload is smaller than the minimum allowed size")
        else:
            op, name, value = condition
            name = name.lstrip("$").lower()
            _match(op, name, str(value), values)
            covered.add(name)
    for name in lowered:
        if name not in covered and name not in _UNCHECKED_FIELDS and not name.startswith(
                ("x-ignore-", "x-amz-credential", "x-amz-algorithm", "x-amz-date")):
            raise Refused("403 Forbidden", "AccessDenied",
                          f"Invalid according to Policy: Extra input fields: {name}")


def _match(op: str, name: str, value: str, values: dict[str, str]) -> None:
    given = values.get(name, "")
    ok = given == value if op == "eq" else given.startswith(value)
    if not ok:
        raise Refused("403 Forbidden", "AccessDenied",
                      f"Invalid according to Policy: Policy Condition failed: "
                      f"[\"{op}\", \"${name}\", \"{value}\"]")


def check_presigned_expiry(query: dict[str, list[str]], now: datetime) -> None:
    """Raises Refused when a query-signed (presigned) URL is past its X-Amz-Expires."""
    if "Signature" in query and "Expires" in query:  # SigV2: Expires is an epoch second
        if now.timestamp() > int(query["Expires"][0]):
            raise Refused("403 Forbidden", "AccessDenied", "Request has expired")
        return
    if "X-Amz-Signature" not in query:
        return
    signed_at = datetime.strptime(query.get("X-Amz-Date", [""])[0], "%Y%m%dT%H%M%SZ")
    expires = int(query.get("X-Amz-Expires", ["0"])[0])
    if now > signed_at.replace(tzinfo=UTC) + timedelta(seconds=expires):
        raise Refused("403 Forbidden", "AccessDenied", "Request has expired")


def _error(start_response: StartResponse, refused: Refused) -> list[bytes]:
    body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{refused.code}</Code>"
            f"<Message>{refused.message}</Message></Error>").encode()
    start_response(refused.status, [("Content-Type", "application/xml"),
                                    ("Content-Length", str(len(body)))])
    return [body]


def enforcing(app: WsgiApp, secret: str, clock: Callable[[], datetime] | None = None) -> WsgiApp:
    """``app`` (moto) behind the checks of the module docstring."""
    from werkzeug.wrappers import Request

    now = clock or (lambda: datetime.now(UTC))

    def wrapped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            check_presigned_expiry(parse_qs(environ.get("QUERY_STRING", "")), now())
            content_type = environ.get("CONTENT_TYPE", "")
            if environ["REQUEST_METHOD"] == "POST" and content_type.startswith(
                    "multipart/form-data"):
                length = int(environ.get("CONTENT_LENGTH") or 0)
                if length > MAX_FORM_BYTES:
                    raise Refused("400 Bad Request", "EntityTooLarge", "form too large")
                body = environ["wsgi.input"].read(length)
                probe = dict(environ, **{"wsgi.input": io.BytesIO(body)})
                request = Request(probe)
                upload = request.files.get("file")
                size = len(upload.read()) if upload is not None else 0
                bucket = environ.get("PATH_INFO", "/").strip("/").split("/")[0]
                check_post_policy(dict(request.form.items()), size, bucket, secret, now())
                environ["wsgi.input"] = io.BytesIO(body)
        except Refused as refused:
            return _error(start_response, refused)
        except (ValueError, KeyError, IndexError) as exc:
            return _error(start_response, Refused("400 Bad Request", "InvalidArgument",
                                                  f"malformed request: {exc}"))
        return app(environ, start_response)

    return wrapped


def main(argv: list[str] | None = None) -> None:
    import waitress
    from moto.moto_server.werkzeug_app import create_backend_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"requests served at once ({THREADS})")
    args = parser.parse_args(argv)
    secret = os.environ.get("S3_SECRET_ACCESS_KEY", "")
    if not secret:
        raise SystemExit("S3_SECRET_ACCESS_KEY must be set (the key POST policies are "
                         "signed with)")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    # moto's S3 application itself, not its dispatcher (which finds the service of every
    # request from its headers, scanning moto's package directories, under one global lock):
    # this server speaks S3 only, and a ranged GET costs it 2.5 to 3.9 ms of CPU instead of
    # 4.1 to 4.9, and its caller 11 ms instead of 15 to 16 (load average 8, from other work).
    moto_app = create_backend_app("s3")
    waitress.serve(enforcing(moto_app, secret), host=args.host, port=args.port,
                   threads=args.threads, connection_limit=CONNECTION_LIMIT,
                   asyncore_use_poll=True, ident="chat-dev-s3", _quiet=True)


if __name__ == "__main__":
    main()
