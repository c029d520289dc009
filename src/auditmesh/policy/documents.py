"""Reading policy YAML with precise error locations (auditmesh.policy.documents).

Place in the house: the I/O edge of :mod:`auditmesh.policy.model`. It finds the policy files
(``*.yaml``, ``*.yml``, ``*.json``; anything else in a policy directory that is not a note is
refused, never skipped), splits them into documents, and offers typed field accessors that
raise one error type, :class:`PolicyLoadError`, always naming the file and either the line
(bad YAML or JSON) or the 1-based document number and field path (bad content), e.g.
``policies/pay.yaml: document 2: spec.rules[0].to[0].operation.ports[0]: expected a string``.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import yaml
import yaml.constructor
import yaml.nodes


class PolicyLoadError(ValueError):
    """A policy file that cannot be loaded; ``str()`` is the message a person reads."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a policy came from: file as given on the command line, 1-based document number."""

    file: str
    document: int

    def __str__(self) -> str:
        return f"{self.file}: document {self.document}"


if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's parser when PyYAML has it (same marks, ~10x faster), else pure Python
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(
        self, node: yaml.nodes.MappingNode, deep: bool = False
    ) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it itself
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node: yaml.nodes.Node) -> object:
        _refuse_aliases(node)
        return super().construct_document(node)

    def construct_yaml_timestamp(self, node: yaml.nodes.ScalarNode) -> datetime.date:
        """PyYAML raises a bare ValueError for a plain scalar shaped like a date that is not
        one (``2020-13-45``): made a marked error, so the message names the line."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"not a valid date or time ({exc}); quote it", node.start_mark
            ) from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _refuse_aliases(root: yaml.nodes.Node) -> None:
    """An alias is the anchored node again: refused, since a few hundred bytes of nested
    aliases expand to billions of values (the "billion laughs") and stall every reload."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not supported in policy files; "
                "write the value out",
                node.start_mark,
            )
        seen.add(id(node))
        if isinstance(node, yaml.nodes.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.nodes.MappingNode):
            stack.extend(item for pair in node.value for item in pair)


POLICY_SUFFIXES = (".yaml", ".yml", ".json")  # any case, as kubectl apply -f DIR reads
# In a policy directory, besides policy files: notes, and editor backups (`pay.yaml~`).
_NOTE_SUFFIXES = (".md", ".markdown", ".rst", ".txt")
_NOTE_NAMES = ("readme", "license", "licence", "notice", "owners", "codeowners", "changelog")


def is_policy_file(name: str) -> bool:
    """A file name a policy directory's policies have: ``.yaml``, ``.yml`` or ``.json``."""
    return name.lower().endswith(POLICY_SUFFIXES)


def _is_note(name: str) -> bool:
    lower = name.lower()
    return (
        lower.endswith(_NOTE_SUFFIXES)
        or lower.endswith("~")
        or lower.partition(".")[0] in _NOTE_NAMES
    )


def yaml_files(path: Path) -> list[Path]:
    """``path`` itself, or every policy file below it (sorted, hidden entries skipped).

    Fail-closed: a policy that is not read is a policy not enforced, so whatever would leave
    one unread raises :class:`PolicyLoadError` naming the entry, instead of being skipped as
    ``Path.rglob`` does: a directory that cannot be listed, a symbolic link to nothing, a
    FIFO or device named like a policy, a symbolic link loop, and any file that is neither a
    policy file (``.yaml``, ``.yml``, ``.json``, in any case) nor a note (``README``,
    ``*.md``, ``*.txt``, ``*.rst``, ``*~``). Symbolic links to directories are followed.
    Hidden entries (``.git``, and the ``..data`` of a mounted Kubernetes ConfigMap) are not
    read.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise PolicyLoadError(_dangling(path)) from None
        raise PolicyLoadError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise PolicyLoadError(f"{path}: cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        return sorted(_walk(path, (info.st_dev, info.st_ino)))
    if not stat.S_ISREG(info.st_mode):
        raise PolicyLoadError(f"{path}: not a regular file or a directory")
    return [path]


def _walk(root: Path, root_key: tuple[int, int]) -> list[Path]:
    found: list[Path] = []
    stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [(root, frozenset([root_key]))]
    while stack:
        directory, above = stack.pop()
        try:
            with os.scandir(directory) as listing:
                names = [entry.name for entry in listing]
        except OSError as exc:
            raise PolicyLoadError(
                f"{directory}: cannot list this policy directory ({exc.strerror}), so the "
                "policies in it cannot be enforced"
            ) from None
        for name in names:
            if name.startswith("."):
                # hidden: version control, a ConfigMap's `..data`; but a hidden file named
                # like a policy would be a policy nobody enforces, so it is refused
                if is_policy_file(name) and not (directory / name).is_dir():
                    raise PolicyLoadError(
                        f"{directory / name}: a hidden file named like a policy is not read; "
                        "rename it without the leading dot, or move it out of the directory"
                    )
                continue
            entry = directory / name
            try:
                info: os.stat_result | None = entry.stat()
            except FileNotFoundError:
                if not entry.is_symlink():
                    continue  # removed since the listing: it is no longer in the set
                info = None
            except OSError as exc:
                raise PolicyLoadError(f"{entry}: cannot read: {exc.strerror}") from None
            if info is not None and stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in above:
                    raise PolicyLoadError(
                        f"{entry}: a symbolic link to a directory above it (a loop)"
                    )
                stack.append((entry, above | {key}))
            elif is_policy_file(name):
                if info is None:
                    raise PolicyLoadError(_dangling(entry))
                if not stat.S_ISREG(info.st_mode):
                    raise PolicyLoadError(
                        f"{entry}: not a regular file (a FIFO, socket or device); "
                        "a policy file must be a regular file"
                    )
                found.append(entry)
            elif not _is_note(name):
                raise PolicyLoadError(
                    f"{entry}: not a policy file, and not read: policy files end in .yaml, "
                    f".yml or .json; rename it, or move it out of {root} (notes such as "
                    "README, *.md and *.txt may stay)"
                )
    return found


def _dangling(link: Path) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return f"{link}: a symbolic link to {target}, which does not exist"


def read_documents(file: Path, data: bytes | None = None) -> Iterator[tuple[Origin, object]]:
    """Each non-empty YAML document of ``file`` (or of ``data``, its bytes already read)
    with its origin; bad YAML names the line."""
    try:
        text = (file.read_bytes() if data is None else data).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{file}: cannot read: {exc}") from None
    if file.name.lower().endswith(".json"):
        document = _json_document(file, text)
        if document is not None:
            yield Origin(str(file), 1), document
        return
    loader = _Loader(text)
    number = 0
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            number += 1
            document = loader.get_data()
            if document is not None:
                yield Origin(str(file), number), document
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "unparsable"
        raise PolicyLoadError(f"{file}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyLoadError(f"{file}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _json_document(file: Path, text: str) -> object:
    """A ``.json`` file: one JSON value, as ``kubectl apply -f`` reads it (PyYAML is not a
    JSON parser: a tab between tokens, valid JSON, is a YAML error). Empty: no document."""
    if not text.strip():
        return None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise PolicyLoadError(
            f"{file}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except _DuplicateKey as exc:
        raise PolicyLoadError(f"{file}: invalid JSON: duplicate key {exc.args[0]!r}") from None
    except RecursionError:
        raise PolicyLoadError(f"{file}: invalid JSON: nested too deeply") from None


def describe(value: object, *, quote_hint: bool = True) -> str:
    """A value's YAML type, for error messages (with a quoting hint for scalars, unless the
    field takes only certain words, where quoting would not help)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        word = str(value).lower()
        return f'boolean {word} (quote it: "{word}")' if quote_hint else f"boolean {word}"
    if isinstance(value, int | float):
        return f'number {value} (quote it: "{value}")' if quote_hint else f"number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string {value!r}"
    return type(value).__name__


class Fields:
    """Typed access to one document's fields; every failure names origin and field path."""

    def __init__(self, origin: Origin, prefix: str = "") -> None:
        self.origin = origin
        self.prefix = prefix

    def at(self, prefix: str) -> Fields:
        """The same document, paths prefixed (for the items of a ``kind: List``)."""
        return Fields(self.origin, prefix)

    def fail(self, path: str, message: str) -> NoReturn:
        path = self.prefix + path if path else self.prefix.rstrip(".")
        raise PolicyLoadError(
            f"{self.origin}: {path}: {message}" if path else f"{self.origin}: {message}"
        )

    def mapping(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {describe(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {describe(key)}")
        return value

    def items(self, value: object, path: str) -> list[object]:
        """A list that may be absent (null → empty)."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {describe(value)}")
        return value

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {describe(value)}")
        return value

    def choice(self, value: object, path: str, words: str) -> str:
        """A string meant to be one of `words` ("ALLOW, DENY or AUDIT"); the caller checks
        which, this refuses other types without suggesting to quote them."""
        if not isinstance(value, str):
            self.fail(path, f"expected {words}, got {describe(value, quote_hint=False)}")
        return value

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        """A list of non-empty strings (Istio ``CheckEmptyValues``)."""
        result = []
        for index, item in enumerate(self.items(value, path)):
            text = self.string(item, f"{path}[{index}]")
            if not text:
                self.fail(f"{path}[{index}]", "empty value not allowed")
            result.append(text)
        return tuple(result)

    def string_map(self, value: object, path: str) -> dict[str, str]:
        if value is None:
            return {}
        mapping = self.mapping(value, path)
        for key, item in mapping.items():
            self.string(item, f"{path}[{key}]")
        return mapping  # type: ignore[return-value]

    def check_keys(
        self,
        mapping: Mapping[str, object],
        path: str,
        allowed: Collection[str],
        unsupported: Mapping[str, str] | None = None,
    ) -> None:
        """Refuse keys auditmesh does not implement (with why) and keys Istio does not have."""
        for key in mapping:
            where = f"{path}.{key}" if path else key
            if unsupported and key in unsupported:
                self.fail(where, f"not supported by auditmesh ({unsupported[key]})")
            if key not in allowed:
                self.fail(where, f"unknown field (expected one of: {', '.join(allowed)})")
