"""The drop counts the spool keeps are forgotten only once the event reporting them is
durable (in the spool or in the ledger): a sidecar killed while that event is still in
memory reports the drops after its restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.proxy.spool import SPOOL_FULL, Spool
from tests.proxy.killed_sidecar import deliver_after_restart, kill_while_reporting
from tests.proxy.test_emitter import _notice


@pytest.mark.integration
def test_a_sidecar_killed_while_reporting_drops_reports_them_after_restart(
    tmp_path: Path,
) -> None:
    sidecar = tmp_path / "sidecar"
    with Spool(sidecar / "spool") as spool:  # drops from an earlier run, not reported yet
        spool.note_dropped(SPOOL_FULL, 7)
    kill_while_reporting(sidecar, "notice")
    notice = _notice(deliver_after_restart(sidecar, tmp_path / "data"))
    assert notice.labels[f"spool.dropped.{SPOOL_FULL}"] == "7"
