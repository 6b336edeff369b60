"""The orphan sweeper deletes uploads never attached once they are old enough (rows and
objects, every tenant), leaves attached ones and young ones alone, and two sweepers at once
never delete a row twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from chat_api.service.attachment_sweeper import ORPHANS_SWEPT, OrphanSweeper
from chat_api.storage.attachments import AttachmentRepository
from tests.attachment_helpers import (  # noqa: F401 - fixtures
    PDF_BYTES,
    astub,
    attach_api,
    send_with,
    upload,
)
from tests.helpers import create_conversation, db_rows


async def test_old_unattached_uploads_are_swept_once(astub, attach_api, db_source, s3) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    kept = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
    await send_with(astub, "alice", conv.id, [kept])
    orphans = [await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
               for _ in range(3)]
    young = await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf")
    await db_rows(db_source, "UPDATE attachments SET created_at = now() - interval '25 hours'"
                             " WHERE id <> %s RETURNING id", young)
    repo = AttachmentRepository(attach_api.db)
    later = datetime.now(UTC)
    sweepers = [OrphanSweeper(repo, attach_api.store, orphan_after=86400,
                              clock=lambda: later) for _ in range(2)]
    before = ORPHANS_SWEPT._value.get()
    counts = await asyncio.gather(*(s.sweep_once() for s in sweepers))
    assert sum(counts) == 3
    assert ORPHANS_SWEPT._value.get() - before == 3
    left = {r[0] for r in await db_rows(db_source, "SELECT id::text FROM attachments")}
    assert left == {kept, young}
    listed = s3.client().list_objects_v2(Bucket=s3.bucket)
    keys = {o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])}
    assert keys == {kept, young}
    assert not set(orphans) & keys
    # A day later the young one goes too; the attached one never does.
    much_later = OrphanSweeper(repo, attach_api.store, orphan_after=86400,
                               clock=lambda: later + timedelta(days=2))
    assert await much_later.sweep_once() == 1
