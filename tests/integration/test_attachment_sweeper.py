"""The sweeper deletes uploads never attached once they are old enough (rows and objects, every
tenant), leaves attached ones and young ones alone, and two sweepers at once never delete a row
twice; a deleted message's attachments are erased by the deletion itself and their objects
(files and thumbnails) deleted by the next pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc

from chat_api.service.attachment_sweeper import ERASED_SWEPT, ORPHANS_SWEPT, OrphanSweeper
from chat_api.storage.attachments import AttachmentRepository
from chat_shared.protos.chat.v1 import chat_pb2
from tests.attachment_helpers import (  # noqa: F401 - fixtures
    PDF_BYTES,
    astub,
    attach_api,
    send_with,
    upload,
)
from tests.conftest import auth
from tests.helpers import create_conversation, db_rows, error_info, get_messages, rpc_error


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


async def test_deleting_a_message_erases_its_attachments_and_the_sweeper_their_objects(
        astub, attach_api, db_source, s3) -> None:
    conv = await create_conversation(astub, "alice", ["bob"])
    ids = [await upload(astub, "alice", conv.id, PDF_BYTES, "application/pdf", f"secret{i}.pdf")
           for i in range(2)]
    msg = await send_with(astub, "alice", conv.id, ids, key="k-erase")
    # As if the thumbnail worker had made one for the first file.
    [(key,)] = await db_rows(db_source, "SELECT object_key FROM attachments WHERE id = %s",
                             ids[0])
    s3.client().put_object(Bucket=s3.bucket, Key=f"{key}.thumb.jpg", Body=b"thumb")
    await db_rows(db_source, "UPDATE attachments SET thumbnail_key = object_key || '.thumb.jpg'"
                             " WHERE id = %s RETURNING id", ids[0])
    deleted = (await astub.DeleteMessage(chat_pb2.DeleteMessageRequest(
        conversation_id=conv.id, message_id=msg.id), metadata=auth("alice"))).message
    assert deleted.deleted and not deleted.attachments

    # From the deletion's commit on, nothing names them: reads, the event, downloads.
    [shown] = (await get_messages(astub, "bob", conv.id)).messages
    assert shown.deleted and not shown.attachments
    [(payload,)] = await db_rows(db_source, "SELECT payload FROM outbox"
                                            " WHERE event_type = 'message.deleted'")
    assert "attachments" not in payload["message"]
    for caller in ("alice", "bob"):
        for upload_id in ids:
            err = await rpc_error(astub.GetAttachmentUrl(
                chat_pb2.GetAttachmentUrlRequest(attachment_id=upload_id), metadata=auth(caller)))
            assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(send_with(astub, "alice", conv.id, ids[:1], key="k-again"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "ATTACHMENT_ALREADY_USED"
    assert await db_rows(db_source, "SELECT status, message_id, filename FROM attachments") == [
        ("erased", None, ""), ("erased", None, "")]

    # The rows are the queue of their objects: the next pass deletes files and thumbnail.
    def stored() -> set[str]:
        listed = s3.client().list_objects_v2(Bucket=s3.bucket)
        return {o["Key"] for o in listed.get("Contents", [])}
    assert len(stored()) == 3
    before = ERASED_SWEPT._value.get()
    sweeper = OrphanSweeper(AttachmentRepository(attach_api.db), attach_api.store,
                            orphan_after=86400)
    assert await sweeper.sweep_once() == 3
    assert ERASED_SWEPT._value.get() - before == 3
    assert stored() == set()
    assert await db_rows(db_source, "SELECT count(*) FROM attachments") == [(0,)]
    assert await sweeper.sweep_once() == 0
