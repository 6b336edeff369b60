"""The outbox backlog (chat_shared.outbox) as the relay's probe and the operator read it.

Why: the relay's pending gauges and the operator's scaling decisions come from this one
statement; both must count every row still in the outbox (retries included) and nothing in
the dead-letter table.
"""

from __future__ import annotations

import uuid

from chat_shared.db import connect
from chat_shared.outbox import Backlog, read_backlog


async def test_backlog_counts_outbox_rows_and_the_oldest_age_but_not_dead_letters(
        db_source: str) -> None:
    async with await connect(db_source, application_name="chat-test", statement_timeout=5) as conn:
        assert await read_backlog(conn) == Backlog(pending=0, oldest_age_seconds=0.0)
        conv = uuid.uuid4()
        for seq, age in ((1, 90.0), (2, 1.0), (3, 0.0)):
            await conn.execute(
                "INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients,"
                " payload, created_at, next_attempt_at) VALUES (%(event)s, 'message.created',"
                " %(conv)s, %(seq)s, ARRAY['u1'], '{}'::jsonb,"
                " now() - make_interval(secs => %(age)s),"
                " CASE WHEN %(seq)s = 1 THEN now() + interval '1 minute' END)",
                {"event": uuid.uuid4(), "conv": conv, "seq": seq, "age": age})
        await conn.execute(
            "INSERT INTO outbox_dead_letter (event_id, event_type, conversation_id, seq,"
            " recipients, payload, created_at, attempts, last_error) VALUES (%(event)s, 'x',"
            " %(conv)s, 9, ARRAY['u1'], '{}'::jsonb, now() - interval '1 day', 4, 'boom')",
            {"event": uuid.uuid4(), "conv": conv})
        backlog = await read_backlog(conn)
    assert backlog.pending == 3  # the row waiting for its retry is pending; the dead letter not
    assert 90.0 <= backlog.oldest_age_seconds < 150.0
