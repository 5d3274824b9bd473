"""`meshllm audit`'s checking of an exported trail and its verdict rows, without a server: the
export is a list of the responses the server would stream."""
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cli.audit import ok_line, read_public_key, verdict_row, verify_export
from cli.errors import InputError
from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.audit_signing import AuditSigner, key_id_of, raw_public_key
from tests.unit.moderation.audit_trails import make_chain, with_checkpoints


@pytest.fixture(scope="module")
def signer() -> AuditSigner:
    return AuditSigner(Ed25519PrivateKey.generate())


def export(signer: AuditSigner, items: list) -> list[m.ExportAuditLogResponse]:
    responses = [m.ExportAuditLogResponse(public_key=signer.public_key_bytes)]
    for item in items:
        kind = "record" if isinstance(item, m.AuditRecord) else "checkpoint"
        responses.append(m.ExportAuditLogResponse(**{kind: item}))
    return responses


def test_an_untouched_export_verifies_against_the_servers_key(signer):
    verdict = verify_export(export(signer, with_checkpoints(signer, make_chain(4), at=(4,))))
    assert verdict.check.ok
    assert verdict.key_id == verdict.server_key_id == signer.key_id
    assert verdict.server_key_hex == signer.public_key_bytes.hex()
    assert ok_line(verdict.check) == (f"ok: 4 records, 1 checkpoints, chain head 4 "
                                      f"{verdict.check.head_hash[:16]}")


def test_a_pinned_key_is_trusted_over_the_one_the_server_sends(signer):
    impostor = AuditSigner(Ed25519PrivateKey.generate())
    items = with_checkpoints(impostor, make_chain(3), at=(3,))
    assert verify_export(export(impostor, items)).check.ok  # its own key vouches for it
    verdict = verify_export(export(impostor, items), pinned=signer.public_key)
    assert verdict.key_id == signer.key_id and verdict.server_key_id == impostor.key_id
    assert not verdict.check.ok
    assert "the checkpoint at sequence 3 has an invalid signature" in verdict.check.reason


def test_a_changed_record_in_the_export_fails_naming_it(signer):
    items = make_chain(4)
    items[1].detector = "rules/none"
    check = verify_export(export(signer, items)).check
    assert not check.ok and (check.bad_sequence, check.request_id) == (2, "req-2")


def test_an_export_without_the_public_key_first_fails():
    record = make_chain(1)[0]
    check = verify_export([m.ExportAuditLogResponse(record=record)]).check
    assert not check.ok and "did not start with the server's public key" in check.reason
    assert not verify_export([]).check.ok


@pytest.mark.parametrize("form", ["raw", "hex", "pem"])
def test_a_public_key_file_may_be_raw_hex_or_pem(tmp_path, signer, form):
    data = {"raw": signer.public_key_bytes,
            "hex": (signer.public_key_bytes.hex() + "\n").encode(),
            "pem": signer.public_key.public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo)}[form]
    path = tmp_path / "audit.pub"
    path.write_bytes(data)
    assert raw_public_key(read_public_key(path)) == signer.public_key_bytes
    assert key_id_of(read_public_key(path)) == signer.key_id


def test_a_bad_or_missing_public_key_file_is_an_input_error(tmp_path):
    path = tmp_path / "audit.pub"
    path.write_text("not a key")
    with pytest.raises(InputError, match="is not an Ed25519 public key"):
        read_public_key(path)
    with pytest.raises(InputError, match="cannot read the public key"):
        read_public_key(tmp_path / "missing.pub")


def test_a_verdict_row_names_stage_category_and_action_in_words():
    record = make_chain(1)[0]
    assert verdict_row(record) == ("1", "2025-10-09 08:53:20.123 UTC", "input",
                                   "personal_data", "redact", "rules/email", "0.900", "3")
    allow = m.AuditRecord(sequence=2, stage=m.STAGE_OUTPUT, action=m.ACTION_ALLOW,
                          category=m.CATEGORY_UNSPECIFIED)
    assert verdict_row(allow)[2:6] == ("output", "-", "allow", "-")
