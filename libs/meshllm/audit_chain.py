"""The verdict trail's hash chain: how a record is hashed, what a checkpoint signs, and the walk
that checks an exported trail. Pure functions; the store and `meshllm audit verify` share them.

A record's canonical bytes are the ASCII tag `meshllm-audit-v1` followed by eleven fields,
each written as its UTF-8 text prefixed by that text's length in bytes as a 4-byte big-endian
unsigned integer, in this order:

    sequence          decimal, e.g. "42"
    request_id
    tenant_id
    stage             the enum's number in decimal (numbers never change; names may)
    category          likewise
    action            likewise
    detector
    score             the score rounded to a 32-bit float (what AuditRecord.score holds),
                      then written with six decimals: "0.912300"
    time              unix nanoseconds in decimal
    policy_version    decimal
    previous_hash     64 hex digits; GENESIS_HASH for the first record

The record's hash is the SHA-256 of those bytes, in lower-case hex. Length prefixes make the
encoding unambiguous whatever a request id or detector name holds; the fixed score text
keeps a hash stable across the float round trips of SQLite, protobuf and JSON.

A checkpoint's signature is Ed25519 over the UTF-8 of
`meshllm-audit-v1|<tenant>|<sequence>|<hash>|<unix nanos>`."""
import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.audit_signing import key_id_of, signature_is_valid

FORMAT_TAG = "meshllm-audit-v1"
GENESIS_HASH = "0" * 64

TrailItem = moderation_pb2.AuditRecord | moderation_pb2.AuditCheckpoint


def as_float32(score: float) -> float:
    """The value a proto `float` field holds for `score`: what the hash is taken over."""
    return struct.unpack("<f", struct.pack("<f", score))[0]


def canonical_record_bytes(*, sequence: int, request_id: str, tenant_id: str, stage: int,
                           category: int, action: int, detector: str, score: float,
                           time_ns: int, policy_version: int, previous_hash: str) -> bytes:
    """The bytes a record's hash is taken over (the module docstring gives the format)."""
    fields = (str(sequence), request_id, tenant_id, str(stage), str(category), str(action),
              detector, f"{as_float32(score):.6f}", str(time_ns), str(policy_version),
              previous_hash)
    parts = [FORMAT_TAG.encode()]
    for text in fields:
        data = text.encode()
        parts.append(struct.pack(">I", len(data)) + data)
    return b"".join(parts)


def record_hash(**fields) -> str:
    """SHA-256 (hex) of `canonical_record_bytes(**fields)`."""
    return hashlib.sha256(canonical_record_bytes(**fields)).hexdigest()


def hash_of_record(record: moderation_pb2.AuditRecord) -> str:
    """What `record.hash` should be, recomputed from the record's other fields."""
    return record_hash(sequence=record.sequence, request_id=record.request_id,
                       tenant_id=record.tenant_id, stage=record.stage,
                       category=record.category, action=record.action,
                       detector=record.detector, score=record.score,
                       time_ns=record.time.ToNanoseconds(),
                       policy_version=record.policy_version,
                       previous_hash=record.previous_hash)


def checkpoint_message(tenant_id: str, sequence: int, hash_hex: str, time_ns: int) -> bytes:
    """What a checkpoint's signature covers."""
    return f"{FORMAT_TAG}|{tenant_id}|{sequence}|{hash_hex}|{time_ns}".encode()


@dataclass(frozen=True)
class ChainCheck:
    """The outcome of `verify_chain`: ok, or the first problem found and where."""

    ok: bool
    records: int
    """Records checked (up to the problem, when there is one)."""
    checkpoints: int
    """Checkpoints whose signature and position were checked."""
    head_sequence: int = 0
    """The last good record's sequence (0 when there is none)."""
    head_hash: str = GENESIS_HASH
    bad_sequence: int = 0
    """The sequence the problem is at (a record's, a missing record's or a checkpoint's)."""
    request_id: str = ""
    """The request id of the record the problem is at, when there is such a record."""
    reason: str = ""
    """For a person: what is wrong, naming the record by sequence and request id."""


def _name(record: moderation_pb2.AuditRecord) -> str:
    return f"record {record.sequence} (request {record.request_id!r})"


class _Walk:
    """The state of one walk along a trail: the last good record and the counts."""

    def __init__(self, public_key: Ed25519PublicKey, from_sequence: int):
        self.public_key = public_key
        self.trusted_key_id = key_id_of(public_key)
        self.from_sequence = max(from_sequence, 1)
        self.last: moderation_pb2.AuditRecord | None = None
        self.tenant_id = ""
        self.records = 0
        self.checkpoints = 0

    def bad(self, sequence: int, reason: str, request_id: str = "") -> ChainCheck:
        return ChainCheck(False, self.records, self.checkpoints, *self.head(),
                          bad_sequence=sequence, request_id=request_id, reason=reason)

    def head(self) -> tuple[int, str]:
        if self.last is None:
            return 0, GENESIS_HASH
        return self.last.sequence, self.last.hash

    def after_last(self) -> str:
        return f"after {_name(self.last)}" if self.last else "at the start of the trail"

    def record(self, record: moderation_pb2.AuditRecord,
               upcoming: TrailItem | None) -> ChainCheck | None:
        # Hash first: a record whose fields were edited (its sequence included) is named as
        # changed, not as a gap its edited sequence would seem to leave.
        if hash_of_record(record) != record.hash:
            return self.bad(record.sequence, f"{_name(record)}, {self.after_last()}, was "
                            "changed: its hash does not match its fields", record.request_id)
        if self.tenant_id and record.tenant_id != self.tenant_id:
            return self.bad(record.sequence, f"{_name(record)} belongs to tenant "
                            f"{record.tenant_id!r}, not to this chain's tenant "
                            f"{self.tenant_id!r}", record.request_id)
        expected = self.last.sequence + 1 if self.last else self.from_sequence
        if record.sequence < expected:
            return self.bad(record.sequence, f"{_name(record)} is out of order: it comes "
                            f"{self.after_last()}", record.request_id)
        if record.sequence > expected:
            if (isinstance(upcoming, moderation_pb2.AuditRecord)
                    and upcoming.sequence == expected):
                return self.bad(record.sequence, f"{_name(record)} is out of order: it comes "
                                f"before {_name(upcoming)}", record.request_id)
            missing = (f"record {expected} is" if record.sequence == expected + 1
                       else f"records {expected} to {record.sequence - 1} are")
            return self.bad(expected, f"{missing} missing (deleted): {_name(record)} comes "
                            f"{self.after_last()}")
        previous_hash = self.last.hash if self.last else None
        if previous_hash is not None and record.previous_hash != previous_hash:
            return self.bad(record.sequence, f"{_name(record)} does not chain to "
                            f"{_name(self.last)}: its previous_hash is not that record's "
                            "hash (reordered, or the record before it was replaced)",
                            record.request_id)
        if previous_hash is None and expected == 1 and record.previous_hash != GENESIS_HASH:
            return self.bad(record.sequence, f"{_name(record)} is the first record but its "
                            "previous_hash is not the genesis hash (64 zeros)",
                            record.request_id)
        self.last, self.tenant_id = record, record.tenant_id
        self.records += 1
        return None

    def checkpoint(self, checkpoint: moderation_pb2.AuditCheckpoint,
                   upcoming: TrailItem | None) -> ChainCheck | None:
        at = f"the checkpoint at sequence {checkpoint.sequence}"
        message = checkpoint_message(checkpoint.tenant_id, checkpoint.sequence,
                                     checkpoint.hash, checkpoint.time.ToNanoseconds())
        if not signature_is_valid(self.public_key, checkpoint.signature, message):
            signer = ("" if checkpoint.key_id == self.trusted_key_id else
                      f"; it names key {checkpoint.key_id!r}, not the trusted key "
                      f"{self.trusted_key_id}")
            return self.bad(checkpoint.sequence,
                            f"{at} has an invalid signature{signer}")
        if self.tenant_id and checkpoint.tenant_id != self.tenant_id:
            return self.bad(checkpoint.sequence, f"{at} is for tenant "
                            f"{checkpoint.tenant_id!r}, not this chain's {self.tenant_id!r}")
        head_sequence, head_hash = self.head()
        if checkpoint.sequence > head_sequence:
            # The checkpoint was signed over records the trail no longer holds.
            if upcoming is None:
                return self.bad(head_sequence + 1, f"the trail ends {self.after_last()}, "
                                f"before the last signed checkpoint (sequence "
                                f"{checkpoint.sequence}): records {head_sequence + 1} to "
                                f"{checkpoint.sequence} were removed (truncated)")
            missing = (f"record {checkpoint.sequence} is"
                       if checkpoint.sequence == head_sequence + 1 else
                       f"records {head_sequence + 1} to {checkpoint.sequence} are")
            return self.bad(head_sequence + 1, f"{missing} missing (deleted): {at} comes "
                            f"{self.after_last()}")
        if checkpoint.sequence < head_sequence:
            return self.bad(checkpoint.sequence, f"{at} is out of order: it comes "
                            f"{self.after_last()}")
        if checkpoint.hash != head_hash:
            return self.bad(checkpoint.sequence, f"{at} does not match {_name(self.last)}: "
                            "the record's hash is not the one signed (the record, or one "
                            "before it, was rewritten and the chain recomputed)",
                            self.last.request_id)
        self.checkpoints += 1
        return None


def _with_next(items: Iterable[TrailItem]) -> Iterator[tuple[TrailItem, TrailItem | None]]:
    iterator = iter(items)
    current = next(iterator, None)
    while current is not None:
        upcoming = next(iterator, None)
        yield current, upcoming
        current = upcoming


def verify_chain(items: Iterable[TrailItem], public_key: Ed25519PublicKey, *,
                 from_sequence: int = 1) -> ChainCheck:
    """Walks one tenant's trail (records and checkpoints in export order) and returns ok, or
    the first problem: a record changed, missing, out of order or not chained to the one
    before it; a checkpoint badly signed, not matching its record, or beyond the trail's end.

    `from_sequence` is where the export started; above 1 the first record's previous_hash is
    taken on trust. Records after the last checkpoint are checked for consistency only: no
    signature covers them yet."""
    walk = _Walk(public_key, from_sequence)
    for item, upcoming in _with_next(items):
        if isinstance(item, moderation_pb2.AuditRecord):
            problem = walk.record(item, upcoming)
        else:
            problem = walk.checkpoint(item, upcoming)
        if problem is not None:
            return problem
    return ChainCheck(True, walk.records, walk.checkpoints, *walk.head())
