"""Secrets at rest: what the platform stores and must read back (webhook signing secrets) is sealed with Fernet
(AES-128-CBC + HMAC-SHA256, from `cryptography`) under a key from settings.

- `LLMOS_SECRET_KEY` holds one key, or several separated by commas: the first seals, every one opens
  (MultiFernet). A key is 32 random bytes in base64, standard or URL-safe alphabet
  (`openssl rand -base64 32`, or `llmos secrets new-key`).
- Production requires it (checked by Settings at start). Elsewhere, with no key set, one is generated on first
  use into `<data_dir>/secret.key` (mode 0600) and kept there, so the embedded default keeps working across
  restarts. Processes that do not share a data dir (a fleet) must share `LLMOS_SECRET_KEY`.
- A stored value is `fernet:<token>`. A value without the prefix is a plaintext secret written before
  migration 0009: it is read as is and sealed again the first time it is used (see app.services.webhooks).
- Rotating the key: put the new key first and keep the old one after it (`LLMOS_SECRET_KEY=new,old`), restart,
  run `llmos secrets reseal` (every stored secret sealed again under the new key; values are also
  sealed again lazily when read), then drop the old key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from app.db import Database
    from app.settings import Settings

PREFIX = "fernet:"
KEY_FILE = "secret.key"
# Every stored secret: (table, key column, sealed columns). A new kind of stored secret is added here.
SEALED = (("webhook_settings", "owner_id", ("secret", "previous_secret")),)


class SecretKeyError(RuntimeError):
    """A stored secret cannot be opened with the configured keys (the key changed without keeping the old one)."""


def key_bytes(text: str) -> bytes:
    """A key as Fernet wants it (URL-safe base64 of 32 bytes), from standard or URL-safe base64 text."""
    raw = text.strip()
    try:
        decoded = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("a secret key must be base64 (e.g. `openssl rand -base64 32`)") from None
    if len(decoded) != 32:
        raise ValueError(f"a secret key must be 32 bytes of base64, not {len(decoded)}")
    return base64.urlsafe_b64encode(decoded)


def parse_keys(value: str) -> list[bytes]:
    """`LLMOS_SECRET_KEY`: comma-separated keys, newest first."""
    return [key_bytes(k) for k in value.split(",") if k.strip()]


def new_key() -> str:
    return Fernet.generate_key().decode()


@dataclass(frozen=True)
class Opened:
    value: str
    stale: bool  # stored in plaintext, or sealed under a key that is no longer the first: seal it again


class SecretBox:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("no secret key")
        self._first = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])

    def seal(self, plaintext: str) -> str:
        return PREFIX + self._first.encrypt(plaintext.encode()).decode()

    def open(self, stored: str) -> Opened:
        if not stored.startswith(PREFIX):
            return Opened(stored, True)  # written before secrets were sealed
        token = stored[len(PREFIX):].encode()
        try:
            return Opened(self._first.decrypt(token).decode(), False)
        except InvalidToken:
            pass
        try:
            return Opened(self._all.decrypt(token).decode(), True)
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with LLMOS_SECRET_KEY; if the key was changed, list the old "
                "key after the new one (LLMOS_SECRET_KEY=new,old)") from None


def _key_file(path: Path) -> str:
    """The embedded default's key: read it, or create it once (atomically: concurrent processes agree)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (new_key() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made it first; then theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


@functools.lru_cache(maxsize=16)
def _box(keys: str, key_file: str | None) -> SecretBox:
    return SecretBox(parse_keys(keys if key_file is None else _key_file(Path(key_file))))


def box_for(settings: Settings) -> SecretBox:
    """The box for these settings: `LLMOS_SECRET_KEY`, or (outside production) the data dir's key file."""
    keys = settings.secret_key.get_secret_value()
    if keys.strip():
        return _box(keys, None)
    if settings.env == "production":
        raise ValueError("LLMOS_ENV=production needs LLMOS_SECRET_KEY")
    return _box("", str(settings.data_dir / KEY_FILE))


def reseal(*, db: Database, box: SecretBox) -> int:
    """Seal every stored secret under the box's first key: after a key rotation (`LLMOS_SECRET_KEY=new,old`),
    or for the plaintext secrets of an install upgraded to migration 0009. Each value is replaced only if it is
    still the one read (a concurrent rotation wins). Returns how many values were written."""
    from sqlalchemy import column, select, table, update

    changed = 0
    for name, key, columns in SEALED:
        t = table(name, column(key), *(column(c) for c in columns))
        with db.session() as session:
            rows = session.execute(select(t)).all()
        for row in rows:
            for c in columns:
                stored = getattr(row, c)
                if stored is None or not box.open(stored).stale:
                    continue
                with db.session() as session:
                    done = session.execute(update(t).where(t.c[key] == getattr(row, key), t.c[c] == stored)
                                           .values({c: box.seal(box.open(stored).value)}))
                    changed += done.rowcount  # type: ignore[attr-defined]
    return changed
