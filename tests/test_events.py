"""AuditEvent: canonical bytes are RFC 8785, validation names the field, batches atomic."""

from __future__ import annotations

import json
import uuid

import msgspec
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh import events as ev
from tests.event_id_spellings import NOT_EVENT_IDS, SPELLINGS, form_told

text = st.text(max_size=40)
short = st.text(min_size=1, max_size=30)
counts = st.integers(0, 2**53 - 1)
label_keys = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._/-]{0,20}[A-Za-z0-9])?\Z")
spiffe_ids = st.builds(
    lambda td, ns, sa: f"spiffe://{td}/ns/{ns}/sa/{sa}",
    st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"),
    st.from_regex(r"\A[a-z0-9-]{1,10}\Z"),
    st.from_regex(r"\A[a-z0-9-]{1,10}\Z"),
)


def hex_str(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=n, max_size=n)


def opt(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


peers = st.builds(
    ev.Peer,
    identity=opt(spiffe_ids),
    service=opt(short),
    namespace=opt(short),
    ip=opt(st.ip_addresses().map(str)),
    port=opt(st.integers(0, 65535)),
    host=opt(short),
)
events = st.builds(
    ev.AuditEvent,
    id=st.builds(lambda: ev.new_event_id()),
    time_ns=st.integers(0, 2**63 - 1),
    reporter=short,
    kind=st.sampled_from(["http", "tcp", "authn", "policy_change", "audit_read"]),
    outcome=st.sampled_from(["success", "failure"]),
    duration_us=counts,
    direction=opt(st.sampled_from(["inbound", "outbound"])),
    source=opt(peers),
    destination=opt(peers),
    tls=opt(
        st.builds(
            ev.TLS,
            mutual=st.booleans(),
            version=opt(st.sampled_from(["TLSv1.2", "TLSv1.3"])),
            peer_cert_sha256=opt(hex_str(64)),
            peer_not_after=opt(counts),
        )
    ),
    http=opt(
        st.builds(
            ev.HTTP,
            method=opt(st.sampled_from(["GET", "POST", "DELETE"])),
            path=opt(text),
            status=opt(st.integers(100, 599)),
            request_bytes=opt(counts),
            response_bytes=opt(counts),
            user_agent=opt(text),
        )
    ),
    authz=opt(
        st.builds(
            ev.Authz,
            decision=st.sampled_from(["allow", "deny", "audit"]),
            policy=opt(short),
            rule=opt(st.integers(0, 100)),
        )
    ),
    trace=opt(st.builds(ev.Trace, trace_id=hex_str(32), span_id=opt(hex_str(16)))),
    error=opt(st.builds(ev.Error, type=short, message=text)),
    labels=st.dictionaries(label_keys, text, max_size=4),
    attested=st.booleans(),
)


@settings(max_examples=300)
@given(events)
def test_canonical_bytes_equal_rfc8785(event: ev.AuditEvent) -> None:
    assert ev.canonical_bytes(event) == rfc8785.dumps(ev.to_json_dict(event))


@given(events)
def test_decode_round_trips(event: ev.AuditEvent) -> None:
    assert ev.decode_event(ev.canonical_bytes(event)) == event


def make(**overrides: object) -> bytes:
    base: dict[str, object] = {
        "id": ev.new_event_id(),
        "time_ns": "1764300000123456789",
        "reporter": "spiffe://cluster.local/ns/shop/sa/orders",
        "kind": "http",
        "outcome": "success",
        "http": {"method": "GET", "path": "/", "status": 200},
    }
    base.update(overrides)
    return msgspec.json.encode(base)


def test_time_ns_is_written_as_a_string_and_read_from_either_form() -> None:
    event = ev.decode_event(make(time_ns=1764300000123456789))
    assert event.time_ns == 1764300000123456789
    assert b'"time_ns":"1764300000123456789"' in ev.canonical_bytes(event)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"http": {"status": 2000}}, "$.http.status"),
        ({"http": {"status": 200.0}}, "$.http.status"),
        ({"duration_us": -1}, "$.duration_us"),
        ({"id": str(uuid.uuid4())}, "$.id"),
        ({"kind": "telepathy"}, "$.kind"),
        ({"source": {"identity": "http://example.com/x"}}, "$.source.identity"),
        ({"source": {"port": 70000}}, "$.source.port"),
        ({"labels": {"bad key": "x"}}, "$.labels"),
        ({"time_ns": "01"}, "$.time_ns"),
        ({"time_ns": 1.5}, "$.time_ns"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_event_names_the_field(override: dict[str, object], field: str) -> None:
    with pytest.raises(ev.EventError) as err:
        ev.decode_event(make(**override))
    assert field in str(err.value)


def test_ndjson_batch_error_names_the_line() -> None:
    body = make() + b"\n\n" + make() + b"\n" + make(http={"status": 42}) + b"\n"
    with pytest.raises(ev.EventError) as err:
        ev.decode_batch(body)
    assert err.value.line == 4
    assert "line 4" in str(err.value) and "$.http.status" in str(err.value)


def test_json_array_batch_error_names_the_element() -> None:
    body = b"[" + make() + b"," + make(outcome="maybe") + b"]"
    with pytest.raises(ev.EventError, match=r"\$\[1\]\.outcome"):
        ev.decode_batch(body)


@pytest.mark.parametrize("body", [b"[" * 1000, b"[" * 1000 + b"]" * 1000])
def test_absurdly_nested_batches_are_refused_not_a_crash(body: bytes) -> None:
    with pytest.raises(ev.EventError):
        ev.decode_batch(body)


def test_pretty_printed_array_error_names_the_line_its_element_starts_on() -> None:
    """Two identical elements first (the search for element 2 must not stop at element 1),
    then the bad one on line 7 of an indented array."""
    good = json.dumps(json.loads(make()), indent=2)
    bad = json.dumps(json.loads(make(http={"status": 999})), indent=2)
    lines_before = 1 + 2 * (good.count("\n") + 1)
    body = ("[\n" + good + ",\n" + good + ",\n" + bad + "\n]\n").encode()
    with pytest.raises(ev.EventError) as err:
        ev.decode_batch(body)
    assert err.value.line == lines_before + 1
    assert f"line {lines_before + 1}:" in str(err.value) and "$[2].http.status" in str(err.value)


def test_the_element_is_taken_from_the_path_not_from_the_quoted_value() -> None:
    """msgspec quotes the bad value: an outcome of "$[0]" must not be read as element 0."""
    good = json.dumps(json.loads(make()), indent=2)
    bad = json.dumps(json.loads(make(outcome="$[0]")), indent=2)
    body = ("[\n" + good + ",\n" + bad + "\n]").encode()
    with pytest.raises(ev.EventError) as err:
        ev.decode_batch(body)
    assert err.value.line == 2 + good.count("\n") + 1


def test_an_array_that_is_not_json_is_reported_on_line_1() -> None:
    with pytest.raises(ev.EventError) as err:
        ev.decode_batch(b"[" + make() + b", nope]")
    assert err.value.line == 1


def test_batches_decode_both_forms() -> None:
    one, two = make(), make()
    assert len(ev.decode_batch(one + b"\n" + two)) == 2
    assert len(ev.decode_batch(b"[" + one + b"," + two + b"]")) == 2


def test_new_event_id_is_uuid_v7_with_time_prefix() -> None:
    event_id = ev.new_event_id(lambda: 1_700_000_000_123_000_000, lambda n: b"\xff" * n)
    parsed = uuid.UUID(event_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert int(event_id.replace("-", "")[:12], 16) == 1_700_000_000_123


def test_random_bytes_never_repeat_across_threads_or_a_fork() -> None:
    import os
    import threading

    drawn = [ev.random_bytes(10) for _ in range(1000)]  # crosses 4 KiB buffer refills
    in_thread: list[bytes] = []
    worker = threading.Thread(
        target=lambda: in_thread.extend(ev.random_bytes(10) for _ in range(500))
    )
    worker.start()
    worker.join()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws next must not be what the parent draws next
        os.write(write_end, ev.random_bytes(64))
        os._exit(0)
    os.waitpid(pid, 0)
    from_child = os.read(read_end, 64)
    os.close(read_end)
    os.close(write_end)
    from_parent = ev.random_bytes(64)
    everything = [*drawn, *in_thread]
    assert len(set(everything)) == len(everything)
    assert from_child != from_parent and len(from_child) == 64
    assert len(ev.random_bytes(5000)) == 5000


def test_ndjson_is_one_event_per_line() -> None:
    one, two, three = make(), make(), make()
    body = one + b"\r\n\n  \n" + two + b"\n" + three + b"\n"
    assert [e.id for e in ev.decode_batch(body)] == [
        ev.decode_event(x).id for x in (one, two, three)
    ]
    with pytest.raises(ev.EventError, match="line 3") as err:  # two events on one line
        ev.decode_batch(one + b"\n\n" + two + b" " + three)
    assert err.value.line == 3
    with pytest.raises(ev.EventError, match="line 2"):  # an event split over two lines
        ev.decode_batch(one + b"\n" + two[:40] + b"\n" + two[40:])
    pretty = msgspec.json.format(one, indent=2)  # as a person writes one by hand
    with pytest.raises(ev.EventError, match=r"line 1: .*truncated.* send a pretty-printed"):
        ev.decode_batch(pretty)
    assert ev.decode_batch(b"[" + pretty + b"]")[0].id == ev.decode_event(one).id


def test_an_event_too_large_for_an_entry_says_what_to_shorten() -> None:
    data = b"x" * (ev.MAX_EVENT_BYTES + 1)
    assert ev.checked_size(data[:-1]) == data[:-1]
    with pytest.raises(ev.EventError) as refused:
        ev.checked_size(data, line=3)
    message = str(refused.value)
    assert message.startswith(f"line 3: the event is {ev.MAX_EVENT_BYTES + 1} bytes")
    assert "shorter labels and values" in message and "control characters" in message


def test_each_spelling_of_an_event_id_gives_its_canonical_form() -> None:
    event_id = ev.new_event_id()
    for name, spell in SPELLINGS.items():
        assert ev.parse_event_id(spell(event_id)) == event_id, name
    for name, spell in NOT_EVENT_IDS.items():
        with pytest.raises(ValueError) as refused:
            ev.parse_event_id(spell(event_id))
        assert form_told(str(refused.value)), name
