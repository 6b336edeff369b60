"""The signed statements of end-to-end encryption, shared by the API and every client.

A device signs its own keys with its Ed25519 key; the API checks those signatures (it can:
the public key is in the statement) and nothing else, since everything else is ciphertext to
it. Both sides must build the exact same bytes, so the statements live here, once: canonical
JSON (keys sorted, no spaces, UTF-8), as Matrix signs its key objects.

docs/e2ee.md describes the protocol; the reference client is ``chat_devtools.e2ee_client``.
"""

from __future__ import annotations

import json

MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"
"""The algorithm name of a message encrypted with a Megolm group session."""

OLM_ALGORITHM = "m.olm.v1.curve25519-aes-sha2"
"""The algorithm name of a to-device message encrypted with an Olm session."""


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that both sides sign and verify."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def device_statement(user_id: str, device_id: str, curve25519_key: str,
                     ed25519_key: str) -> bytes:
    """What a device signs (with ``ed25519_key``) when it registers: its identity keys."""
    return canonical_json({"curve25519": curve25519_key, "device_id": device_id,
                           "ed25519": ed25519_key, "user_id": user_id})


def one_time_key_statement(user_id: str, device_id: str, key_id: str,
                           public_key: str, *, fallback: bool = False) -> bytes:
    """What a device signs for each one-time key it uploads (and for its fallback key)."""
    return canonical_json({"device_id": device_id, "fallback": fallback, "key": public_key,
                           "key_id": key_id, "user_id": user_id})
