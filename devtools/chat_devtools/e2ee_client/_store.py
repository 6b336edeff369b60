"""A device's state in a file, encrypted with a passphrase, so that a restarted client decrypts.

Two layers, both vetted cryptography, no home-made cipher:

- every vodozemac object (the Olm account, Olm sessions, Megolm group sessions) is pickled by
  vodozemac with a 32-byte *pickle key*: vodozemac's own authenticated encryption (AES-256-CBC
  and HMAC-SHA-256), as Matrix clients store them;
- the rest of the state (user and device ids, which devices a group session went to, the
  conversation each key is for, the Megolm indexes already seen, the mailbox position) and the
  pickles with it are sealed with AES-256-GCM (``cryptography``), so the file shows nothing but
  its format and key-derivation parameters, and any change to it fails to open.

Both keys come from the passphrase with scrypt (``hashlib``, OpenSSL) and a random salt kept in
the file: 64 bytes, the first 32 the pickle key, the last 32 the sealing key. The parameters
are written beside the salt, so a file keeps opening if the defaults change. The file is
replaced atomically (written beside it, then renamed) and readable by its owner only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "chat-e2ee-device/1"
SCRYPT_N = 2**17
"""scrypt's cost (OWASP's recommendation for scrypt: N=2^17, r=8, p=1; 128 MiB, about a
second of CPU: paid once per open, not per save)."""
SCRYPT_R = 8
SCRYPT_P = 1


class StateError(Exception):
    """The state file cannot be opened: a wrong passphrase, or a damaged or changed file."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class DeviceStore:
    """Where one device's state lives, with the keys derived from its passphrase."""

    path: pathlib.Path
    pickle_key: bytes
    """The key vodozemac pickles the device's objects with."""
    _seal_key: bytes
    _header: dict[str, Any]

    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str) -> DeviceStore:
        """A new store at ``path`` (a fresh salt; nothing is written until ``write``)."""
        kdf = {"name": "scrypt", "salt": _b64(secrets.token_bytes(16)), "n": SCRYPT_N,
               "r": SCRYPT_R, "p": SCRYPT_P}
        return cls._derive(pathlib.Path(path), passphrase, {"format": FORMAT, "kdf": kdf})

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str
             ) -> tuple[DeviceStore, dict[str, Any]]:
        """The store of an existing file and the state in it; StateError when the
        passphrase is wrong or the file was changed."""
        p = pathlib.Path(path)
        try:
            document = json.loads(p.read_text())
            header = {"format": document["format"], "kdf": document["kdf"]}
            nonce = base64.b64decode(document["nonce"])
            sealed = base64.b64decode(document["ciphertext"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{p}: not a device state file ({exc})") from None
        if header["format"] != FORMAT or header["kdf"].get("name") != "scrypt":
            raise StateError(f"{p}: unknown format {header['format']!r}")
        store = cls._derive(p, passphrase, header)
        try:
            plain = AESGCM(store._seal_key).decrypt(nonce, sealed, store._aad())
        except InvalidTag:
            raise StateError(f"{p}: wrong passphrase, or the file was changed") from None
        state: dict[str, Any] = json.loads(plain)
        return store, state

    @classmethod
    def _derive(cls, path: pathlib.Path, passphrase: str, header: dict[str, Any]
                ) -> DeviceStore:
        kdf = header["kdf"]
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        key = hashlib.scrypt(passphrase.encode(), salt=base64.b64decode(kdf["salt"]), n=n, r=r,
                             p=p, maxmem=256 * r * n * p + 2**20, dklen=64)
        return cls(path, key[:32], key[32:], header)

    def _aad(self) -> bytes:
        """The header is authenticated too: its salt or parameters cannot be swapped."""
        return json.dumps(self._header, sort_keys=True, separators=(",", ":")).encode()

    def write(self, state: dict[str, Any]) -> None:
        """Seals ``state`` (JSON; vodozemac pickles inside it) and replaces the file."""
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._seal_key).encrypt(
            nonce, json.dumps(state, separators=(",", ":")).encode(), self._aad())
        document = {**self._header, "nonce": _b64(nonce), "ciphertext": _b64(sealed)}
        partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)
