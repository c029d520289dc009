"""proxy/paths.py: Istio BASE path normalization (RFC 3986 §6.2.2), pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditmesh.proxy.paths import PathError, normalize, remove_dot_segments


@pytest.mark.parametrize(
    ("sent", "normal"),
    [
        ("/admin/x", "/admin/x"),
        ("/%61dmin/x", "/admin/x"),
        ("/%7E%5F%2D%2e%30", "/~_-.0"),
        ("/a%2fb", "/a%2Fb"),  # an escaped slash stays escaped: not a separator
        ("/a%20b", "/a%20b"),
        ("/public/../admin/x", "/admin/x"),
        ("/./admin", "/admin"),
        ("/a/%2e%2e/admin", "/admin"),
        ("\\admin\\x", "/admin/x"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../../x", "/x"),
        ("/..", "/"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a//b", "/a//b"),  # MERGE_SLASHES is not the default
        ("/a/../b?q=/../c#frag", "/b?q=/../c"),
        ("/p?%61=1", "/p?%61=1"),  # the query is left alone
        ("*", "*"),
    ],
)
def test_normalize(sent: str, normal: str) -> None:
    assert normalize(sent) == normal


@pytest.mark.parametrize("sent", ["/a%zz", "/a%4", "/%"])
def test_a_malformed_escape_is_refused(sent: str) -> None:
    with pytest.raises(PathError, match="malformed percent-encoding"):
        normalize(sent)


@pytest.mark.parametrize(
    ("path", "expected"),
    # RFC 3986 §5.4.1 examples, as merged paths
    [("/a/b/c/./../../g", "/a/g"), ("/mid/content=5/../6", "/mid/6")],
)
def test_remove_dot_segments_rfc_examples(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


segment = st.sampled_from(["a", "b", ".", "..", "%2e", "%2E%2e", "%61", "%2F", "", "x.y"])


@given(st.lists(segment, max_size=8), st.sampled_from(["/", "\\"]))
def test_normal_paths_are_fixed_points_without_dot_segments(parts: list[str], sep: str) -> None:
    normal = normalize(sep + sep.join(parts))
    assert normalize(normal) == normal
    assert normal.startswith("/") and "\\" not in normal
    assert not {".", ".."} & set(normal.split("/"))
