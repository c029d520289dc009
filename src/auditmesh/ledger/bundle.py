"""Evidence bundles: selected log entries with their proofs, verifiable fully offline.

A bundle is a zip file an auditor can open with any tool:

    README.md                    what this is and how to check it
    manifest.json                origin, tree size, and one row per entry
    checkpoint                   the signed checkpoint (C2SP tlog-checkpoint, signed-note)
    log.vkey                     the log's verifier key (note format), for reference only
    entries/<index>.json         the exact leaf data (the event's RFC 8785 bytes)
    proofs/<index>.tlog-proof    C2SP tlog-proof of that entry against the checkpoint

`verify_bundle` trusts only the verifier key it is given, never the one inside.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec

from auditmesh.jsonmembers import repeated_member
from auditmesh.ledger.checkpoint import Checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier
from auditmesh.ledger.tlogproof import TlogProof, verify_tlog_proof

FORMAT = "auditmesh-bundle/v1"
MEMBERS = ("README.md", "manifest.json", "checkpoint", "log.vkey")  # besides entries, proofs
OPTIONAL_MEMBERS = ("finding.json",)  # `auditmesh findings --bundle`: what the entries show
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# What zipfile raises for a damaged archive: a bad CRC or header (BadZipFile), a broken
# deflate stream (zlib.error), an encrypted member (RuntimeError), an unknown method or
# version (NotImplementedError), an offset before the start (ValueError), a cut (EOFError).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
    ValueError,
    EOFError,
)


@dataclass(frozen=True, slots=True)
class BundleEntry:
    index: int
    data: bytes
    proof: TlogProof


# Unknown fields are refused: verify would print OK over a manifest claim it never checked.
class ManifestRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    index: Annotated[int, msgspec.Meta(ge=0)]
    entry: str
    proof: str


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    origin: str
    tree_size: Annotated[int, msgspec.Meta(ge=0)]
    entries: list[ManifestRow]


@dataclass(frozen=True, slots=True)
class BundleReport:
    origin: str
    tree_size: int
    indices: tuple[int, ...]
    key_matches_bundled: bool
    unverified: tuple[str, ...] = ()  # members present that no proof covers: words, no evidence


README = """# auditmesh evidence bundle

This archive holds {count} audit event(s) from the log `{origin}`, each with a proof that it
is entry number N of the log whose signed checkpoint (tree size {size}) is in `checkpoint`.

Check it offline, with the verifier key you obtained from the log operator (not the
copy in this archive):

    auditmesh bundle verify THIS_FILE.zip --key 'NAME+HASH+KEY'

By hand: for each `entries/N.json`, the leaf hash is SHA-256(0x00 || file bytes)
(RFC 9162 §2.1.1); `proofs/N.tlog-proof` (https://c2sp.org/tlog-proof) holds the audit
path and the checkpoint; verify the path up to the checkpoint's root (RFC 9162 §2.1.3.2)
and the checkpoint's Ed25519 signature (https://c2sp.org/signed-note).
"""


def create_bundle(
    entries: Sequence[BundleEntry], checkpoint_note: bytes, checkpoint: Checkpoint, vkey: str
) -> bytes:
    manifest = Manifest(
        FORMAT,
        checkpoint.origin,
        checkpoint.size,
        [ManifestRow(e.index, f"entries/{e.index}.json", _proof_name(e.index)) for e in entries],
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        readme = README.format(count=len(entries), origin=checkpoint.origin, size=checkpoint.size)
        archive.writestr("README.md", readme)
        archive.writestr("manifest.json", msgspec.json.format(msgspec.json.encode(manifest)))
        archive.writestr("checkpoint", checkpoint_note)
        archive.writestr("log.vkey", vkey + "\n")
        for entry in entries:
            archive.writestr(f"entries/{entry.index}.json", entry.data)
            archive.writestr(_proof_name(entry.index), entry.proof.encode())
    return buffer.getvalue()


def _proof_name(index: int) -> str:
    return f"proofs/{index}.tlog-proof"


def verify_bundle(data: bytes, verifier: Verifier) -> BundleReport:
    """Check every entry's proof against the bundle's checkpoint under `verifier`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:  # e.g. a damaged central directory: a bad offset, a version
        raise VerificationError(f"not an evidence bundle (zip): {exc}") from None
    with archive:
        manifest = _manifest(_read(archive, "manifest.json"))
        _check_members(archive, manifest)
        checkpoint_note = _read(archive, "checkpoint")
        indices: list[int] = []
        checkpoint: Checkpoint | None = None
        for row in manifest.entries:
            index = row.index
            leaf = _read(archive, f"entries/{index}.json")
            try:
                proof = TlogProof.parse(_read(archive, _proof_name(index)))
            except ValueError as exc:
                raise VerificationError(f"malformed proof: {exc}", where=f"entry {index}") from None
            if proof.index != index:
                raise VerificationError(
                    "proof is for another entry",
                    expected=index,
                    computed=proof.index,
                    where=_proof_name(index),
                )
            if proof.checkpoint_note != checkpoint_note:
                raise VerificationError(
                    "proof is against another checkpoint than the bundle's",
                    where=_proof_name(index),
                )
            try:
                # The expected origin is the trusted key's name (C2SP tlog-checkpoint
                # §"Signatures"), as `log verify-proof` expects, never the unsigned manifest's.
                checkpoint = verify_tlog_proof(proof, leaf, verifier)
            except VerificationError as exc:
                raise VerificationError(
                    f"entry does not verify: {exc}", where=f"entries/{index}.json"
                ) from exc
            indices.append(index)
        if checkpoint is None:
            raise VerificationError("the bundle holds no entries")
        if checkpoint.origin != manifest.origin:
            raise VerificationError(
                "manifest origin differs from the checkpoint",
                expected=checkpoint.origin,
                computed=manifest.origin,
                where="manifest.json",
            )
        if checkpoint.size != manifest.tree_size:
            raise VerificationError(
                "manifest tree size differs from the checkpoint",
                expected=checkpoint.size,
                computed=manifest.tree_size,
            )
        bundled_key = _read(archive, "log.vkey").decode(errors="replace").strip()
        unverified = tuple(n for n in ("README.md", *OPTIONAL_MEMBERS) if n in archive.namelist())
        return BundleReport(
            checkpoint.origin,
            checkpoint.size,
            tuple(indices),
            bundled_key == verifier.vkey,
            unverified,
        )


def _check_members(archive: zipfile.ZipFile, manifest: Manifest) -> None:
    """The manifest lists each entry once, under its own names, and the archive holds what
    it lists and nothing else: no second copy of a name (a zip reader sees only one of them),
    no entry the manifest leaves out (which a reader might take as proven)."""
    names = archive.namelist()
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise VerificationError(f"the bundle holds {twice[0]} more than once")
    listed = set(MEMBERS)
    previous = -1
    for row in manifest.entries:
        if row.index <= previous:
            raise VerificationError(
                "manifest entries must be in log order, each once",
                expected=f"an index above {previous}",
                computed=row.index,
                where="manifest.json",
            )
        previous = row.index
        if (row.entry, row.proof) != (f"entries/{row.index}.json", _proof_name(row.index)):
            raise VerificationError(
                f"manifest row for entry {row.index} names {row.entry} and {row.proof}",
                expected=f"entries/{row.index}.json and {_proof_name(row.index)}",
                where="manifest.json",
            )
        listed |= {row.entry, row.proof}
    unlisted = sorted(set(names) - listed - set(OPTIONAL_MEMBERS))
    if unlisted:
        raise VerificationError(
            f"the bundle holds {unlisted[0]}, which its manifest does not list", where=unlisted[0]
        )


def _read(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise VerificationError(f"the bundle lacks {name}") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise VerificationError(f"{name} is implausibly large ({info.file_size} bytes)")
    # Only what create_bundle writes: zipfile inflates bzip2 and LZMA without bounding the
    # output, so a few kilobytes could claim a small size and fill the memory.
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise VerificationError(
            f"{name} uses zip compression method {info.compress_type} (only stored or deflate)"
        )
    try:
        with archive.open(info) as member:
            # A bounded read inflates at most this much whatever the stream holds; past the
            # declared size zipfile stops and checks the CRC-32 (APPNOTE 4.4.7), which fails.
            return member.read(info.file_size + 1)
    except _ZIP_ERRORS as exc:
        raise VerificationError(f"{name} cannot be read from the zip: {exc}") from None


def _manifest(raw: bytes) -> Manifest:
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise VerificationError(f"manifest.json is not valid: {exc}") from None
    if manifest.format != FORMAT:
        raise VerificationError(
            "manifest.json is not an auditmesh bundle", expected=FORMAT, computed=manifest.format
        )
    if (twice := repeated_member(raw)) is not None:  # which one counts is the parser's whim
        raise VerificationError(
            f"manifest.json names the member {twice!r} twice in one object, so it does not say "
            "one thing: the bundle was not made by `auditmesh bundle create` as it is"
        )
    return manifest
