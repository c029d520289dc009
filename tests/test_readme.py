"""The README's examples are real: what it shows a newcomer to send is accepted."""

from __future__ import annotations

from pathlib import Path

from auditmesh.events import canonical_bytes, decode_batch, decode_event

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_example_event_for_post_v1_events_is_valid() -> None:
    text = README.read_text()
    blocks = [part.split("```", 1)[0] for part in text.split("```json\n")[1:]]
    assert blocks, "the README shows an example event in a ```json block"
    (event,) = decode_batch(blocks[0].encode())  # what the server runs on the body, as sent
    assert event.kind == "http" and event.http is not None and event.http.status == 200
    assert decode_event(canonical_bytes(event)) == event
