"""Path normalization before policy, audit and upstream: Istio's default (`BASE`).

Istio has Envoy normalize every request path (`normalize_path`, RFC 3986 §6.2.2) before any
filter sees it, and the upstream gets the normalized path too, so a DENY on `/admin/*` also
stops `/%61dmin/x`, `/public/../admin/x` and `\\admin\\x`, which a backend would serve as
`/admin/x`. Here, as there:

- `\\` becomes `/`;
- percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are
  decoded (§6.2.2.2), other escapes keep their meaning with upper-case hex (§6.2.2.1), so
  `%2F` stays an escaped slash, not a path separator;
- dot segments are removed (§5.2.4, §6.2.2.3);
- a malformed escape (`%zz`, `%4`) is refused: its meaning differs between backends;
- a fragment is dropped (it is never sent in a request, RFC 9112 §3.2); the query is kept.

Repeated slashes stay (Istio's `MERGE_SLASHES` is an opt-in).
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class PathError(ValueError):
    """A request path that cannot be normalized; the message says why."""


def normalize(target: str) -> str:
    """The origin-form `target` (`/p?q`) with its path normalized as above."""
    target = target.partition("#")[0]
    path, question, query = target.partition("?")
    if "%" not in path and "\\" not in path and "/." not in path:
        return target  # the usual case: nothing to do
    path = path.replace("\\", "/")
    if "%" in path:
        bad = _BAD_ESCAPE.search(path)
        if bad is not None:
            raise PathError(
                f"malformed percent-encoding {path[bad.start() : bad.start() + 3]!r} in the "
                "path (RFC 3986 §2.1: % and two hex digits)"
            )
        path = _ESCAPE.sub(_decode_unreserved, path)
    return remove_dot_segments(path) + question + query


def _decode_unreserved(escape: re.Match[str]) -> str:
    char = chr(int(escape.group(1), 16))
    return char if char in _UNRESERVED else escape.group(0).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: `/a/b/../c/./d` → `/a/c/d`, `/a/..` → `/`."""
    if "/." not in path:
        return path
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", "..") and kept:
        kept.append("")  # `/a/b/..` is the directory `/a/`
    return "/" + "/".join(kept)
