"""`chat-migrate` as deployments run it: a real subprocess against a real, empty database.

Upgrade must build the whole schema, `downgrade base` must take all of it away (so a broken
release can be rolled back), and upgrading again must work on the emptied database.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess

import pytest

from chat_devtools.local_postgres import LocalPostgres
from chat_devtools.ports import closed_port

OUR_TABLES = {"conversations", "conversation_members", "messages", "outbox", "tenants",
               "outbox_dead_letter", "conversation_changes", "message_reactions",
               "attachments", "e2ee_devices", "e2ee_one_time_keys", "e2ee_to_device"}
_names = itertools.count()


def migrate(venv_bin: pathlib.Path, cwd: pathlib.Path, *args: str,
            db_source: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.upper() != "DB_SOURCE"}
    if db_source is not None:
        env["DB_SOURCE"] = db_source
    # cwd is an empty directory so that no app.env is picked up.
    return subprocess.run([str(venv_bin / "chat-migrate"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=90)


@pytest.fixture
def empty_db(postgres: LocalPostgres) -> tuple[str, str]:
    name = f"migr_{os.getpid()}_{next(_names)}"
    return name, postgres.create_database(name)


def public_tables(postgres: LocalPostgres, db: str) -> set[str]:
    out = postgres.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", db)
    return set(out.split()) - {"alembic_version"}


def public_functions(postgres: LocalPostgres, db: str) -> set[str]:
    out = postgres.psql(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public'", db)
    return set(out.split())


def test_upgrade_creates_every_table(postgres, empty_db, venv_bin, tmp_path) -> None:
    name, dsn = empty_db
    result = migrate(venv_bin, tmp_path, db_source=dsn)
    assert result.returncode == 0, result.stderr
    assert public_tables(postgres, name) == OUR_TABLES
    assert postgres.psql("SELECT count(*) FROM alembic_version", name) == "1"


def test_upgrade_installs_the_outbox_notify_trigger(postgres, empty_db, venv_bin,
                                                    tmp_path) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, "upgrade", db_source=dsn).returncode == 0
    triggers = postgres.psql(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'outbox'::regclass AND NOT tgisinternal",
        name)
    assert triggers != ""


def test_upgrade_twice_is_a_no_op(postgres, empty_db, venv_bin, tmp_path) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, db_source=dsn).returncode == 0
    version = postgres.psql("SELECT version_num FROM alembic_version", name)
    second = migrate(venv_bin, tmp_path, db_source=dsn)
    assert second.returncode == 0, second.stderr
    assert postgres.psql("SELECT version_num FROM alembic_version", name) == version


@pytest.mark.slow
def test_downgrade_base_removes_everything_and_upgrade_works_again(
    postgres, empty_db, venv_bin, tmp_path
) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, db_source=dsn).returncode == 0
    down = migrate(venv_bin, tmp_path, "downgrade", "base", db_source=dsn)
    assert down.returncode == 0, down.stderr
    assert public_tables(postgres, name) == set()
    assert public_functions(postgres, name) == set()
    assert postgres.psql("SELECT count(*) FROM alembic_version", name) == "0"
    up = migrate(venv_bin, tmp_path, "upgrade", db_source=dsn)
    assert up.returncode == 0, up.stderr
    assert public_tables(postgres, name) == OUR_TABLES


def test_0003_fills_member_ids_of_existing_conversations_from_their_members(
    postgres, empty_db, venv_bin, tmp_path
) -> None:
    # A database at 0002 already holds conversations: the new column must describe them as
    # conversation_members does, sorted by code point as the API sorts (not by the collation).
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, "upgrade", "0002", db_source=dsn).returncode == 0
    postgres.psql(
        "INSERT INTO conversations (id, title, created_by) VALUES"
        " ('00000000-0000-0000-0000-000000000001', 't', 'b'),"
        " ('00000000-0000-0000-0000-000000000002', 'u', 'z');"
        " INSERT INTO conversation_members (conversation_id, user_id) VALUES"
        " ('00000000-0000-0000-0000-000000000001', 'b'),"
        " ('00000000-0000-0000-0000-000000000001', 'B'),"
        " ('00000000-0000-0000-0000-000000000001', 'a'),"
        " ('00000000-0000-0000-0000-000000000002', 'z')", name)
    up = migrate(venv_bin, tmp_path, "upgrade", db_source=dsn)
    assert up.returncode == 0, up.stderr
    rows = postgres.psql("SELECT title, member_ids FROM conversations ORDER BY title", name)
    assert rows.split() == ["t|{B,a,b}", "u|{z}"]
    assert postgres.psql(
        "SELECT is_nullable FROM information_schema.columns"
        " WHERE table_name = 'conversations' AND column_name = 'member_ids'", name) == "NO"
    down = migrate(venv_bin, tmp_path, "downgrade", "0002", db_source=dsn)
    assert down.returncode == 0, down.stderr
    assert postgres.psql(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'conversations' AND column_name = 'member_ids'", name) == "0"


def test_current_shows_the_applied_revision(postgres, empty_db, venv_bin, tmp_path) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, db_source=dsn).returncode == 0
    version = postgres.psql("SELECT version_num FROM alembic_version", name)
    current = migrate(venv_bin, tmp_path, "current", db_source=dsn)
    assert current.returncode == 0
    assert version in current.stdout + current.stderr


def test_missing_db_source_exits_2_naming_it(venv_bin, tmp_path) -> None:
    result = migrate(venv_bin, tmp_path, db_source=None)
    assert result.returncode == 2
    assert "DB_SOURCE is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_non_postgres_db_source_exits_2_naming_it(venv_bin, tmp_path) -> None:
    result = migrate(venv_bin, tmp_path, db_source="mysql://root@127.0.0.1/chat")
    assert result.returncode == 2
    assert "DB_SOURCE" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_fails_without_showing_the_password(venv_bin, tmp_path) -> None:
    with closed_port() as port:
        dsn = f"postgresql://chat:s3cr3t-pw@127.0.0.1:{port}/chat?sslmode=disable"
        result = migrate(venv_bin, tmp_path, db_source=dsn)
    assert result.returncode == 1
    assert "upgrade failed" in result.stderr
    assert "s3cr3t-pw" not in result.stderr + result.stdout


_ROWS_AT_0005 = (
    "INSERT INTO conversations (id, title, created_by, member_ids) VALUES"
    " ('00000000-0000-0000-0000-000000000001', 't', 'a', '{a,b}');"
    " INSERT INTO conversation_members (conversation_id, user_id, last_activity_at) VALUES"
    " ('00000000-0000-0000-0000-000000000001', 'a', now()),"
    " ('00000000-0000-0000-0000-000000000001', 'b', now());"
    " INSERT INTO messages (id, conversation_id, seq, sender_id, content, idempotency_key)"
    " VALUES ('00000000-0000-0000-0000-0000000000aa', '00000000-0000-0000-0000-000000000001',"
    " 1, 'a', 'hello', 'k1');"
    " INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload)"
    " VALUES (gen_random_uuid(), 'message.created', '00000000-0000-0000-0000-000000000001', 1,"
    " '{a,b}', '{}')")
_TENANTS_OF = ("SELECT (SELECT string_agg(DISTINCT tenant_id, ',') FROM conversations) || '/' ||"
               " (SELECT string_agg(DISTINCT tenant_id, ',') FROM conversation_members) || '/' ||"
               " (SELECT string_agg(DISTINCT tenant_id, ',') FROM messages) || '/' ||"
               " (SELECT string_agg(DISTINCT tenant_id, ',') FROM outbox)")


def test_0006_puts_existing_rows_in_the_default_tenant_behind_row_level_security(
    postgres, empty_db, venv_bin, tmp_path
) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, "upgrade", "0005", db_source=dsn).returncode == 0
    postgres.psql(_ROWS_AT_0005, name)
    up = migrate(venv_bin, tmp_path, "upgrade", db_source=dsn)
    assert up.returncode == 0, up.stderr
    assert postgres.psql(_TENANTS_OF, name) == "default/default/default/default"
    assert postgres.psql("SELECT id, status FROM tenants", name) == "default|active"
    forced = postgres.psql(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class"
        " WHERE relrowsecurity AND relforcerowsecurity AND relkind = 'r'", name)
    assert forced == ("attachments,conversation_changes,conversation_members,conversations,"
                      "e2ee_devices,e2ee_one_time_keys,e2ee_to_device,"
                      "message_reactions,messages,outbox,outbox_dead_letter")
    # As the services' role: the default tenant's rows in its context, nothing in another's
    # or without one.
    seen = ("SET ROLE chat_app; SELECT set_config('app.tenant_id', '{}', false);"
            " SELECT count(*) FROM messages")
    assert postgres.psql(seen.format("default"), name).split()[-1] == "1"
    assert postgres.psql(seen.format("acme"), name).split()[-1] == "0"
    assert postgres.psql("SET ROLE chat_app; SELECT count(*) FROM conversations", name) == "0"
    down = migrate(venv_bin, tmp_path, "downgrade", "0005", db_source=dsn)
    assert down.returncode == 0, down.stderr
    assert postgres.psql("SELECT count(*) FROM information_schema.columns"
                         " WHERE column_name = 'tenant_id'", name) == "0"
    assert "tenants" not in public_tables(postgres, name)
    assert postgres.psql("SELECT content FROM messages", name) == "hello"
    assert postgres.psql("SELECT count(*) FROM conversation_members", name) == "2"


def test_0006_downgrade_refuses_while_another_tenant_has_rows(
    postgres, empty_db, venv_bin, tmp_path
) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, db_source=dsn).returncode == 0
    # Down to 0006 first: each revision's downgrade is its own transaction.
    assert migrate(venv_bin, tmp_path, "downgrade", "0006", db_source=dsn).returncode == 0
    postgres.psql(
        "INSERT INTO tenants (id) VALUES ('acme');"
        " INSERT INTO conversations (tenant_id, id, title, created_by, member_ids) VALUES"
        " ('acme', gen_random_uuid(), 't', 'a', '{a}')", name)
    down = migrate(venv_bin, tmp_path, "downgrade", "0005", db_source=dsn)
    assert down.returncode == 1
    assert "rows of tenants other than default exist" in down.stderr
    # Nothing changed: the failed downgrade rolled back whole.
    assert postgres.psql("SELECT version_num FROM alembic_version", name) == "0006"
    assert postgres.psql("SELECT tenant_id FROM conversations", name) == "acme"
    assert postgres.psql("SELECT relforcerowsecurity FROM pg_class"
                         " WHERE relname = 'messages'", name) == "t"


def test_0009_makes_existing_messages_root_level_and_refuses_to_drop_replies(
    postgres, empty_db, venv_bin, tmp_path
) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, "upgrade", "0006", db_source=dsn).returncode == 0
    postgres.psql(_ROWS_AT_0005, name)
    up = migrate(venv_bin, tmp_path, "upgrade", "0009", db_source=dsn)
    assert up.returncode == 0, up.stderr
    assert postgres.psql("SELECT root_seq, thread_root_id IS NULL, reply_count FROM messages",
                         name) == "1|t|0"
    assert postgres.psql("SELECT last_root_seq = last_seq FROM conversations", name) == "t"
    postgres.psql(
        "INSERT INTO messages (id, conversation_id, seq, root_seq, thread_root_id, thread_seq,"
        " sender_id, content, idempotency_key) VALUES (gen_random_uuid(),"
        " '00000000-0000-0000-0000-000000000001', 2, 1, '00000000-0000-0000-0000-0000000000aa',"
        " 1, 'b', 'reply', 'k2')", name)
    down = migrate(venv_bin, tmp_path, "downgrade", "0008s", db_source=dsn)
    assert down.returncode == 1
    assert "thread replies exist" in down.stderr
    postgres.psql("DELETE FROM messages WHERE seq = 2", name)
    down = migrate(venv_bin, tmp_path, "downgrade", "0008s", db_source=dsn)
    assert down.returncode == 0, down.stderr
    assert postgres.psql("SELECT count(*) FROM information_schema.columns"
                         " WHERE column_name IN ('root_seq', 'thread_root_id')", name) == "0"


def test_0011p_gives_earlier_message_events_their_message_id(
    postgres, empty_db, venv_bin, tmp_path
) -> None:
    name, dsn = empty_db
    assert migrate(venv_bin, tmp_path, "upgrade", "0010a", db_source=dsn).returncode == 0
    conv = "00000000-0000-0000-0000-000000000001"
    message = "00000000-0000-0000-0000-0000000000aa"
    postgres.psql(
        "INSERT INTO outbox (event_id, event_type, conversation_id, seq, recipients, payload)"
        f" VALUES (gen_random_uuid(), 'message.created', '{conv}', 1, '{{a}}',"
        f"  '{{\"message\": {{\"id\": \"{message}\", \"content\": \"hello\"}}}}'),"
        f" (gen_random_uuid(), 'member.added', '{conv}', 2, '{{a}}', '{{\"user_id\": \"b\"}}');"
        " INSERT INTO outbox_dead_letter (event_id, event_type, conversation_id, seq, recipients,"
        "  payload, created_at, attempts, last_error)"
        f" VALUES (gen_random_uuid(), 'message.updated', '{conv}', 3, '{{a}}',"
        f"  '{{\"message\": {{\"id\": \"{message}\", \"content\": \"hi\"}}}}', now(), 4, 'x')",
        name)
    up = migrate(venv_bin, tmp_path, "upgrade", "head", db_source=dsn)
    assert up.returncode == 0, up.stderr
    assert postgres.psql("SELECT event_type || '=' || coalesce(message_id::text, '-')"
                         " FROM outbox ORDER BY id", name) == (
        f"message.created={message}\nmember.added=-")
    assert postgres.psql("SELECT message_id FROM outbox_dead_letter", name) == message
    down = migrate(venv_bin, tmp_path, "downgrade", "0010a", db_source=dsn)
    assert down.returncode == 0, down.stderr
    assert postgres.psql("SELECT count(*) FROM information_schema.columns"
                         " WHERE column_name = 'message_id' AND table_name LIKE 'outbox%'",
                         name) == "0"
