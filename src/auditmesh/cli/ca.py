"""`auditmesh ca ...`: create the mesh CA, mint join tokens, issue SVIDs by hand, print the bundle.

Its place in the house: the operator's handle on ``auditmesh.identity``; all logic lives there,
this module only parses arguments, reads the clock and prints.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditmesh.cli import add_data_arg, output_dir, writable_file, write_output
from auditmesh.cli.main import UserError
from auditmesh.datadir import lock_holder
from auditmesh.events import AuditEvent
from auditmesh.identity.ca import DEFAULT_SVID_TTL, CAError, MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId, SpiffeIdError, parse, parse_trust_domain
from auditmesh.identity.tokens import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    JoinTokens,
    TokenStoreError,
    parse_ttl,
)
from auditmesh.issuance import by_hand
from auditmesh.pending import NoLedgerYet, pending_dir, queue_event, take_or_wait


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("ca", help="the mesh CA: init, join tokens, SVIDs, trust bundle")
    commands = parser.add_subparsers(title="ca commands", metavar="COMMAND", required=True)

    init = commands.add_parser("init", help="create the mesh CA (ECDSA P-256)")
    init.add_argument(
        "--trust-domain",
        required=True,
        help="the trust domain of the SPIFFE IDs it issues (spiffe://TD/...), e.g. cluster.local",
    )
    add_data_arg(init)
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA; every SVID it issued stops being trusted",
    )
    init.set_defaults(func=_cmd_init)

    token = commands.add_parser(
        "token",
        help="mint a one-time join token for one SPIFFE ID",
        description="Mint a join token and print it on stdout: a sidecar given it (server: "
        "join_token in its YAML) receives its first SVID for --id from the server, once. The "
        "minting is recorded as an audit event before the token is printed.",
    )
    token.add_argument(
        "--id",
        required=True,
        help="the workload's SPIFFE ID, spiffe://TD/ns/NAMESPACE/sa/ACCOUNT in the CA's "
        "trust domain",
    )
    token.add_argument(
        "--ttl",
        default=_show_duration(DEFAULT_TOKEN_TTL),
        help=f"how long the token can be redeemed, at most {_show_duration(MAX_TOKEN_TTL)}: "
        "e.g. 30m or 2h",
    )
    add_data_arg(token)
    token.set_defaults(func=_cmd_token)

    issue = commands.add_parser(
        "issue",
        help="sign an X.509-SVID for a CSR (PEM)",
        description="Sign an X.509-SVID by hand for the key of a CSR (a sidecar gets its own "
        "with a join token instead). The issuance is recorded as an audit event before the "
        "certificate goes out.",
    )
    issue.add_argument(
        "--id", required=True, help="the SPIFFE ID to put in the SVID, in the CA's trust domain"
    )
    issue.add_argument(
        "--csr",
        required=True,
        type=Path,
        help="the workload's certificate signing request, a PEM file (its key stays with it)",
    )
    issue.add_argument(
        "--ttl",
        default=_show_duration(DEFAULT_SVID_TTL),
        help="how long the SVID is valid, e.g. 12h or 7d",
    )
    issue.add_argument("--out", type=Path, help="write the certificate (PEM) here (default stdout)")
    add_data_arg(issue)
    issue.set_defaults(func=_cmd_issue)

    bundle = commands.add_parser(
        "bundle",
        help="print the trust bundle (PEM)",
        description="Print the mesh CA's root certificate (PEM) on stdout: what a peer "
        "trusts to check the SVIDs this CA issues.",
    )
    add_data_arg(bundle)
    bundle.set_defaults(func=_cmd_bundle)


def _show_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _now() -> datetime:
    return datetime.now(UTC)


def _load_ca(data: Path) -> MeshCA:
    try:
        return MeshCA.load(data)
    except CAError as exc:
        raise UserError(str(exc)) from exc


def _workload_id(text: str, ca: MeshCA) -> SpiffeId:
    try:
        spiffe_id = parse(text)
    except SpiffeIdError as exc:
        raise UserError(str(exc)) from exc
    if not spiffe_id.member_of(ca.trust_domain):
        raise UserError(
            f"{spiffe_id} is not in this CA's trust domain {ca.trust_domain!r}; "
            f"use spiffe://{ca.trust_domain}/..."
        )
    if not spiffe_id.path:
        raise UserError(f"{spiffe_id} names no workload; add a path such as /ns/NS/sa/SA")
    if spiffe_id.reserved:
        raise UserError(f"{spiffe_id.reserved_refusal}; name a workload, such as /ns/NS/sa/SA")
    return spiffe_id


def _ttl(text: str) -> timedelta:
    try:
        return parse_ttl(text)
    except ValueError as exc:
        raise UserError(f"--ttl: {exc}") from exc


def _cmd_init(args: argparse.Namespace) -> int:
    try:  # before --data is made: a refused name leaves no empty directory behind
        parse_trust_domain(args.trust_domain)
    except SpiffeIdError as exc:
        raise UserError(str(exc)) from exc
    output_dir(args.data, "--data")
    try:
        ca = init_ca(args.data, args.trust_domain, now=_now(), force=args.force)
    except (CAError, SpiffeIdError) as exc:
        raise UserError(str(exc)) from exc
    print(f"mesh CA for trust domain {ca.trust_domain} created in {args.data / 'ca'}")
    print(f"root certificate sha256 {ca.fingerprint}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    ca = _load_ca(args.data)
    spiffe_id = _workload_id(args.id, ca)
    ttl = _ttl(args.ttl)
    now = _now()
    # Mint, record, then print; a failure to record withdraws the token. Not record first: an
    # event appended for a token the mint then fails to store (a damaged tokens.json) would
    # tell auditors of a credential that never existed, and an appended event cannot be
    # taken back, while a token record can. So no valid token outlives a failure to record
    # its event, and no event names a token that was never minted. The store keeps only the
    # token's digest and the token is printed only once recorded: should this process die
    # between mint and record, no one holds the token (its record expires, then is pruned).
    tokens = JoinTokens(args.data)
    try:
        token = tokens.mint(spiffe_id, now=now, ttl=ttl)
    except (TokenStoreError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    expires = (now + ttl).isoformat(timespec="seconds")
    event = by_hand("join_token_minted", str(spiffe_id), labels={"identity.expires": expires})
    try:
        recorded = _record(args.data, event)  # before the token goes out
    except UserError as exc:
        raise UserError(f"{exc}; {_withdraw(tokens, token, expires)}") from exc
    print(token)
    print(f"one-time join token for {spiffe_id}, expires {expires}; {recorded}", file=sys.stderr)
    return 0


def _withdraw(tokens: JoinTokens, token: str, expires: str) -> str:
    """Withdraw a token minted but not handed out; words for the operator."""
    try:
        tokens.withdraw(token, _now())
    except (TokenStoreError, OSError) as exc:
        return (
            f"the token minted for it could not be withdrawn from {tokens.path} ({exc}): it "
            f"was never shown, so no one holds it, and it expires at {expires}"
        )
    return "the token minted for it was withdrawn and cannot be redeemed"


def _cmd_issue(args: argparse.Namespace) -> int:
    if args.out is not None:  # before an SVID is signed for nothing
        writable_file(args.out, "--out")
    ca = _load_ca(args.data)
    spiffe_id = _workload_id(args.id, ca)
    ttl = _ttl(args.ttl)
    try:
        csr_pem = args.csr.read_bytes()
    except OSError as exc:
        raise UserError(f"--csr: cannot read {args.csr}: {exc.strerror or exc}") from exc
    try:
        cert_pem = ca.issue_svid(csr_pem, spiffe_id, ttl, now=_now())
    except CAError as exc:
        raise UserError(str(exc)) from exc
    recorded = _record(
        args.data, by_hand("svid_issued", str(spiffe_id), cert_pem=cert_pem, labels={})
    )
    if args.out is None:
        sys.stdout.write(cert_pem.decode())
    else:
        try:
            write_output(args.out, cert_pem, "--out")
        except UserError as exc:  # the SVID exists and its event is recorded: say so
            raise UserError(
                f"{exc}. The X.509-SVID for {spiffe_id} was issued, and the issuance "
                f"recorded: {recorded}. Its certificate was written nowhere: fix --out and run "
                "`auditmesh ca issue` again, which issues a new one (with an event of its own)"
            ) from exc
    print(f"X.509-SVID for {spiffe_id} issued; {recorded}", file=sys.stderr)
    return 0


def _record(data: Path, event: AuditEvent) -> str:
    """Record a CA action as an audit event before its result goes out (pending.py): at once
    when no server runs, else queued for the running server, which takes it within a
    second. Words for the operator."""
    try:
        path = queue_event(data, event)
    except OSError as exc:  # nothing goes out unaudited
        raise UserError(
            f"cannot record this as an audit event ({exc}); nothing was handed out"
        ) from exc
    try:
        index = take_or_wait(data, event.id)
    except NoLedgerYet:
        return (
            f"audit event {event.id} queued in {path}: {data} has no log yet, and the first "
            f"`auditmesh server --data {data}` appends it"
        )
    except Exception as exc:  # noqa: BLE001 — queued on disk, where the server takes it
        return (
            f"audit event {event.id} queued in {path}, but not appended: {exc}. It stays "
            f"queued: a server on {data} appends it once it can, else the next `auditmesh ca "
            "token`/`ca issue` when no server runs"
        )
    if index is not None:
        return f"audit event {event.id} recorded at ledger index {index}"
    if not path.exists():  # set aside by the process holding the ledger
        return (
            f"audit event {event.id} was not appended but set aside in {pending_dir(data)}: "
            f"see {path.name}.refused.why there"
        )
    return (
        f"audit event {event.id} queued in {path}, not appended yet: {lock_holder(data)}, "
        "which holds the ledger, has not taken it; its output says why. It stays queued: "
        "that server appends it once it can, else the next `auditmesh server` or `auditmesh "
        f"ca token`/`ca issue` on {data}"
    )


def _cmd_bundle(args: argparse.Namespace) -> int:
    sys.stdout.write(_load_ca(args.data).trust_bundle().decode())
    return 0
