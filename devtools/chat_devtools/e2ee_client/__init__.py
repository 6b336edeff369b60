"""The reference end-to-end encryption client (docs/e2ee.md, "What a client implements").

All cryptography is vodozemac's (Matrix's Olm and Megolm, the Rust implementation audited for
Element): this package only moves keys and ciphertext between vodozemac and the API.

- ``E2EEDevice``: one device of a user: registers its keys, keeps its Olm sessions with other
  devices and its Megolm group sessions, shares room keys through to-device messages and
  receives them pushed over the gateway's WebSocket (or from its mailbox), encrypts and
  decrypts messages, and rotates its group session when the conversation's devices change (a
  removed member's devices never receive a later key). Its state can be kept in a file
  encrypted with a passphrase (``persist``, ``load``), so a restarted client still decrypts.
- ``DecryptionError``: a message that cannot be decrypted or fails its checks (tampered,
  unknown session, replayed); the device also records each one in ``failures``.
- ``StateError``: a state file that does not open (wrong passphrase, changed file).
"""

from chat_devtools.e2ee_client._device import DecryptionError, E2EEDevice
from chat_devtools.e2ee_client._store import StateError

__all__ = ["DecryptionError", "E2EEDevice", "StateError"]
