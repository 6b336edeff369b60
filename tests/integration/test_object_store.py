"""chat_api.storage.objects against the real (moto-based) S3 server: presigned upload, HEAD,
ranged read, the send's probe, delete; a dead store is a bounded ObjectStoreError."""

from __future__ import annotations

import contextlib
import os

import pytest
import requests

from chat_api.settings import ObjectStoreSettings
from chat_api.storage.objects import ObjectProbe, ObjectStore, ObjectStoreError
from chat_devtools.local_s3 import LocalS3
from chat_devtools.ports import closed_port


def _settings(s3: LocalS3, **overrides: object) -> ObjectStoreSettings:
    env = {k.lower(): v for k, v in s3.env().items()}
    env.update(overrides)
    return ObjectStoreSettings(**env)  # type: ignore[arg-type]


async def _upload(store: ObjectStore, key: str, content_type: str, data: bytes) -> None:
    """Puts ``data`` at ``key`` as a client does: a form POST to the presigned policy."""
    post = await store.presign_post(key, content_type, len(data), 60)
    resp = requests.post(post.url, data=post.fields, files={"file": ("a", data)}, timeout=10)
    assert resp.status_code == 204, resp.text


async def test_upload_head_read_delete(s3: LocalS3) -> None:
    store = ObjectStore(_settings(s3))
    await store.open()
    try:
        await _upload(store, "t/c/u", "text/plain", b"hello")
        head = await store.head("t/c/u")
        assert head is not None and (head.size, head.content_type) == (5, "text/plain")
        assert await store.read("t/c/u", 3) == b"hel"
        url = await store.presign_get("t/c/u", 60, disposition='attachment; filename="a.txt"')
        got = requests.get(url, timeout=10)
        assert got.content == b"hello"
        await store.delete(["t/c/u", "t/c/never-existed"])
        assert await store.head("t/c/u") is None
        assert await store.read("t/c/u", 3) is None
    finally:
        await store.close()


@pytest.mark.parametrize("path_style", [True, False])
async def test_a_probe_is_size_type_and_first_bytes_in_one_get(s3: LocalS3, path_style: bool
                                                               ) -> None:
    """``probe`` (a presigned ranged GET on the store's own session) tells what HEAD does plus
    the first bytes, for objects longer and shorter than the range; the client's ranged GET
    (the path without explicit keys) tells the same."""
    store = ObjectStore(_settings(s3, s3_path_style=path_style))
    await store.open()
    try:
        for key, data, ctype in (("t/c/long ü~", b"\x89PNG\r\n\x1a\n" + bytes(range(200)),
                                  "image/png"),
                                 ("t/c/short", b"%PDF", "application/pdf")):
            post = await store.presign_post(key, ctype, len(data), 60)
            resp = requests.post(post.url, data=post.fields, files={"file": ("a", data)},
                                 timeout=10)
            assert resp.status_code == 204, resp.text
            expected = ObjectProbe(len(data), ctype, data[:16])
            assert await store.probe(key, 16) == expected
            assert await store._call(store._probe_with_client(key, 16)) == expected
        # An empty object has no byte 0: S3 answers 416, which is size 0 (and no type).
        post = await store.presign_post("t/c/empty", "text/plain", 0, 60)
        resp = requests.post(post.url, data=post.fields, files={"file": ("a", b"")}, timeout=10)
        assert resp.status_code == 204, resp.text
        assert await store.probe("t/c/empty", 16) == ObjectProbe(0, "", b"")
        assert await store._call(store._probe_with_client("t/c/empty", 16)) == \
            ObjectProbe(0, "", b"")
        assert await store.probe("t/c/missing", 16) is None
        assert await store._call(store._probe_with_client("t/c/missing", 16)) is None
    finally:
        await store.close()


async def test_probes_reuse_one_kept_alive_connection(s3: LocalS3) -> None:
    """Sequential probes (a send's check of its uploads) go over one TCP connection, which
    the store keeps alive: not a new connection per probe."""
    store = ObjectStore(_settings(s3))
    await store.open()
    try:
        await _upload(store, "t/c/kept", "application/pdf", b"%PDF")
        seen = []
        for _ in range(20):
            assert await store.probe("t/c/kept", 16) == ObjectProbe(4, "application/pdf",
                                                                     b"%PDF")
            seen.append(_established_to(s3.port))
        assert len(seen[0]) == 1 and seen == [seen[0]] * 20, seen
    finally:
        await store.close()


def _established_to(port: int) -> set[int]:
    """The local ports of this process's open TCP connections to ``port`` (from /proc)."""
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, remote, state, inode = (line.split()[i] for i in (1, 2, 3, 9))
                if int(remote.rsplit(":", 1)[1], 16) == port and state == "01" and \
                        inode in sockets:
                    out.add(int(local.rsplit(":", 1)[1], 16))
    return out


async def test_a_dead_store_fails_fast_without_retries(s3: LocalS3) -> None:
    with closed_port() as port:
        store = ObjectStore(_settings(s3, s3_endpoint=f"http://127.0.0.1:{port}",
                                      s3_timeout=0.5))
        await store.open()
        try:
            with pytest.raises(ObjectStoreError):
                await store.head("t/c/u")
            with pytest.raises(ObjectStoreError):
                await store.delete(["t/c/u"])
            with pytest.raises(ObjectStoreError):
                await store.probe("t/c/u", 16)
            # Presigning needs no store at all.
            assert (await store.presign_post("t/c/u", "text/plain", 5, 60)).fields["key"] == "t/c/u"
        finally:
            await store.close()


async def test_presigned_urls_name_the_public_endpoint(s3: LocalS3) -> None:
    public = s3.endpoint.replace("127.0.0.1", "localhost")
    store = ObjectStore(_settings(s3, s3_public_endpoint=public))
    await store.open()
    try:
        post = await store.presign_post("t/c/p", "text/plain", 2, 60)
        assert post.url.startswith(public + "/")
        resp = requests.post(post.url, data=post.fields, files={"file": ("a", b"hi")},
                             timeout=10)
        assert resp.status_code == 204, resp.text
        assert (await store.presign_get("t/c/p", 60)).startswith(public + "/")
        assert await store.read("t/c/p", 2) == b"hi"  # the API's own calls: S3_ENDPOINT
    finally:
        await store.close()


@pytest.mark.parametrize("path_style", [True, False])
async def test_the_fast_presigned_get_is_what_botocore_signs(s3: LocalS3, path_style: bool
                                                            ) -> None:
    """The URL signed here equals the client's generate_presigned_url (same second)."""
    store = ObjectStore(_settings(s3, s3_path_style=path_style))
    await store.open()
    try:
        key, disposition = "t/c/a b~ü", "attachment; filename=\"a b.pdf\"; filename*=UTF-8''a%20b"
        for _ in range(5):  # until both are signed within one second (X-Amz-Date)
            ours = await store.presign_get(key, 300, disposition=disposition,
                                           content_type="application/pdf")
            theirs = await store._signer.generate_presigned_url(
                "get_object", ExpiresIn=300, Params={
                    "Bucket": store.bucket, "Key": key, "ResponseContentType": "application/pdf",
                    "ResponseContentDisposition": disposition})
            if _date(ours) == _date(theirs):
                break
        assert _params(ours) == _params(theirs)
        assert ours.split("?")[0] == theirs.split("?")[0]
    finally:
        await store.close()


def _params(url: str) -> dict[str, list[str]]:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)


def _date(url: str) -> str:
    return _params(url)["X-Amz-Date"][0]


@pytest.mark.parametrize(("path_style", "public"), [(True, False), (False, False),
                                                    (False, True)])
async def test_the_fast_presigned_post_is_what_botocore_signs(s3: LocalS3, path_style: bool,
                                                             public: bool) -> None:
    """The form signed here equals the client's generate_presigned_post (same second): the
    URL, the policy (conditions, expiration) and its signature; and the store takes it."""
    overrides: dict[str, object] = {"s3_path_style": path_style}
    if public:  # a host name: virtual-hosted style names the bucket in it
        overrides["s3_public_endpoint"] = s3.endpoint.replace("127.0.0.1", "localhost")
    store = ObjectStore(_settings(s3, **overrides))
    await store.open()
    try:
        key = "t/c/a b~ü"
        for _ in range(5):  # until both are signed within one second (x-amz-date)
            ours = await store.presign_post(key, "application/pdf", 4, 900)
            theirs = await store._signer.generate_presigned_post(
                store.bucket, key, Fields={"Content-Type": "application/pdf"},
                Conditions=[["content-length-range", 4, 4],
                            {"Content-Type": "application/pdf"}], ExpiresIn=900)
            if ours.fields["x-amz-date"] == theirs["fields"]["x-amz-date"]:
                break
        assert (ours.url, ours.fields) == (theirs["url"], theirs["fields"])
        if path_style:
            resp = requests.post(ours.url, data=ours.fields, files={"file": ("a", b"%PDF")},
                                 timeout=10)
            assert resp.status_code == 204, resp.text
            assert await store.probe(key, 16) == ObjectProbe(4, "application/pdf", b"%PDF")
    finally:
        await store.close()
