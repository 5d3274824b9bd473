"""Trails built in memory for the audit tests: a valid chain of records, and checkpoints
signed over it, for a test to tamper with."""
from google.protobuf import timestamp_pb2

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.audit_chain import GENESIS_HASH, checkpoint_message, hash_of_record
from meshllm.audit_signing import AuditSigner

TENANT = "acme"
BASE_NS = 1_760_000_000_123_456_789


def stamp(time_ns: int) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(time_ns)
    return value


def make_chain(count: int, tenant: str = TENANT) -> list[m.AuditRecord]:
    records, previous = [], GENESIS_HASH
    for sequence in range(1, count + 1):
        record = m.AuditRecord(
            sequence=sequence, request_id=f"req-{sequence}", tenant_id=tenant,
            stage=m.STAGE_INPUT, category=m.CATEGORY_PERSONAL_DATA, action=m.ACTION_REDACT,
            detector="rules/email", score=0.9, time=stamp(BASE_NS + sequence),
            policy_version=3, previous_hash=previous)
        record.hash = hash_of_record(record)
        previous = record.hash
        records.append(record)
    return records


def checkpoint(signer: AuditSigner, record: m.AuditRecord) -> m.AuditCheckpoint:
    time_ns = record.time.ToNanoseconds() + 1000
    return m.AuditCheckpoint(
        tenant_id=record.tenant_id, sequence=record.sequence, hash=record.hash,
        time=stamp(time_ns), key_id=signer.key_id,
        signature=signer.sign(checkpoint_message(record.tenant_id, record.sequence,
                                                 record.hash, time_ns)))


def with_checkpoints(signer: AuditSigner, records: list[m.AuditRecord],
                     at: tuple[int, ...]) -> list:
    items = []
    for record in records:
        items.append(record)
        if record.sequence in at:
            items.append(checkpoint(signer, record))
    return items
