"""The verdict trail's hash chain: an untouched trail verifies; any edit, deletion, reordering,
forged checkpoint or cut-off end is found, and the first bad record is named."""
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.audit_chain import (GENESIS_HASH, canonical_record_bytes,
                                             checkpoint_message, hash_of_record, record_hash,
                                             verify_chain)
from meshllm.audit_signing import AuditSigner
from tests.unit.moderation.audit_trails import (BASE_NS, TENANT, checkpoint, make_chain, stamp,
                                                with_checkpoints)

@pytest.fixture(scope="module")
def signer() -> AuditSigner:
    return AuditSigner(Ed25519PrivateKey.generate())


def test_an_untouched_chain_with_checkpoints_verifies_and_reports_its_head(signer):
    items = with_checkpoints(signer, make_chain(6), at=(3, 6))
    check = verify_chain(items, signer.public_key)
    assert check.ok, check.reason
    assert (check.records, check.checkpoints) == (6, 2)
    assert (check.head_sequence, check.head_hash) == (6, items[-2].hash)


def test_an_empty_trail_verifies():
    assert verify_chain([], AuditSigner(Ed25519PrivateKey.generate()).public_key).ok


def test_the_canonical_bytes_are_the_tag_then_length_prefixed_fields():
    data = canonical_record_bytes(sequence=7, request_id="r", tenant_id="t", stage=1,
                                  category=6, action=3, detector="d", score=0.5,
                                  time_ns=12, policy_version=2, previous_hash="ab")
    assert data == (b"meshllm-audit-v1" + b"".join(
        len(text).to_bytes(4, "big") + text
        for text in (b"7", b"r", b"t", b"1", b"6", b"3", b"d", b"0.500000", b"12", b"2",
                     b"ab")))


def test_a_score_hashes_the_same_after_a_round_trip_through_a_proto_float():
    record = make_chain(1)[0]
    fields = dict(sequence=1, request_id="req-1", tenant_id=TENANT, stage=m.STAGE_INPUT,
                  category=m.CATEGORY_PERSONAL_DATA, action=m.ACTION_REDACT,
                  detector="rules/email", time_ns=BASE_NS + 1, policy_version=3,
                  previous_hash=GENESIS_HASH)
    assert record.score != 0.9  # the proto holds a 32-bit float
    assert record_hash(score=0.9, **fields) == record_hash(score=record.score, **fields)
    # Fields that would run together unprefixed hash apart.
    assert (record_hash(**{**fields, "request_id": "ab", "detector": "c"}, score=0.9)
            != record_hash(**{**fields, "request_id": "a", "detector": "bc"}, score=0.9))


def test_the_checkpoint_message_is_the_documented_text():
    assert checkpoint_message("acme", 12, "ab" * 32, 99) == (
        b"meshllm-audit-v1|acme|12|" + b"ab" * 32 + b"|99")


EDITS = {
    "request_id": lambda r: setattr(r, "request_id", "req-forged"),
    "tenant_id": lambda r: setattr(r, "tenant_id", "other"),
    "stage": lambda r: setattr(r, "stage", m.STAGE_OUTPUT),
    "category": lambda r: setattr(r, "category", m.CATEGORY_SECRETS),
    "action": lambda r: setattr(r, "action", m.ACTION_ALLOW),
    "detector": lambda r: setattr(r, "detector", "rules/phone"),
    "score": lambda r: setattr(r, "score", 0.1),
    "time": lambda r: r.time.CopyFrom(stamp(BASE_NS + 999)),
    "policy_version": lambda r: setattr(r, "policy_version", 4),
    "previous_hash": lambda r: setattr(r, "previous_hash", "f" * 64),
    "hash": lambda r: setattr(r, "hash", "e" * 64),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_changing_any_one_field_of_a_record_names_that_record_as_changed(signer, field):
    items = with_checkpoints(signer, make_chain(5), at=(5,))
    EDITS[field](items[2])
    check = verify_chain(items, signer.public_key)
    assert not check.ok
    assert check.bad_sequence == 3
    assert check.request_id == items[2].request_id
    assert "record 3 (request" in check.reason and "was changed" in check.reason
    assert (check.records, check.head_sequence) == (2, 2)


def test_changing_a_records_sequence_names_it_by_its_request_id(signer):
    items = make_chain(5)
    items[2].sequence = 9
    check = verify_chain(items, signer.public_key)
    assert check.request_id == "req-3" and "was changed" in check.reason
    assert "after record 2 (request 'req-2')" in check.reason


def test_a_deleted_record_is_named_as_missing_between_its_neighbours(signer):
    items = make_chain(5)
    del items[2]
    check = verify_chain(items, signer.public_key)
    assert not check.ok and check.bad_sequence == 3
    assert check.reason == ("record 3 is missing (deleted): record 4 (request 'req-4') comes "
                            "after record 2 (request 'req-2')")


def test_a_deleted_first_record_is_named(signer):
    check = verify_chain(make_chain(3)[1:], signer.public_key)
    assert check.bad_sequence == 1 and "record 1 is missing" in check.reason


def test_two_swapped_records_are_named_as_out_of_order(signer):
    items = make_chain(5)
    items[2], items[3] = items[3], items[2]
    check = verify_chain(items, signer.public_key)
    assert not check.ok
    assert (check.bad_sequence, check.request_id) == (4, "req-4")
    assert check.reason == ("record 4 (request 'req-4') is out of order: it comes before "
                            "record 3 (request 'req-3')")


def test_a_repeated_record_is_out_of_order(signer):
    items = make_chain(4)
    items.insert(3, items[1])
    check = verify_chain(items, signer.public_key)
    assert (check.bad_sequence, check.request_id) == (2, "req-2")
    assert "out of order: it comes after record 3" in check.reason


def test_a_record_replaced_with_its_hash_recomputed_breaks_the_link_to_the_next(signer):
    items = make_chain(5)
    items[2].action = m.ACTION_ALLOW
    items[2].hash = hash_of_record(items[2])
    check = verify_chain(items, signer.public_key)
    assert (check.bad_sequence, check.request_id) == (4, "req-4")
    assert "does not chain to record 3 (request 'req-3')" in check.reason


def test_a_chain_rewritten_from_a_record_on_is_caught_by_the_checkpoint(signer):
    original = make_chain(5)
    forged = make_chain(5)
    forged[1].action = m.ACTION_ALLOW  # record 2 rewritten, every later hash recomputed
    for index in range(1, 5):
        forged[index].previous_hash = forged[index - 1].hash
        forged[index].hash = hash_of_record(forged[index])
    items = forged[:4] + [checkpoint(signer, original[3])] + forged[4:]
    check = verify_chain(items, signer.public_key)
    assert not check.ok and (check.bad_sequence, check.request_id) == (4, "req-4")
    assert "the checkpoint at sequence 4 does not match record 4" in check.reason


def test_a_checkpoint_with_a_bad_signature_is_named(signer):
    items = with_checkpoints(signer, make_chain(6), at=(3, 6))
    items[3].signature = bytes(64)
    check = verify_chain(items, signer.public_key)
    assert not check.ok and check.bad_sequence == 3
    assert check.reason == "the checkpoint at sequence 3 has an invalid signature"


def test_a_checkpoint_signed_by_another_key_names_both_keys(signer):
    other = AuditSigner(Ed25519PrivateKey.generate())
    items = make_chain(3) + [checkpoint(other, make_chain(3)[2])]
    check = verify_chain(items, signer.public_key)
    assert not check.ok and check.bad_sequence == 3
    assert f"names key '{other.key_id}', not the trusted key {signer.key_id}" in check.reason


def test_a_checkpoint_whose_fields_were_edited_no_longer_verifies(signer):
    items = with_checkpoints(signer, make_chain(3), at=(3,))
    items[3].time.CopyFrom(stamp(BASE_NS))
    assert "invalid signature" in verify_chain(items, signer.public_key).reason


def test_a_trail_cut_short_before_its_last_checkpoint_is_named_as_truncated(signer):
    items = with_checkpoints(signer, make_chain(6), at=(2, 6))
    truncated = items[:5] + [items[-1]]  # records 5 and 6 gone, their checkpoint kept
    check = verify_chain(truncated, signer.public_key)
    assert not check.ok and check.bad_sequence == 5
    assert check.reason == ("the trail ends after record 4 (request 'req-4'), before the last "
                            "signed checkpoint (sequence 6): records 5 to 6 were removed "
                            "(truncated)")


def test_records_deleted_before_a_checkpoint_are_named_missing(signer):
    items = with_checkpoints(signer, make_chain(6), at=(3, 6))
    del items[2]  # record 3: its checkpoint now follows record 2
    check = verify_chain(items, signer.public_key)
    assert check.bad_sequence == 3
    assert check.reason.startswith("record 3 is missing (deleted): the checkpoint at "
                                   "sequence 3 comes after record 2")


def test_a_record_of_another_tenant_in_the_chain_is_named(signer):
    items = make_chain(3)
    stranger = make_chain(4, tenant="other")[3]
    stranger.previous_hash = items[2].hash
    stranger.hash = hash_of_record(stranger)
    check = verify_chain(items + [stranger], signer.public_key)
    assert check.bad_sequence == 4 and "belongs to tenant 'other'" in check.reason


def test_an_export_from_a_later_sequence_verifies_from_there(signer):
    items = with_checkpoints(signer, make_chain(6), at=(3, 6))[4:]
    assert verify_chain(items, signer.public_key, from_sequence=4).ok
    assert "records 1 to 3 are missing" in verify_chain(items, signer.public_key).reason
