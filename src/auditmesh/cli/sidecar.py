"""`auditmesh sidecar --config FILE`: run one workload's mTLS proxy."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from auditmesh.cli.main import UserError
from auditmesh.identity.agent import EnrollmentError
from auditmesh.proxy.config import ConfigError, load_config
from auditmesh.proxy.sidecar import Sidecar
from auditmesh.proxy.spool import SpoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sidecar",
        help="run a workload's mTLS sidecar proxy that audits every call",
        description=(
            "Inbound: mTLS from peers to the local app. Outbound: plaintext from the app, "
            "mTLS to the destination's sidecar, whose SPIFFE ID must match the config."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the sidecar's YAML file: its workload, server, listener and upstreams "
        "(README.md, 'The sidecar')",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config, base = load_config(args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(_main(Sidecar(config, base)))
        except EnrollmentError as exc:
            raise UserError(f"cannot get an identity: {exc}") from None
        except (OSError, ConfigError, SpoolError) as exc:
            raise UserError(f"cannot start: {exc}") from None
    return 0


async def _main(sidecar: Sidecar) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(sidecar.run(stop))
    await asyncio.wait(
        [task, asyncio.ensure_future(sidecar.ready.wait())], return_when="FIRST_COMPLETED"
    )
    if not task.done():
        config = sidecar.config
        inbound = config.inbound
        print(f"auditmesh sidecar {config.workload.name}: {sidecar.identity}", flush=True)
        if inbound is not None:
            print(f"  inbound  {inbound.listen} ({inbound.mtls}) -> app {inbound.app}", flush=True)
        for target in config.outbound:
            print(
                f"  outbound {target.listen} -> {target.service} at {target.upstream}", flush=True
            )
        if config.policies is not None:  # a policy's selector matches these labels only
            labels = ", ".join(f"{k}={v}" for k, v in sorted(config.workload.labels.items()))
            print(
                f"  policies {config.policies}, for workload labels {{{labels}}}"
                + ("" if labels else " (none: only policies without a selector apply)"),
                flush=True,
            )
            current = sidecar.policy.current if sidecar.policy is not None else None
            if current is not None and current.unselected:
                print(
                    f"  warning: {', '.join(current.unselected)} name this workload "
                    f"(app: {config.workload.name}) but do not select it; give the sidecar "
                    f"`workload: {{labels: {{app: {config.workload.name}}}}}` if they should apply",
                    flush=True,
                )
    await task
