"""The reference end-to-end encryption client (docs/e2ee.md, "What a client implements").

All cryptography is vodozemac's (Matrix's Olm and Megolm, the Rust implementation audited for
Element): this package only moves keys and ciphertext between vodozemac and the API.

- ``E2EEDevice``: one device of a user: registers its keys, keeps its Olm sessions with other
  devices and its Megolm group sessions, shares room keys through to-device messages,
  encrypts and decrypts messages, and rotates its group session when the conversation's
  devices change (a removed member's devices never receive a later key).
- ``DecryptionError``: a message that cannot be decrypted or fails its checks (tampered,
  unknown session, replayed); the device also records each one in ``failures``.
"""

from chat_devtools.e2ee_client._device import DecryptionError, E2EEDevice

__all__ = ["DecryptionError", "E2EEDevice"]
