"""API keys: how a secret looks, how it is made, and how it is checked against the stored hash.

A secret is `mk_live_<key id>_<random>`. The key id is public (it is the key's name in the
store and in logs); the random part is 256 bits from `secrets`, so a fast hash is enough —
there is nothing to brute-force — and only that hash is stored. Comparison is constant-time."""
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "mk_live_"
_KEY_ID_CHARS = 12
# fullmatch, never `$`: `$` also matches before a trailing newline.
_SECRET_FORM = re.compile(r"mk_live_([a-z0-9]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID_FORM = re.compile(r"[a-z0-9]{12}")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str
    secret_hash: bytes

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}{self.key_id}"


def new_key() -> NewKey:
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                     for _ in range(_KEY_ID_CHARS))
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, secret, hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def key_id_of(secret: str) -> str | None:
    """The key id inside a well-formed secret; None for anything else."""
    match = _SECRET_FORM.fullmatch(secret)
    return match.group(1) if match else None


def is_key_id(key_id: str) -> bool:
    return _KEY_ID_FORM.fullmatch(key_id) is not None


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
