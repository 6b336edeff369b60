"""``chat-outbox dlq ...`` as a real subprocess against a real database."""

from __future__ import annotations

import pathlib
import subprocess

from tests.conftest import coverage_env
from tests.e2e.test_relay_helpers import VENV_BIN, sql


def seed_dead_letters(dsn: str, n: int) -> list[tuple[int, str]]:
    rows = sql(dsn, """
        INSERT INTO outbox_dead_letter (event_id, event_type, conversation_id, seq, recipients,
                                        payload, created_at, attempts, last_error)
        SELECT gen_random_uuid(), 'message.created', gen_random_uuid(), g, ARRAY['alice','bob'],
               jsonb_build_object('message', jsonb_build_object('content', 'poison ' || g)),
               now() - interval '1 minute', 4, 'WRONGTYPE Operation against a key ' || g
        FROM generate_series(1, %s) g
        RETURNING id, event_id::text
    """, (n,))
    return [(int(r[0]), str(r[1])) for r in sorted(rows)]


def outbox_cli(dsn: str, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "chat-outbox"), *args],
                          env={"DB_SOURCE": dsn, "PATH": "/usr/bin:/bin", **coverage_env()},
                          cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_list_and_show(db_source: str, tmp_path: pathlib.Path) -> None:
    empty = outbox_cli(db_source, tmp_path, "dlq", "list")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no dead letters")
    seeded = seed_dead_letters(db_source, 3)
    listed = outbox_cli(db_source, tmp_path, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "EVENT_ID", "TYPE"]
    assert [line.split()[1] for line in lines[1:4]] == [e for _, e in seeded]
    assert lines[-1] == "3 dead letter(s)"
    limited = outbox_cli(db_source, tmp_path, "dlq", "list", "--limit", "1")
    assert limited.stdout.strip().splitlines()[-1] == "3 dead letter(s) (showing 1)"

    dl_id, event_id = seeded[1]
    shown = outbox_cli(db_source, tmp_path, "dlq", "show", str(dl_id))
    assert shown.returncode == 0, shown.stderr
    assert f"event_id:        {event_id}" in shown.stdout
    assert "attempts:        4" in shown.stdout
    assert "last_error:      WRONGTYPE Operation against a key 2" in shown.stdout
    assert '"content": "poison 2"' in shown.stdout

    missing = outbox_cli(db_source, tmp_path, "dlq", "show", "999999")
    assert missing.returncode == 1
    assert "no dead letter with id 999999" in missing.stderr


def test_replay_one_and_all(db_source: str, tmp_path: pathlib.Path) -> None:
    seeded = seed_dead_letters(db_source, 3)
    (first_id, first_event), *rest = seeded
    one = outbox_cli(db_source, tmp_path, "dlq", "replay", str(first_id))
    assert one.returncode == 0, one.stderr
    assert f"replayed dead letter {first_id} (event {first_event})" in one.stdout
    assert sql(db_source, "SELECT event_id::text, attempts, next_attempt_at, last_error "
                          "FROM outbox") == [(first_event, 0, None, None)]
    again = outbox_cli(db_source, tmp_path, "dlq", "replay", str(first_id))
    assert again.returncode == 1 and f"no dead letter with id {first_id}" in again.stderr

    everything = outbox_cli(db_source, tmp_path, "dlq", "replay", "--all")
    assert everything.returncode == 0, everything.stderr
    assert "2 dead letter(s) moved back to the outbox" in everything.stdout
    outbox = sql(db_source, "SELECT event_id::text FROM outbox ORDER BY id")
    assert [r[0] for r in outbox] == [first_event] + [e for _, e in rest]
    assert sql(db_source, "SELECT count(*) FROM outbox_dead_letter") == [(0,)]

    usage = outbox_cli(db_source, tmp_path, "dlq", "replay")
    assert usage.returncode == 2


def test_purge_older_than(db_source: str, tmp_path: pathlib.Path) -> None:
    seeded = seed_dead_letters(db_source, 3)
    old_id = seeded[0][0]
    sql(db_source, "UPDATE outbox_dead_letter SET failed_at = now() - interval '8 days' "
                   "WHERE id = %s", (old_id,))
    purged = outbox_cli(db_source, tmp_path, "dlq", "purge", "--older-than", "7d")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("purged 1 dead letter(s)")
    left = sql(db_source, "SELECT id FROM outbox_dead_letter ORDER BY id")
    assert [r[0] for r in left] == [i for i, _ in seeded[1:]]
    bad = outbox_cli(db_source, tmp_path, "dlq", "purge", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_unreachable_database_and_missing_config(tmp_path: pathlib.Path) -> None:
    port = 1  # nothing listens there
    down = outbox_cli(f"postgresql://postgres@127.0.0.1:{port}/x?sslmode=disable", tmp_path,
                      "dlq", "list")
    assert down.returncode == 3 and "cannot reach the database" in down.stderr
    unset = subprocess.run([str(VENV_BIN / "chat-outbox"), "dlq", "list"],
                           env={"PATH": "/usr/bin:/bin", **coverage_env()}, cwd=tmp_path,
                           capture_output=True,
                           text=True, timeout=60)
    assert unset.returncode == 2 and "DB_SOURCE is not set" in unset.stderr
