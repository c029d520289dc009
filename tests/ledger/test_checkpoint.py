"""C2SP tlog-checkpoint: text format, real sum.golang.org checkpoints, signing and opening."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.ledger.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    open_checkpoint,
    sign_checkpoint,
)
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Signer, Verifier, generate_key, sign

VECTORS = Path(__file__).parent.parent / "vectors"
SUMDB: dict[str, Any] = json.loads((VECTORS / "checkpoint_sumdb.json").read_text("utf-8"))
SPEC: dict[str, Any] = json.loads((VECTORS / "checkpoint_c2sp.json").read_text("utf-8"))

ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()
SKEY, VKEY = generate_key("example.com/log42", bytes([7]) * 32)
SIGNER = Signer.from_skey(SKEY)
VERIFIER = Verifier.from_vkey(VKEY)
SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)


# --- Published checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize("case", SUMDB["checkpoints"], ids=lambda c: str(c["size"]))
def test_real_sum_golang_org_checkpoints_verify(case: dict[str, Any]) -> None:
    verifier = Verifier.from_vkey(SUMDB["vkey"])
    cp = open_checkpoint(case["note"].encode(), verifier, origin=SUMDB["origin"])
    assert cp == Checkpoint(SUMDB["origin"], case["size"], base64.b64decode(case["root_hash_b64"]))
    assert cp.to_text() == case["note"].split("\n\n")[0] + "\n"


@pytest.mark.parametrize("case", SUMDB["checkpoints"], ids=lambda c: str(c["size"]))
def test_sum_golang_org_origin_is_not_its_key_name(case: dict[str, Any]) -> None:
    verifier = Verifier.from_vkey(SUMDB["vkey"])
    with pytest.raises(VerificationError, match="another log") as info:
        open_checkpoint(case["note"].encode(), verifier)  # defaults to "sum.golang.org"
    assert f"its origin line is {SUMDB['origin']!r}, the key's log is 'sum.golang.org'" in str(
        info.value
    )
    with pytest.raises(VerificationError, match="another log"):
        open_checkpoint(case["note"].encode(), verifier, origin="go.sum database")


def test_real_checkpoint_with_tampered_size_fails() -> None:
    case = SUMDB["checkpoints"][0]
    tampered = case["note"].replace(str(case["size"]), str(case["size"] + 1), 1)
    with pytest.raises(VerificationError, match="invalid signature for key sum.golang.org"):
        open_checkpoint(tampered.encode(), Verifier.from_vkey(SUMDB["vkey"]), SUMDB["origin"])


def test_c2sp_spec_example_parses() -> None:
    cp = Checkpoint.parse(SPEC["text"])
    assert (cp.origin, cp.size, cp.root_hash) == (
        SPEC["origin"],
        SPEC["size"],
        base64.b64decode(SPEC["root_hash_b64"]),
    )
    assert cp.extensions == ()
    assert cp.to_text() == SPEC["text"]
    # Its key is not published: opening fails as unverifiable, not as malformed.
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        open_checkpoint(SPEC["note"].encode(), VERIFIER, SPEC["origin"])


# --- Text format --------------------------------------------------------------------------------


def test_to_text_layout() -> None:
    cp = Checkpoint("example.com/log42", 5, ROOT, ("ext one", "ext two"))
    assert cp.to_text() == f"example.com/log42\n5\n{ROOT_B64}\next one\next two\n"
    assert Checkpoint.parse(cp.to_text()) == cp
    assert Checkpoint("o", 0, ROOT).to_text() == f"o\n0\n{ROOT_B64}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"o\n5\n{ROOT_B64}", "checkpoint text must end in a newline"),
        ("o\n5\n", "checkpoint has 2 line(s); want origin, tree size and root hash"),
        ("\n", "checkpoint has 1 line(s); want origin, tree size and root hash"),
        (f"\n5\n{ROOT_B64}\n", "checkpoint origin line is empty"),
        (f"o\n05\n{ROOT_B64}\n", "checkpoint tree size '05' has a leading zero"),
        (f"o\n00\n{ROOT_B64}\n", "checkpoint tree size '00' has a leading zero"),
        (f"o\n-5\n{ROOT_B64}\n", "checkpoint tree size '-5' is not a decimal number"),
        (f"o\n+5\n{ROOT_B64}\n", "checkpoint tree size '+5' is not a decimal number"),
        (f"o\n5 \n{ROOT_B64}\n", "checkpoint tree size '5 ' is not a decimal number"),
        (f"o\n1_000\n{ROOT_B64}\n", "checkpoint tree size '1_000' is not a decimal number"),
        (f"o\n\u0665\n{ROOT_B64}\n", "checkpoint tree size '\u0665' is not a decimal number"),
        (f"o\n0x10\n{ROOT_B64}\n", "checkpoint tree size '0x10' is not a decimal number"),
        (f"o\n\n{ROOT_B64}\n", "checkpoint tree size '' is not a decimal number"),
        (f"o\n{1 << 63}\n{ROOT_B64}\n", f"checkpoint tree size {1 << 63} is larger than 2**63-1"),
        (f"o\n{'9' * 400}\n{ROOT_B64}\n", "is larger than 2\\*\\*63-1"),
        ("o\n5\nYmFuYW5hcw==\n", "checkpoint root hash is 7 bytes, want 32"),
        ("o\n5\n\n", "checkpoint root hash is 0 bytes, want 32"),
        (f"o\n5\n{ROOT_B64.rstrip('=')}\n", "is not valid base64"),
        (f"o\n5\n{ROOT_B64} \n", "is not valid base64"),
        (f"o\n5\n{ROOT_B64}\n\n", "checkpoint extension line 1 is empty"),
        (f"o\n5\n{ROOT_B64}\next\n\n", "checkpoint extension line 2 is empty"),
        (f"o\x01\n5\n{ROOT_B64}\n", "checkpoint origin contains control character U\\+0001"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message if "\\" in message else re.escape(message)):
        Checkpoint.parse(text)


def test_parse_accepts_the_largest_size_and_spaces_in_origin() -> None:
    text = f"go.sum database tree\n{MAX_TREE_SIZE}\n{ROOT_B64}\n"
    assert Checkpoint.parse(text).size == MAX_TREE_SIZE


def test_parse_accepts_non_canonical_base64_like_go() -> None:
    # Go's base64.StdEncoding (not .Strict()) ignores the unused low bits of the last symbol.
    canonical = base64.b64encode(bytes(32)).decode()
    assert canonical.endswith("AA=")
    cp = Checkpoint.parse(f"o\n1\n{canonical[:-2]}B=\n")
    assert cp.root_hash == bytes(32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": ""}, "origin must not be empty"),
        ({"origin": "a\nb"}, "origin contains control character U\\+000A"),
        ({"size": -1}, "outside 0..2\\*\\*63-1"),
        ({"size": 1 << 63}, "outside 0..2\\*\\*63-1"),
        ({"root_hash": b"\x00" * 31}, "31 bytes, want 32"),
        ({"extensions": ("",)}, "extension line 1 is empty"),
        ({"extensions": ("a\nb",)}, "extension line 1 contains control character"),
        ({"origin": "\ud800"}, "origin is not valid UTF-8"),
    ],
)
def test_constructor_validates(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"origin": "o", "size": 1, "root_hash": ROOT}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Checkpoint(**fields)


# --- Signing and opening ----------------------------------------------------------------------


def test_sign_and_open() -> None:
    cp = Checkpoint("example.com/log42", 42, ROOT)
    note = sign_checkpoint(cp, SIGNER)
    assert note.startswith(cp.to_text().encode() + "\n\u2014 example.com/log42 ".encode())
    assert open_checkpoint(note, VERIFIER) == cp
    assert open_checkpoint(note, VERIFIER, origin="example.com/log42") == cp


def test_open_checks_origin_and_key() -> None:
    cp = Checkpoint("example.com/other", 42, ROOT)
    note = sign_checkpoint(cp, SIGNER)
    with pytest.raises(VerificationError, match="another log"):
        open_checkpoint(note, VERIFIER)
    assert open_checkpoint(note, VERIFIER, origin="example.com/other") == cp
    other = Verifier.from_vkey(generate_key("example.com/log42", bytes(32))[1])
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        open_checkpoint(note, other, origin="example.com/other")


def test_witness_cosignatures_are_ignored() -> None:
    witness = Signer.from_skey(generate_key("witness.example", bytes([9]) * 32)[0])
    cp = Checkpoint("example.com/log42", 3, ROOT)
    note = sign(cp.to_text(), [SIGNER, witness])
    assert open_checkpoint(note, VERIFIER) == cp


def test_signed_text_that_is_not_a_checkpoint() -> None:
    note = sign("example.com/log42\nnot a size\nx\n", [SIGNER])
    with pytest.raises(VerificationError, match="signed note is not a checkpoint: .*decimal"):
        open_checkpoint(note, VERIFIER)


# --- Properties -------------------------------------------------------------------------------

_LINE = st.text(
    st.characters(exclude_categories=["Cs"]).filter(lambda c: c >= " "), min_size=1, max_size=40
)
checkpoints = st.builds(
    Checkpoint,
    origin=_LINE,
    size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_LINE, max_size=3).map(tuple),
)


@SETTINGS
@given(cp=checkpoints)
def test_text_round_trip(cp: Checkpoint) -> None:
    assert Checkpoint.parse(cp.to_text()) == cp


@SETTINGS
@given(cp=checkpoints)
def test_signed_round_trip(cp: Checkpoint) -> None:
    assert open_checkpoint(sign_checkpoint(cp, SIGNER), VERIFIER, origin=cp.origin) == cp


@SETTINGS
@given(text=st.text(max_size=200))
def test_parse_only_raises_value_error(text: str) -> None:
    for candidate in (text, f"o\n{text}", f"o\n5\n{text}", f"o\n5\n{ROOT_B64}\n{text}"):
        try:
            cp = Checkpoint.parse(candidate)
        except ValueError:
            continue
        # Not always == candidate: like Go, base64 with non-zero padding bits is accepted.
        assert Checkpoint.parse(cp.to_text()) == cp


@SETTINGS
@given(data=st.binary(max_size=200))
def test_open_only_raises_verification_error(data: bytes) -> None:
    good = sign_checkpoint(Checkpoint("example.com/log42", 1, ROOT), SIGNER)
    for candidate in (data, data + good, good[:20] + data + good[20:]):
        try:
            open_checkpoint(candidate, VERIFIER)
        except VerificationError:
            pass
