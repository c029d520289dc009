"""Which files a policy directory contributes: none may be skipped without a word (fail closed).

A policy that is not read is a policy not enforced: a DENY in an unreadable subdirectory, or
in a file named ``deny.YAML``, would let through what it forbids. These tests use real
directories, links, FIFOs and permissions; none mocks the file system.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.model import load_policies

T = TypeVar("T")
NOBODY = 65534


def policy(name: str, action: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: shop}}\nspec: {{action: {action}, rules: [{{}}]}}\n"
    )


DENY_JSON = (
    '{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",\n'
    ' "metadata": {"name": "deny", "namespace": "shop"},\n'
    ' "spec": {"action":\t"DENY", "rules": [{}]}}\n'  # a tab: JSON, but not YAML
)


def keys(path: Path) -> list[str]:
    return sorted(p.key for p in load_policies(path).authorization)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="auditmesh-policy-files-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for directory, _, _ in os.walk(root):
            os.chmod(directory, 0o755)
        shutil.rmtree(root)


def as_unprivileged(work: Callable[[], T]) -> T | BaseException:
    """Run ``work`` as a user whom ``chmod 000`` stops: this process when it is not root,
    else a forked child that drops to nobody with ``os.setuid`` (root reads any directory,
    so a test as root would prove nothing). Returns the result or the exception raised."""
    if os.geteuid() != 0:
        try:
            return work()
        except Exception as exc:
            return exc
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result: object = work()
            except Exception as exc:
                result = exc
            payload = pickle.dumps(result)
        except BaseException as exc:
            payload = pickle.dumps(RuntimeError(f"child failed: {exc!r}"))
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    loaded: T | BaseException = pickle.loads(data)
    return loaded


@pytest.fixture
def perm(shared: Path) -> Path:
    """perm/allow.yaml (ALLOW) and perm/sub/deny.yaml (DENY), readable by anyone."""
    root = shared / "perm"
    (root / "sub").mkdir(parents=True)
    (root / "allow.yaml").write_text(policy("allow", "ALLOW"))
    (root / "sub" / "deny.yaml").write_text(policy("deny", "DENY"))
    for path in (root, root / "sub"):
        path.chmod(0o755)
    for path in (root / "allow.yaml", root / "sub" / "deny.yaml"):
        path.chmod(0o644)
    assert as_unprivileged(lambda: keys(root)) == ["shop/allow", "shop/deny"]
    return root


def test_an_unreadable_subdirectory_refuses_the_set(perm: Path) -> None:
    """Was: the DENY policy in it silently missing, the ALLOW alone in force."""
    (perm / "sub").chmod(0)
    result = as_unprivileged(lambda: keys(perm))
    assert isinstance(result, PolicyLoadError), result
    assert str(result).startswith(f"{perm / 'sub'}: cannot list this policy directory")


def test_an_unreadable_policy_directory_refuses_the_set(perm: Path) -> None:
    """Was: no policies at all (allow everything), and `policy check` said "ok: 0"."""
    perm.chmod(0)
    result = as_unprivileged(lambda: keys(perm))
    assert isinstance(result, PolicyLoadError), result
    assert str(result).startswith(f"{perm}: cannot list this policy directory")


def test_a_dangling_symbolic_link_named_as_a_policy_refuses_the_set(tmp_path: Path) -> None:
    """Fails as root too: a link to nothing cannot be read by anyone. (A ConfigMap mount
    whose `..data` target went away looks like this.) Was: skipped, the set loaded without it."""
    (tmp_path / "allow.yaml").write_text(policy("allow", "ALLOW"))
    (tmp_path / "deny.yaml").symlink_to(tmp_path / "gone" / "deny.yaml")
    with pytest.raises(PolicyLoadError, match=r"deny\.yaml: a symbolic link to .*gone/deny\.yaml"):
        load_policies(tmp_path)


def test_a_fifo_named_as_a_policy_is_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "allow.yaml").write_text(policy("allow", "ALLOW"))
    os.mkfifo(tmp_path / "deny.yaml")
    with pytest.raises(PolicyLoadError, match=r"deny\.yaml: not a regular file"):
        load_policies(tmp_path)
    with pytest.raises(PolicyLoadError, match=r"deny\.yaml: not a regular file or a directory"):
        load_policies(tmp_path / "deny.yaml")


@pytest.mark.parametrize("name", ["deny.YAML", "deny.Yml", "deny.yml", "DENY.YAML"])
def test_yaml_suffixes_are_read_in_any_case(tmp_path: Path, name: str) -> None:
    (tmp_path / "allow.yaml").write_text(policy("allow", "ALLOW"))
    (tmp_path / name).write_text(policy("deny", "DENY"))
    assert keys(tmp_path) == ["shop/allow", "shop/deny"]


@pytest.mark.parametrize("name", ["deny.json", "deny.JSON"])
def test_json_policy_files_are_read_as_kubectl_reads_them(tmp_path: Path, name: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / name).write_text(DENY_JSON)
    [deny] = load_policies(tmp_path).authorization
    assert (deny.key, deny.action, deny.origin.file) == (
        "shop/deny",
        "DENY",
        str(tmp_path / "sub" / name),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"kind": "AuthorizationPolicy",\n "kind": "x"}', "invalid JSON: duplicate key 'kind'"),
        ('{"kind":\n  AuthorizationPolicy}', "line 2, column 3: invalid JSON: Expecting value"),
        ("[" * 100_000, "invalid JSON: nested too deeply"),
    ],
)
def test_bad_json_names_the_file_and_place(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'p.json'}: {message}"


@pytest.mark.parametrize("name", ["deny.yaml.bak", "deny.yaml.orig", "deny", "deny.conf"])
def test_a_file_that_is_neither_a_policy_nor_a_note_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "allow.yaml").write_text(policy("allow", "ALLOW"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / name).write_text(policy("deny", "DENY"))
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(tmp_path)
    assert str(caught.value).startswith(
        f"{tmp_path / 'sub' / name}: not a policy file, and not read: policy files end in "
        ".yaml, .yml or .json; rename it, or move it out of"
    )


def test_notes_backups_and_hidden_entries_may_sit_beside_policies(tmp_path: Path) -> None:
    (tmp_path / "allow.yaml").write_text(policy("allow", "ALLOW"))
    for name in ("README", "README.md", "notes.txt", "OWNERS", "allow.yaml~", ".allow.yaml.swp"):
        (tmp_path / name).write_text("not a policy: [")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert keys(tmp_path) == ["shop/allow"]


def test_a_hidden_file_named_like_a_policy_is_refused_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "allow.yaml").write_text(policy("allow", "ALLOW"))
    (tmp_path / ".deny.yaml").write_text(policy("deny", "DENY"))  # was: never enforced
    with pytest.raises(PolicyLoadError, match=r"\.deny\.yaml: a hidden file named like a policy"):
        keys(tmp_path)


def test_a_linked_directory_is_read_and_a_link_loop_refused(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "deny.yaml").write_text(policy("deny", "DENY"))
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "allow.yaml").write_text(policy("allow", "ALLOW"))
    (tmp_path / "set" / "team").symlink_to(tmp_path / "team")
    assert keys(tmp_path / "set") == ["shop/allow", "shop/deny"]  # was: shop/allow only
    (tmp_path / "team" / "up").symlink_to(tmp_path / "set")
    with pytest.raises(PolicyLoadError, match=r"team/up: a symbolic link to a directory above"):
        load_policies(tmp_path / "set")
