"""A spool whose state file (`state.json`: the read cursor, drops and damage not yet
reported) is damaged still opens: the file is set aside, kept for the operator, reading
starts again at the oldest record (the server keeps each event id once, so what it already
has is only sent again), and the damage is reported. One the process may not read stops
the spool with a one-line error that names it and says what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditmesh.proxy.spool import MAGIC, Spool, SpoolConfig, SpoolDamage
from tests.proxy.test_spool import numbers, payloads, segments

CONFIG = SpoolConfig(segment_bytes=len(MAGIC) + 3 * 28, fsync=False)  # 3 records a segment

DAMAGED_STATES = {
    "not_json": b"{not json",
    "torn": b'{"segment": 1, "offset": 4',
    "empty": b"",
    "zeros": bytes(64),  # a block the file system never wrote
    "not_utf8": b'{"segment": 1, "offset": 48, "dropped": {"\xff": 1}}',
    "an_array": b"[1, 48]",
    "segment_a_string": b'{"segment": "1", "offset": 48, "dropped": {}}',
    "offset_a_bool": b'{"segment": 1, "offset": true, "dropped": {}}',
    "offset_negative": b'{"segment": 1, "offset": -48, "dropped": {}}',
    "offset_in_the_magic": b'{"segment": 1, "offset": 3, "dropped": {}}',
    "offset_a_float": b'{"segment": 1, "offset": 48.5, "dropped": {}}',
    "dropped_missing": b'{"segment": 1, "offset": 48}',
    "dropped_a_list": b'{"segment": 1, "offset": 48, "dropped": [1]}',
    "dropped_a_string_count": b'{"segment": 1, "offset": 48, "dropped": {"spool_full": "2"}}',
    "damaged_a_list": b'{"segment": 1, "offset": 48, "dropped": {}, "damaged": []}',
    "set_aside_a_string": (
        b'{"segment": 1, "offset": 48, "dropped": {}, "damaged": {"set_aside": "a.seg"}}'
    ),
    "cut_bytes_null": (
        b'{"segment": 1, "offset": 48, "dropped": {}, "damaged": {"cut_bytes": null}}'
    ),
    "last_a_string": b'{"segment": 1, "offset": 48, "last": "7", "dropped": {}}',
    "last_negative": b'{"segment": 1, "offset": 48, "last": -7, "dropped": {}}',
    "nested_too_deep": b"[" * 100_000,
}


def acknowledged_spool(directory: Path) -> list[int]:
    """Records 0-11 over four segments, 0-4 acknowledged (the first segment deleted, the
    cursor inside the second); returns the numbers still in the segment files."""
    with Spool(directory, CONFIG) as spool:
        spool.append(payloads(0, 12))
        spool.ack(5)
        assert numbers(spool.peek(100)) == list(range(5, 12))
    assert len(segments(directory)) == 3
    return list(range(3, 12))  # the second segment's acknowledged 3 and 4 are still there


@pytest.mark.parametrize("damage", DAMAGED_STATES)
def test_a_damaged_state_file_is_set_aside_and_reading_starts_at_the_oldest_record(
    tmp_path: Path, damage: str
) -> None:
    directory = tmp_path / "spool"
    on_disk = acknowledged_spool(directory)
    (directory / "state.json").write_bytes(DAMAGED_STATES[damage])
    with Spool(directory, CONFIG) as spool:  # it opens: the sidecar can spool
        assert numbers(spool.peek(100)) == on_disk  # 3 and 4 again, nothing lost
        assert spool.damage_pending == SpoolDamage(state_set_aside=("state.json.damaged",))
        assert spool.stats().truncated_bytes == 0
        spool.append(payloads(12, 2))
        spool.ack(4)
    assert (directory / "state.json.damaged").read_bytes() == DAMAGED_STATES[damage]
    with Spool(directory, CONFIG) as again:  # the new state file holds, report still due
        assert numbers(again.peek(100)) == on_disk[4:] + [12, 13]
        damage_pending = again.damage_pending
        assert damage_pending == SpoolDamage(state_set_aside=("state.json.damaged",))
        again.clear_damage(damage_pending)
    with Spool(directory, CONFIG) as reported:
        assert reported.damage_pending is None
        assert numbers(reported.peek(100)) == on_disk[4:] + [12, 13]


def test_unreported_drops_and_damage_in_a_damaged_state_file_are_not_made_up(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    acknowledged_spool(directory)
    state = json.loads((directory / "state.json").read_bytes())
    state["dropped"] = {"spool_full": 7}
    state["damaged"] = {"cut_bytes": 40, "set_aside": ["0000000000000009.seg.damaged"]}
    (directory / "state.json").write_bytes(json.dumps(state).encode()[:-3])  # torn
    with Spool(directory, CONFIG) as spool:
        # The counts were in the damaged file: they cannot be read, and the report of the
        # damaged state file says that drops or damage not yet reported are unknown.
        assert spool.dropped_pending == {}
        assert spool.damage_pending == SpoolDamage(state_set_aside=("state.json.damaged",))


def test_each_damaged_state_file_is_kept(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    on_disk = acknowledged_spool(directory)
    (directory / "state.json").write_bytes(b"first")
    Spool(directory, CONFIG).close()
    (directory / "state.json").write_bytes(b"second")
    with Spool(directory, CONFIG) as spool:
        # the report of the first was in the state file that is damaged now
        assert spool.damage_pending == SpoolDamage(state_set_aside=("state.json.damaged.1",))
        assert numbers(spool.peek(100)) == on_disk
    assert (directory / "state.json.damaged").read_bytes() == b"first"
    assert (directory / "state.json.damaged.1").read_bytes() == b"second"


def test_a_state_file_that_is_a_directory_is_set_aside(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    on_disk = acknowledged_spool(directory)
    (directory / "state.json").unlink()
    (directory / "state.json").mkdir()
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == on_disk
        assert spool.damage_pending == SpoolDamage(state_set_aside=("state.json.damaged",))
    assert (directory / "state.json.damaged").is_dir()
    assert json.loads((directory / "state.json").read_bytes())["segment"] == 1


# A child process that may not read what it does not own: as root, without the
# capabilities that let root read any file (setpriv drops them for the child).
OPEN_SPOOL = """
import sys
from pathlib import Path
from auditmesh.proxy.spool import Spool, SpoolError
try:
    Spool(Path(sys.argv[1])).close()
except SpoolError as exc:
    print(exc)
    sys.exit(2)
"""


def open_without_file_permissions_override(directory: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", OPEN_SPOOL, str(directory)]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60
    )


def test_a_state_file_the_process_may_not_read_is_a_one_line_error(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    acknowledged_spool(directory)
    state = directory / "state.json"
    before = state.read_bytes()
    state.chmod(0)
    try:
        done = open_without_file_permissions_override(directory)
    finally:
        state.chmod(0o644)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ""  # no traceback
    (line,) = done.stdout.splitlines()
    assert str(state) in line and "permission denied" in line
    assert "mode 000" in line  # what is wrong with it
    assert "read and write access" in line and "chown" in line  # and what to do
    assert state.read_bytes() == before  # not set aside: it is not damaged
    assert not (directory / "state.json.damaged").exists()
