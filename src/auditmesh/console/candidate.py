"""Candidate policy sets for the console's policy replay: pick one on the server, or upload one.

Place in the house: between `console/routes.py` (`GET /console/api/policies`,
`POST /v1/policy/replay`) and `policy/` — it turns uploaded YAML texts into a `PolicySet` with
the same loader and the same errors as `auditmesh policy replay --policies DIR` (the texts are
written to a private temporary directory under their own names, so an error names the file the
person uploaded), and lists the policy files kept in the data directory (`DIR/policies/`, where
`auditmesh demo` writes the mesh's policies) as sets to pick, and generates a least-privilege
set from recorded traffic (policy/generate.py, as `auditmesh policy generate`) to pick too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from auditmesh.console.recorded import recorded
from auditmesh.policy.documents import PolicyLoadError, is_policy_file, yaml_files
from auditmesh.policy.generate import Window, generate_policies
from auditmesh.policy.model import PolicySet, load_policies
from auditmesh.policy.replay import inbound_call
from auditmesh.store.base import Store

MAX_FILES = 64
MAX_FILE_BYTES = 1024 * 1024
POLICY_DIR = "policies"
GENERATED = "least-privilege.yaml"


@dataclass(frozen=True, slots=True)
class PolicyFile:
    name: str  # relative, POSIX separators, ends in .yaml or .yml
    text: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "text": self.text}


def _safe_name(name: str) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in path.parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        raise PolicyLoadError(f"{name!r}: not a usable file name")
    if not is_policy_file(path.name):
        raise PolicyLoadError(f"{name}: policy files end in .yaml, .yml or .json")
    return "/".join(parts)


def load_candidate(files: list[PolicyFile]) -> PolicySet:
    """Load uploaded policy files as one set; raises PolicyLoadError naming the file."""
    if not files:
        raise PolicyLoadError("no policy files: upload or pick at least one")
    if len(files) > MAX_FILES:
        raise PolicyLoadError(f"{len(files)} files; at most {MAX_FILES} at a time")
    with tempfile.TemporaryDirectory(prefix="auditmesh-candidate-") as tmp:
        root = Path(tmp)
        for file in files:
            name = _safe_name(file.name)
            if len(file.text.encode()) > MAX_FILE_BYTES:
                raise PolicyLoadError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
            target = root / name
            if target.exists():
                raise PolicyLoadError(f"{name}: uploaded twice")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(file.text, encoding="utf-8")
        try:
            return load_policies(root)
        except PolicyLoadError as exc:
            raise PolicyLoadError(str(exc).replace(f"{root}/", "")) from None


def stored_sets(data_dir: Path) -> list[PolicyFile]:
    """The policy files under `DIR/policies/`, to pick as a candidate set (may be none)."""
    root = data_dir / POLICY_DIR
    if not root.is_dir():
        return []
    found = []
    for path in yaml_files(root)[:MAX_FILES]:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found.append(PolicyFile(path.relative_to(root).as_posix(), text))
    return found


@dataclass(frozen=True, slots=True)
class Generated:
    file: PolicyFile | None  # None when the window recorded no inbound call
    events: int  # events read
    calls: int  # inbound calls the policies were generated from


def generated_set(store: Store, since_ns: int, until_ns: int, describe: str) -> Generated:
    """Least-privilege ALLOW policies for what the window's recorded calls did."""
    events = 0
    calls = []
    for index, event in recorded(store, since_ns, until_ns):
        events += 1
        call = inbound_call(index, event, {})
        if call is not None:
            calls.append(call)
    if not calls:
        return Generated(None, events, 0)
    text = generate_policies(calls, Window(describe, "the audit ledger, from the web console"))
    return Generated(PolicyFile(GENERATED, text), events, len(calls))
