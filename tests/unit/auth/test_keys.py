"""API keys: the secret's form, its public prefix, the stored hash, and how a presented secret
is recognised and checked."""
import hashlib
import hmac
import re

import pytest

from services.auth import keys
from services.auth.keys import KEY_PREFIX, hash_secret, key_id_of, new_key, secret_matches

SECRET_FORM = re.compile(r"mk_live_[a-z0-9]{12}_[A-Za-z0-9_-]{43}")


def test_a_new_secret_is_mk_live_then_a_12_character_id_then_43_random_characters():
    key = new_key()
    assert SECRET_FORM.fullmatch(key.secret), key.secret
    assert key.secret.startswith(f"{KEY_PREFIX}{key.key_id}_")
    assert re.fullmatch(r"[a-z0-9]{12}", key.key_id)


def test_the_prefix_is_the_public_start_of_the_secret_and_names_the_key():
    key = new_key()
    assert key.prefix == f"mk_live_{key.key_id}"
    assert key.secret.startswith(key.prefix)
    assert len(key.secret) - len(key.prefix) == 44  # "_" and the 256-bit random part


def test_new_keys_do_not_repeat_ids_or_secrets():
    made = [new_key() for _ in range(200)]
    assert len({key.key_id for key in made}) == len({key.secret for key in made}) == 200


def test_only_a_sha256_hash_of_the_secret_is_kept_and_it_never_contains_the_secret():
    key = new_key()
    assert key.secret_hash == hashlib.sha256(key.secret.encode()).digest()
    assert key.secret_hash == hash_secret(key.secret)
    assert key.secret_hash != key.secret.encode()
    random_part = key.secret.removeprefix(f"{key.prefix}_")
    assert random_part.encode() not in key.secret_hash
    assert key.secret.encode() not in key.secret_hash


def test_key_id_of_reads_the_id_of_a_well_formed_secret():
    key = new_key()
    assert key_id_of(key.secret) == key.key_id


@pytest.mark.parametrize("junk", [
    "", "mk_live_", "Bearer mk_live_abcdefghijkl_" + "a" * 43,
    "mk_test_abcdefghijkl_" + "a" * 43,           # another prefix
    "mk_live_ABCDEFGHIJKL_" + "a" * 43,           # the id is lowercase
    "mk_live_abcdefghijk_" + "a" * 43,            # an 11-character id
    "mk_live_abcdefghijkl_" + "a" * 42,           # the random part one short
    "mk_live_abcdefghijkl_" + "a" * 44,           # one long
    "mk_live_abcdefghijkl_" + "a" * 42 + "=",     # not base64url
    "mk_live_abcdefghijkl_" + "a" * 43 + "\n",    # a trailing newline
    " mk_live_abcdefghijkl_" + "a" * 43,          # a leading space
    "mk_live_abcdefghijkl_" + "a" * 42 + "\x00",  # a NUL
    "mk_live_abcdefghijk\u0661_" + "a" * 43,      # a non-ASCII digit
    "mk_live_abcdefghijkl_" + "a" * 43 + "_x",    # one segment too many
])
def test_key_id_of_refuses_anything_but_a_well_formed_secret(junk):
    assert key_id_of(junk) is None


def test_a_secret_matches_its_own_hash_only():
    key, other = new_key(), new_key()
    assert secret_matches(key.secret, key.secret_hash)
    assert not secret_matches(key.secret, other.secret_hash)
    flipped = key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B")
    assert not secret_matches(flipped, key.secret_hash)
    assert not secret_matches(key.secret, b"")
    assert not secret_matches(key.secret, key.secret.encode())  # a plaintext "hash"


def test_secrets_are_compared_in_constant_time(monkeypatch):
    compared, constant_time = [], hmac.compare_digest

    def compare_digest(a, b):
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", compare_digest)
    key = new_key()
    assert secret_matches(key.secret, key.secret_hash)
    assert not secret_matches(key.secret + "x", key.secret_hash)
    assert compared == [(key.secret_hash, key.secret_hash),
                        (hash_secret(key.secret + "x"), key.secret_hash)]
