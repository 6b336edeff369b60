"""The development S3 server refuses what a real store refuses: uploads that break their signed
POST policy (size, type, key, signature, expiry) and expired presigned URLs."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from chat_devtools.local_s3 import LocalS3


def _post(s3: LocalS3, key: str, content_type: str, size: int, expires: int = 60
          ) -> dict[str, Any]:
    from botocore.config import Config
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region,
                          aws_access_key_id=s3.access_key_id,
                          aws_secret_access_key=s3.secret_access_key,
                          config=Config(signature_version="s3v4",
                                        s3={"addressing_style": "path"}))
    return dict(client.generate_presigned_post(
        s3.bucket, key, Fields={"Content-Type": content_type},
        Conditions=[["content-length-range", size, size], {"Content-Type": content_type}],
        ExpiresIn=expires))


def _upload(post: dict[str, Any], data: bytes, **override: str) -> requests.Response:
    fields = dict(post["fields"], **override)
    return requests.post(post["url"], data=fields, files={"file": ("f", data)}, timeout=10)


def test_a_matching_upload_is_stored(s3: LocalS3) -> None:
    resp = _upload(_post(s3, "t/c/ok", "image/png", 10), b"x" * 10)
    assert resp.status_code == 204, resp.text
    head = s3.client().head_object(Bucket=s3.bucket, Key="t/c/ok")  # type: ignore[attr-defined]
    assert head["ContentLength"] == 10
    assert head["ContentType"] == "image/png"


@pytest.mark.parametrize(("data", "override", "code"), [
    (b"x" * 11, {}, "EntityTooLarge"),
    (b"x" * 9, {}, "EntityTooSmall"),
    (b"x" * 10, {"Content-Type": "text/html"}, "AccessDenied"),
    (b"x" * 10, {"key": "other-tenant/c/k"}, "AccessDenied"),
    (b"x" * 10, {"x-amz-signature": "0" * 64}, "SignatureDoesNotMatch"),
])
def test_an_upload_breaking_its_policy_is_refused(
        s3: LocalS3, data: bytes, override: dict[str, str], code: str) -> None:
    resp = _upload(_post(s3, "t/c/bad", "image/png", 10), data, **override)
    assert resp.status_code in (400, 403)
    assert f"<Code>{code}</Code>" in resp.text
    listed = s3.client().list_objects_v2(Bucket=s3.bucket)  # type: ignore[attr-defined]
    assert listed.get("KeyCount", 0) == 0


def test_an_expired_presigned_url_is_refused(s3: LocalS3) -> None:
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="t/c/k", Body=b"abc")  # type: ignore[attr-defined]
    url = client.generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": s3.bucket, "Key": "t/c/k"}, ExpiresIn=1)
    assert requests.get(url, timeout=10).content == b"abc"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the URL's second runs out (bounded wait)
        resp = requests.get(url, timeout=10)
        if resp.status_code != 200:
            break
        time.sleep(0.25)
    assert resp.status_code == 403
    assert "Request has expired" in resp.text
