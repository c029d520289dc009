"""Event ids as users paste them, for the lookups by id (GET /v1/events/{id},
GET /v1/proof/inclusion?id=, `auditmesh log prove`): one shared parser,
`events.parse_event_id`, so each lookup takes and refuses the same texts."""

from __future__ import annotations

from collections.abc import Callable

# Other spellings of the same UUID (RFC 9562 §4: hex digits are case-insensitive on input).
SPELLINGS: dict[str, Callable[[str], str]] = {
    "uppercase": str.upper,
    "mixed_case": lambda i: i[:18].upper() + i[18:],
    "no_hyphens": lambda i: i.replace("-", ""),
    "no_hyphens_uppercase": lambda i: i.replace("-", "").upper(),
    "braces": lambda i: "{" + i + "}",
    "urn": lambda i: "urn:uuid:" + i,
    "urn_uppercase": lambda i: "URN:UUID:" + i.upper(),
    "surrounding_whitespace": lambda i: f" \t{i}\n",
}

# Texts that name no event id: each gets an error saying which form to give.
NOT_EVENT_IDS: dict[str, Callable[[str], str]] = {
    "a_word": lambda i: "nope",
    "one_digit_short": lambda i: i[:-1],
    "hyphens_misplaced": lambda i: i.replace("-", "")[:4] + "-" + i.replace("-", "")[4:],
    "an_underscore_for_a_digit": lambda i: i.replace("-", "")[:8] + "_" + i.replace("-", "")[9:],
    "a_sign_for_a_digit": lambda i: "+" + i.replace("-", "")[1:],
    "arabic_indic_digits": lambda i: i.translate({ord(d): 0x0660 + int(d) for d in "0123456789"}),
    "urn_in_braces": lambda i: "{urn:uuid:" + i + "}",
    "a_uuid_of_version_4": lambda i: i[:14] + "4" + i[15:],
}


def form_told(message: str) -> bool:
    """The error says which form to give: the UUID's form, or that ids are version 7."""
    return "8-4-4-4-12 hex digits" in message or "version 7 UUIDs" in message
