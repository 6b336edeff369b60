"""Attachments: uploads straight to the object store, checks before a send, downloads.

Files never pass through the API (docs/attachments.md). CreateUpload records the upload and
hands out a presigned POST that the store enforces (exact size, declared type, this key only,
15 minutes); SendMessage asks the store for each upload (one ranged GET each: there, its size
and type; images: the first bytes are its type's format, so a ``.png`` that is not a PNG is
refused) and passes what the store answered to the send statement, which moves the uploads to
the message only when their rows are free and declare that size and type; the rows are read
apart only to say why a send was refused;
GetAttachmentUrl hands members a presigned GET of 5 minutes. Presigning is local: neither
CreateUpload nor GetAttachmentUrl calls the store.

Object keys are ``<tenant>/<conversation>/<upload id>``: tenant-scoped and never derived from
the user's filename, which is only ever shown (sanitised) and put in Content-Disposition.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from prometheus_client import Counter

from chat_api.models import MessageRecord, StoredUpload, UploadRecord
from chat_api.service import validation
from chat_api.service.reads import NOT_FOUND
from chat_api.service.tenants import TenantDirectory
from chat_api.storage.attachments import AttachmentRepository
from chat_api.storage.objects import ObjectProbe, ObjectStore, ObjectStoreError
from chat_shared.auth import Principal
from chat_shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

UPLOAD_TTL = timedelta(minutes=15)
DOWNLOAD_TTL = timedelta(minutes=5)
MAX_FILENAME = 255
"""Characters of a sanitised filename (most file systems' limit for a name)."""
DEFAULT_MAX_BYTES = 25 << 20
LIMIT_NAME = "max_attachment_bytes"
"""The tenant limit (``chat-tenant set-limit``) that overrides ATTACHMENT_MAX_BYTES."""

# Image formats by their first bytes: an upload declared as one must start so.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
SNIFF_BYTES = 16

REASON_DISABLED = "ATTACHMENTS_DISABLED"
REASON_NOT_UPLOADED = "UPLOAD_INCOMPLETE"
REASON_USED = "ATTACHMENT_ALREADY_USED"
REASON_MISMATCH = "UPLOAD_MISMATCH"

BYTES_UPLOADED = Counter("chat_attachment_bytes_uploaded_total",
                         "Bytes of uploads attached to messages (checked in the store)")


def disabled() -> FailedPrecondition:
    return FailedPrecondition("attachments are not enabled on this server (no S3_ENDPOINT)",
                              reason=REASON_DISABLED)


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def sanitise_filename(name: str) -> str:
    """A filename safe to show and to put in Content-Disposition: path separators, control and
    format characters become ``_``, leading dots and surrounding spaces go (no hidden or
    relative names), and it is cut to MAX_FILENAME characters keeping its extension."""
    cleaned = "".join("_" if _UNSAFE.match(c) or unicodedata.category(c) in ("Cc", "Cf")
                      else c for c in unicodedata.normalize("NFC", name))
    cleaned = cleaned.strip().lstrip(".").strip() or "file"
    if len(cleaned) > MAX_FILENAME:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            cleaned = stem[:MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            cleaned = cleaned[:MAX_FILENAME]
    return cleaned


def content_disposition(filename: str, *, inline: bool) -> str:
    """RFC 6266: an ASCII fallback and the UTF-8 name (RFC 5987)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


RASTER_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Shown inline and thumbnailed; anything else (SVG included: it can carry script) downloads
as an attachment."""


def is_image(content_type: str) -> bool:
    return content_type in RASTER_IMAGES


def object_key(tenant_id: str, conversation_id: str, upload_id: str) -> str:
    """An upload's object key: tenant-scoped, never derived from the user's filename."""
    return f"{tenant_id}/{conversation_id}/{upload_id}"


def _sniffed_as(probe: ObjectProbe) -> bool:
    """Whether the object's first bytes are those of its stored type's format (images; any
    other type passes)."""
    content_type, first = probe.content_type.lower(), probe.first
    if content_type == "image/webp":
        return first[:4] == b"RIFF" and first[8:12] == b"WEBP"
    magic = _MAGIC.get(content_type)
    return magic is None or first.startswith(magic)


def _verify(row: UploadRecord, field: str, probe: ObjectProbe | None) -> None:
    """Raises FailedPrecondition unless the store holds the upload as declared: there, of the
    declared size and type, and an image starting as its format does."""
    if probe is None:
        raise FailedPrecondition(f"{field}: not uploaded yet", reason=REASON_NOT_UPLOADED,
                                 metadata={"field": field})
    if probe.size != row.size_bytes or probe.content_type.lower() != row.content_type:
        raise FailedPrecondition(f"{field}: the stored file is not the declared size and "
                                 f"type", reason=REASON_MISMATCH, metadata={"field": field})
    if not _sniffed_as(probe):  # the stored type is the declared one (checked above)
        raise FailedPrecondition(f"{field}: the file is not a {row.content_type} image",
                                 reason=REASON_MISMATCH, metadata={"field": field})


Probe = ObjectProbe | ObjectStoreError | None
"""The store's answer for an object: there (size, type, first bytes), missing, or no answer."""


@dataclass(frozen=True, slots=True)
class CheckedUploads:
    """``check_for_send``'s answer: the uploads for the send statement, in the send's order,
    and the store's answer for each (by upload id), which explains a refused send."""

    uploads: list[StoredUpload]
    probes: dict[str, Probe]


@dataclass(frozen=True, slots=True)
class UploadTicket:
    upload_id: str
    url: str
    fields: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignedUrl:
    url: str
    expires_at: datetime


class AttachmentService:
    def __init__(self, repo: AttachmentRepository, store: ObjectStore, tenants: TenantDirectory,
                 *, content_types: frozenset[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 max_per_message: int = 10) -> None:
        self._repo = repo
        self._store = store
        self._tenants = tenants
        self._content_types = content_types
        self._max_bytes = max_bytes
        self.max_per_message = max_per_message

    async def create_upload(self, caller: Principal, conversation_id: str, filename: str,
                            content_type: str, size_bytes: int) -> UploadTicket:
        cid = validation.conversation_id(conversation_id)
        ctype = content_type.strip().lower()
        if ctype not in self._content_types:
            raise InvalidArgument("content_type", "is not an allowed type (allowed: "
                                  + ", ".join(sorted(self._content_types)) + ")")
        tenant = await self._tenants.admit(caller.tenant_id)
        limit = tenant.limit(LIMIT_NAME, self._max_bytes)
        if size_bytes > limit:
            raise InvalidArgument("size_bytes", f"at most {limit} bytes in this tenant")
        upload_id = str(uuid.uuid4())
        key = object_key(caller.tenant_id, cid, upload_id)
        created = await self._repo.create(caller.tenant_id, upload_id, cid, caller.user_id,
                                          sanitise_filename(filename), ctype, size_bytes, key)
        if created is None:
            raise NotFound(NOT_FOUND)
        post = await self._store.presign_post(key, ctype, size_bytes,
                                              int(UPLOAD_TTL.total_seconds()))
        return UploadTicket(upload_id, post.url, post.fields, datetime.now(UTC) + UPLOAD_TTL)

    async def check_for_send(self, caller: Principal, conversation_id: str,
                             ids: Sequence[str], idempotency_key: str) -> CheckedUploads:
        """The uploads to attach, each as the store holds it (canonical id, size, type), for
        the send statement, which attaches an upload only when its row is free (the caller's,
        to this conversation, not attached) and declares that size and type.

        Each upload's object is asked for at once (one ranged GET: size, type, first bytes):
        its key follows from the tenant, the conversation and the upload id
        (``create_upload``), so no row is read first. When every object is there and an
        image's first bytes are its type's, that is the whole check: the rows are read only
        when the send is refused (``explain_refusal``). When one is not, the rows are read
        now and the error says which upload, and why.

        Raises InvalidArgument (too many), FailedPrecondition (one is not the caller's upload
        to this conversation, is attached already, or is not in the store as declared) or
        Unavailable (the store did not answer).
        """
        if len(ids) > self.max_per_message:
            raise InvalidArgument("attachment_ids", f"at most {self.max_per_message} per "
                                                    f"message")
        wanted = [str(uuid.UUID(i)) for i in ids]
        unique = list(dict.fromkeys(wanted))
        probes = dict(zip(unique, await asyncio.gather(*(
            self._probe(object_key(caller.tenant_id, conversation_id, upload_id))
            for upload_id in unique)), strict=True))
        stored = []
        for upload_id in wanted:
            probe = probes[upload_id]
            if not isinstance(probe, ObjectProbe) or not _sniffed_as(probe):
                break
            stored.append(StoredUpload(upload_id, probe.size, probe.content_type.lower()))
        else:
            return CheckedUploads(stored, probes)
        # One is missing, not what its type says, or the store failed: why, from the rows.
        await self._explain(caller, conversation_id, wanted, idempotency_key, probes)
        # Nothing to say: each upload left is attached to this send's own earlier message (a
        # retry, which the send statement answers with that message).
        return CheckedUploads(
            [StoredUpload(i, p.size, p.content_type.lower()) if isinstance(p, ObjectProbe)
             else StoredUpload(i, -1, "") for i, p in ((i, probes[i]) for i in wanted)], probes)

    async def explain_refusal(self, caller: Principal, conversation_id: str,
                              checked: CheckedUploads, idempotency_key: str) -> None:
        """Raises the error of the first upload (in the send's order) that cannot be attached,
        from its row and the store's answer; returns when there is none (the send was refused
        for another reason, or an upload was attached meanwhile).

        An upload attached to this sender's message of the same idempotency key passes: a
        retry of the send that attached it, which the send statement answers with it.
        """
        await self._explain(caller, conversation_id, [u.id for u in checked.uploads],
                            idempotency_key, checked.probes)

    async def _explain(self, caller: Principal, conversation_id: str, wanted: Sequence[str],
                       idempotency_key: str, probes: Mapping[str, Probe]) -> None:
        rows = {r.id: r for r in await self._repo.for_send(
            caller.tenant_id, caller.user_id, list(wanted))}
        fresh: list[tuple[int, UploadRecord]] = []
        for index, upload_id in enumerate(wanted):
            row = rows.get(upload_id)
            field = f"attachment_ids[{index}]"
            if row is None or row.uploader != caller.user_id or \
                    row.conversation_id != conversation_id:
                raise FailedPrecondition(f"{field}: not an upload of yours to this "
                                         f"conversation", reason=REASON_MISMATCH,
                                         metadata={"field": field})
            if row.attached:
                if row.attached_with_key == idempotency_key:
                    continue  # a retry of the send that attached it: the send answers
                raise FailedPrecondition(f"{field}: already attached to a message",
                                         reason=REASON_USED, metadata={"field": field})
            fresh.append((index, row))
        # A probe's answer counts only for a row the caller may attach (checked above).
        for index, row in fresh:
            if row.id in probes and row.object_key == object_key(
                    caller.tenant_id, conversation_id, row.id):
                probe = probes[row.id]
            else:  # a key of another form (none is made so today): asked now
                probe = await self._probe(row.object_key)
            if isinstance(probe, ObjectStoreError):
                raise Unavailable("the object store did not answer") from probe
            _verify(row, f"attachment_ids[{index}]", probe)

    async def _probe(self, key: str) -> ObjectProbe | ObjectStoreError | None:
        """The store's answer for ``key``, its failure as a value: a probe whose row turns out
        not to be attachable is dropped, and its failure with it."""
        try:
            return await self._store.probe(key, SNIFF_BYTES)
        except ObjectStoreError as exc:
            return exc

    async def used_elsewhere(self, caller: Principal, ids: Sequence[str]) -> bool:
        """Whether one of the uploads is attached by now (after a send found one taken)."""
        rows = await self._repo.for_send(caller.tenant_id, caller.user_id, list(ids))
        return any(r.attached for r in rows)

    def count_attached(self, record: MessageRecord) -> None:
        BYTES_UPLOADED.inc(sum(a.size_bytes for a in record.attachments))

    async def download_url(self, caller: Principal, attachment_id: str, thumbnail: bool
                           ) -> SignedUrl:
        aid = str(uuid.UUID(attachment_id))
        row = await self._repo.for_download(caller.tenant_id, caller.user_id, aid)
        if row is None:
            raise NotFound("attachment not found")
        seconds = int(DOWNLOAD_TTL.total_seconds())
        expires = datetime.now(UTC) + DOWNLOAD_TTL
        if thumbnail:
            if row.thumbnail_key is None:
                raise FailedPrecondition("the attachment has no thumbnail (yet)",
                                         reason="THUMBNAIL_NOT_READY")
            url = await self._store.presign_get(
                row.thumbnail_key, seconds, content_type="image/jpeg",
                disposition=content_disposition(row.filename + ".thumbnail.jpg", inline=True))
            return SignedUrl(url, expires)
        image = is_image(row.content_type)
        url = await self._store.presign_get(
            row.object_key, seconds, content_type=row.content_type,
            disposition=content_disposition(row.filename, inline=image))
        return SignedUrl(url, expires)
