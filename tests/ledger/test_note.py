"""Signed notes: interop with golang.org/x/mod/sumdb/note and the C2SP signed-note spec."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import (
    MAX_SIGNATURES,
    Signature,
    Signer,
    Verifier,
    generate_key,
    is_valid_name,
    key_hash,
    open_note,
    sign,
)

VECTORS = Path(__file__).parent.parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


GO = _load("sumdb_note.json")
TD = _load("sumdb_note_transparency_dev.json")
C2SP = _load("sumdb_note_c2sp.json")

PETER_SKEY: str = GO["keys"]["PeterNeumann"]["skey"]
PETER_VKEY: str = GO["keys"]["PeterNeumann"]["vkey"]
ENOCH_VKEY: str = GO["keys"]["EnochRoot"]["vkey"]
ENOCH_SEED = bytes.fromhex(GO["keys"]["EnochRoot"]["seed_hex"])
TEXT: str = GO["text"]
SIGNED: bytes = GO["signed"]["note"].encode()
COSIGNED: bytes = GO["cosigned"]["note"].encode()

PETER = Verifier.from_vkey(PETER_VKEY)
ENOCH = Verifier.from_vkey(ENOCH_VKEY)
SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)


def _sig(name: str) -> Signature:
    entry = GO["signatures"][name]
    return Signature(name, int(entry["key_hash"], 16), entry["b64"])


# --- Go vectors: keys -----------------------------------------------------------------------


def test_go_signer_key_derives_the_published_verifier_key() -> None:
    signer = Signer.from_skey(PETER_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_hash == 0xC74F20A3
    assert signer.verifier().vkey == PETER_VKEY
    assert signer.skey == PETER_SKEY
    assert PETER.name == "PeterNeumann" and PETER.vkey == PETER_VKEY


def test_key_hash_matches_go() -> None:
    for name, entry in GO["keys"].items():
        vkey = Verifier.from_vkey(entry["vkey"])
        computed = key_hash(name, bytes([1]) + vkey.public_key)
        assert f"{computed:08x}" == entry["key_hash"]
        assert vkey.key_hash == computed


def test_generate_key_with_zero_seed_reproduces_go_example() -> None:
    skey, vkey = generate_key("EnochRoot", ENOCH_SEED)
    assert vkey == ENOCH_VKEY
    assert Signer.from_skey(skey).verifier() == ENOCH


@pytest.mark.parametrize("pair", TD["key_pairs"], ids=lambda p: p["vkey"].split("+")[0])
def test_transparency_dev_key_pairs(pair: dict[str, str]) -> None:
    signer = Signer.from_skey(pair["skey"])
    assert signer.verifier() == Verifier.from_vkey(pair["vkey"])
    assert signer.skey == pair["skey"]
    note = open_note(sign("checkpoint body\n", [signer]), [signer.verifier()])
    assert note.text == "checkpoint body\n"


@pytest.mark.parametrize("vkey", GO["bad_vkeys"]["cases"])
def test_go_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(ValueError):
        Verifier.from_vkey(vkey)


def test_go_manglings_of_verifier_key_are_rejected() -> None:
    # note_test.go TestNewVerifier: every proper substring and every one-byte increment.
    key = PETER_VKEY
    for i in range(len(key) + 1):
        for j in range(i + 1, len(key) + 1):
            if (i, j) != (0, len(key)):
                with pytest.raises(ValueError):
                    Verifier.from_vkey(key[i:j])
    for i in range(len(key)):
        with pytest.raises(ValueError):
            Verifier.from_vkey(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])


def test_go_manglings_of_signer_key_are_rejected() -> None:
    key = PETER_SKEY
    for i in range(len(key) + 1):
        for j in range(i + 1, len(key) + 1):
            if (i, j) != (0, len(key)):
                with pytest.raises(ValueError):
                    Signer.from_skey(key[i:j])
    for i in range(len(key)):
        with pytest.raises(ValueError):
            Signer.from_skey(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("", "invalid key name"),
        ("Peter Neumann+c74f20a3+ARpc", "invalid key name"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex digits"),
        ("PeterNeumann+0xc74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex digits"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        ("PeterNeumann+c74f20a3+", "empty"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "algorithm 0x65"),
    ],
)
def test_verifier_key_error_messages(vkey: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Verifier.from_vkey(vkey)


def test_signer_key_errors_never_echo_the_secret() -> None:
    secret = PETER_SKEY.rsplit("+", 1)[1]
    for bad in (PETER_SKEY[:-2], PETER_SKEY.replace("c74f20a3", "c74f20a4"), "PRIVATE+KEY"):
        with pytest.raises(ValueError) as info:
            Signer.from_skey(bad)
        assert secret[:-2] not in str(info.value)
    assert secret not in repr(Signer.from_skey(PETER_SKEY))


def test_verifier_key_hex_is_case_insensitive_like_go() -> None:
    upper = PETER_VKEY.replace("c74f20a3", "C74F20A3")
    assert Verifier.from_vkey(upper) == PETER


def test_generate_key_rejects_bad_names_and_seeds() -> None:
    for name in ("", "a b", "a+b", "a\u3000b", "a\x01b", "a\ud800"):
        with pytest.raises(ValueError, match="invalid key name"):
            generate_key(name, ENOCH_SEED)
    with pytest.raises(ValueError, match="32"):
        generate_key("ok", b"short")
    skey, vkey = generate_key("random.example")
    assert Signer.from_skey(skey).verifier() == Verifier.from_vkey(vkey)


def test_name_rules_use_unicode_white_space_not_str_isspace() -> None:
    # Go's unicode.IsSpace is the White_Space property; U+001C is not in it but is a control
    # character, so it is rejected for that reason instead.
    assert not is_valid_name("a\u2003b") and not is_valid_name("a\x85b")
    assert not is_valid_name("a\x1cb")
    assert is_valid_name("\u200bzero-width")  # U+200B is not White_Space
    assert is_valid_name("example.com/log42")


# --- Go vectors: signing and opening --------------------------------------------------------


def test_signing_go_text_with_go_key_is_byte_identical() -> None:
    assert sign(TEXT, [Signer.from_skey(PETER_SKEY)]) == SIGNED


def test_note_signed_by_go_verifies() -> None:
    note = open_note(SIGNED, [PETER])
    assert note.text == TEXT
    assert note.sigs == (_sig("PeterNeumann"),)
    assert note.unverified_sigs == ()


def test_cosigning_reproduces_go_example() -> None:
    enoch = Signer.from_skey(generate_key("EnochRoot", ENOCH_SEED)[0])
    first = open_note(SIGNED, [PETER])
    assert sign(first.text, [enoch], existing=first.sigs + first.unverified_sigs) == COSIGNED


def test_cosigned_note_with_one_known_key() -> None:
    note = open_note(COSIGNED, [PETER])
    assert note.sigs == (_sig("PeterNeumann"),)
    assert note.unverified_sigs == (_sig("EnochRoot"),)


def test_cosigned_note_with_both_keys() -> None:
    note = open_note(COSIGNED, [PETER, ENOCH])
    assert note.sigs == (_sig("PeterNeumann"), _sig("EnochRoot"))
    assert note.unverified_sigs == ()


def test_no_known_key_is_an_error_naming_the_signers() -> None:
    with pytest.raises(VerificationError, match="no verifiable signatures") as info:
        open_note(COSIGNED, [])
    assert info.value.computed == ["PeterNeumann+c74f20a3", "EnochRoot+af0cfe78"]
    signers = "PeterNeumann+c74f20a3, EnochRoot+af0cfe78"
    assert f"signed by {signers}, and the key trusted here is none" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))  # as parallel verify's workers send it
    assert type(again) is type(info.value) and str(again) == str(info.value)


def test_resigning_replaces_the_signers_old_signature() -> None:
    # TestSign: an existing signature by the same key is elided.
    old = Signature("PeterNeumann", 0xC74F20A3, "BADSIGN=")
    assert sign(TEXT, [Signer.from_skey(PETER_SKEY)], existing=[old]) == SIGNED


def test_go_duplicates_case() -> None:
    case = GO["duplicates"]
    note = open_note(case["note"].encode(), [PETER])
    assert [s.name for s in note.sigs] == case["want_sigs"]
    assert [s.b64 for s in note.unverified_sigs] == case["want_unverified_b64"]


def test_go_invalid_signature_case() -> None:
    case = GO["invalid_signature"]
    with pytest.raises(VerificationError, match=re.escape(case["error"])):
        open_note(case["note"].encode(), [PETER])


def test_go_too_many_signatures() -> None:
    case = GO["too_many_signatures"]
    body = case["text"] + "\n"
    with pytest.raises(VerificationError, match="malformed note: more than 100"):
        open_note((body + case["line"] * case["repeat"]).encode(), [PETER])
    with pytest.raises(VerificationError, match="malformed note: more than 100"):
        open_note((body + case["line"] * case["repeat"]).encode(), [])
    # Exactly MAX_SIGNATURES lines is fine (duplicates by a known key are dropped).
    note = open_note((body + case["line"] * MAX_SIGNATURES).encode(), [PETER])
    assert len(note.sigs) == 1


@pytest.mark.parametrize("case", GO["malformed_notes"]["cases"], ids=str)
def test_go_malformed_notes(case: dict[str, str]) -> None:
    raw = bytes.fromhex(case["note_hex"]) if "note_hex" in case else case["note"].encode()
    with pytest.raises(VerificationError, match="malformed note"):
        open_note(raw, [PETER])


# --- C2SP spec examples ---------------------------------------------------------------------


@pytest.mark.parametrize("case", C2SP["verifiable"], ids=lambda c: c["vkey"].split("+")[0])
def test_c2sp_spec_example_verifies(case: dict[str, str]) -> None:
    note = open_note(case["note"].encode(), [Verifier.from_vkey(case["vkey"])])
    assert note.text == case["text"]


@pytest.mark.parametrize("case", C2SP["unverifiable"], ids=lambda c: c["signer"])
def test_c2sp_spec_example_with_unpublished_key(case: dict[str, str]) -> None:
    with pytest.raises(VerificationError, match="no verifiable signatures") as info:
        open_note(case["note"].encode(), [PETER])
    assert info.value.computed == [f"{case['signer']}+367ba04b"]
    # With a key of that name and hash known, the text split must be at the last blank line.
    fake = Verifier(case["signer"], 0x367BA04B, ENOCH.public_key)
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(case["note"].encode(), [fake])


# --- Tampering --------------------------------------------------------------------------------


def test_tampered_text_fails() -> None:
    tampered = SIGNED.replace(b"problem,", b"problem;", 1)
    with pytest.raises(VerificationError, match="invalid signature for key PeterNeumann"):
        open_note(tampered, [PETER])


def test_tampered_signature_fails() -> None:
    line_start = SIGNED.index("\u2014".encode())
    sig_at = SIGNED.index(b" ", line_start + 4) + 1 + 12  # inside the Ed25519 signature
    flipped = b"A" if SIGNED[sig_at : sig_at + 1] != b"A" else b"B"
    tampered = SIGNED[:sig_at] + flipped + SIGNED[sig_at + 1 :]
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(tampered, [PETER])


def test_wrong_key_with_same_name_and_hash_fails() -> None:
    impostor = Verifier("PeterNeumann", 0xC74F20A3, ENOCH.public_key)
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(SIGNED, [impostor])


def test_other_known_key_alone_is_not_enough() -> None:
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        open_note(SIGNED, [ENOCH])


def test_ambiguous_verifiers_are_a_caller_error() -> None:
    impostor = Verifier("PeterNeumann", 0xC74F20A3, ENOCH.public_key)
    with pytest.raises(ValueError, match="ambiguous key PeterNeumann\\+c74f20a3"):
        open_note(SIGNED, [PETER, impostor])
    assert open_note(SIGNED, [PETER, PETER]).sigs == (_sig("PeterNeumann"),)


@pytest.mark.parametrize(
    ("note", "why"),
    [
        (SIGNED.replace("\u2014".encode(), "\u2013".encode()), "em dash"),  # en dash
        (SIGNED.replace(b"\xe2\x80\x94 ", b"\xe2\x80\x94"), "em dash"),
        (SIGNED.replace(b"Neumann x08", b"Neumann  x08"), "<name> <base64>"),
        (SIGNED.replace(b"AM=\n", b"AM\n"), "<name> <base64>"),
        (SIGNED.replace(b"PeterNeumann", b"Peter+Neumann"), "<name> <base64>"),
        (SIGNED.replace(b"\n\n", b"\r\n\n"), "control character U+000D"),
        (SIGNED.replace(b"problem,", b"problem\xc0\xaf"), "invalid UTF-8"),
        (SIGNED[: SIGNED.index(b" x08go") + 1] + b"x08g\n", "<name> <base64>"),
    ],
)
def test_malformed_notes_say_why(note: bytes, why: str) -> None:
    with pytest.raises(VerificationError, match="malformed note") as info:
        open_note(note, [PETER])
    assert why in str(info.value)


# --- Signing errors ---------------------------------------------------------------------------


def test_sign_rejects_unopenable_notes() -> None:
    peter = Signer.from_skey(PETER_SKEY)
    with pytest.raises(ValueError, match="must end in a newline"):
        sign("abc", [peter])
    with pytest.raises(ValueError, match="control character U\\+0009"):
        sign("tab\there\n", [peter])
    with pytest.raises(ValueError, match="UTF-8"):
        sign("\ud800\n", [peter])
    with pytest.raises(ValueError, match="at least one signature"):
        sign(TEXT, [])
    with pytest.raises(ValueError, match="does not match its key hash"):
        sign(TEXT, [], existing=[Signature("PeterNeumann", 0xC74F20A3, "BADHASH=")])
    with pytest.raises(ValueError, match="invalid key name"):
        sign(TEXT, [], existing=[Signature("a+b", 0, "ABCD")])
    with pytest.raises(ValueError, match="at most 100"):
        sign(TEXT, [peter] * (MAX_SIGNATURES + 1))


# --- Properties -------------------------------------------------------------------------------

_NAME_CHARS = st.characters(
    exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters="+\x85\u1680"
)
names = st.text(_NAME_CHARS, min_size=1, max_size=30)
_TEXT_CHARS = st.characters(exclude_categories=["Cs"]).filter(lambda c: c >= " " or c == "\n")
texts = st.text(_TEXT_CHARS, max_size=200).map(lambda t: t + "\n")
seeds = st.binary(min_size=32, max_size=32)


@SETTINGS
@given(names=st.lists(names, min_size=1, max_size=4), seed=seeds, text=texts)
def test_sign_open_round_trip(names: list[str], seed: bytes, text: str) -> None:
    signers = [
        Signer.from_skey(generate_key(name, bytes([i]) + seed[1:])[0])
        for i, name in enumerate(names)
    ]
    raw = sign(text, signers)
    note = open_note(raw, [s.verifier() for s in signers])
    assert note.text == text
    # Each distinct key's first signature is verified, in note order.
    distinct = list(dict.fromkeys((s.name, s.key_hash) for s in signers))
    assert [(s.name, s.key_hash) for s in note.sigs] == distinct
    assert note.unverified_sigs == ()
    # Opening with only the first key leaves the others unverified but keeps them.
    partial = open_note(raw, [signers[0].verifier()])
    assert sign(text, [], existing=partial.sigs + partial.unverified_sigs) == raw


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_verification_error(data: bytes) -> None:
    for candidate in (data, SIGNED + data, data + b"\n\n" + SIGNED.split(b"\n\n")[1]):
        try:
            open_note(candidate, [PETER, ENOCH])
        except VerificationError:
            pass


@settings(derandomize=True, deadline=None, max_examples=300)
@given(
    pos=st.integers(min_value=0, max_value=len(COSIGNED)),
    cut=st.integers(min_value=0, max_value=4),
    insert=st.binary(max_size=4),
)
def test_mutated_notes_only_raise_verification_error(pos: int, cut: int, insert: bytes) -> None:
    mutated = COSIGNED[:pos] + insert + COSIGNED[pos + cut :]
    try:
        note = open_note(mutated, [PETER, ENOCH])
    except VerificationError:
        return
    # Whatever survives must still be a note both keys really signed or an unchanged text.
    assert note.text == TEXT


@settings(
    derandomize=True, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
@given(key=st.text(max_size=120))
def test_arbitrary_key_strings_only_raise_value_error(key: str) -> None:
    for candidate in (key, PETER_VKEY + key, "PRIVATE+KEY+" + key, PETER_SKEY + key):
        try:
            Verifier.from_vkey(candidate)
        except ValueError:
            pass
        try:
            Signer.from_skey(candidate)
        except ValueError:
            pass
