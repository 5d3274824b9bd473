"""The Ed25519 key that signs the verdict trail's checkpoints, and reading a public key back.

The private key lives in one file (PKCS#8 PEM, mode 0600), made on the first start. Replicas
on one machine share it: whichever creates it first wins and the others read that one, so
every checkpoint of a trail is signed by one key."""
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption,
                                                          PrivateFormat, PublicFormat,
                                                          load_pem_private_key,
                                                          load_pem_public_key)

from meshllm.logging import get_logger

RAW_PUBLIC_KEY_BYTES = 32

log = get_logger(__name__)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def signature_is_valid(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key given as its raw 32 bytes, as those in 64 hex digits, or as PEM
    (SubjectPublicKeyInfo, what `openssl pkey -pubout` writes).

    Raises ValueError with a message a person can act on."""
    if len(data) == RAW_PUBLIC_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(data)
    text = data.strip()
    if len(text) == 2 * RAW_PUBLIC_KEY_BYTES and all(c in b"0123456789abcdefABCDEF"
                                                     for c in text):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode()))
    if data.lstrip().startswith(b"-----BEGIN"):
        key = load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"the PEM key is {type(key).__name__}, not an Ed25519 public key")
        return key
    raise ValueError(f"expected an Ed25519 public key as {RAW_PUBLIC_KEY_BYTES} raw bytes, 64 "
                     f"hex digits or PEM; got {len(data)} bytes that are none of these")


class AuditSigner:
    """Signs checkpoint messages with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.public_key_bytes = raw_public_key(self.public_key)
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def from_file(cls, path: Path | str) -> "AuditSigner":
        """The key in `path`, made there (parent folders too) when the file does not exist.

        Blocking file I/O: call it once at start-up, before serving."""
        path = Path(path)
        if not path.exists():
            _create_key_file(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            # Anyone who can read the key can sign a rewritten trail.
            log.warning("audit signing key is readable by others", path=str(path),
                        mode=oct(mode), fix=f"chmod 600 {path}")
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)


def _create_key_file(path: Path) -> None:
    """Writes a new key to a temporary file and links it into place: the link fails if another
    replica got there first, and nobody ever reads a half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                     NoEncryption())
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, 0o600)  # mkstemp makes 0600 already; said here because it matters
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
            log.info("audit signing key created", path=str(path))
        except FileExistsError:
            pass  # another replica's key is the one
    finally:
        os.unlink(temporary)
