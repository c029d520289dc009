"""The one domain error of the ledger: a proof, signature or stored value does not check out."""

from __future__ import annotations


class VerificationError(Exception):
    """Raised when verification fails; carries what was expected and what was computed.

    ``expected`` and ``computed`` are bytes (hashes) or any printable value; ``where``
    names the place (an index, a checkpoint size, a tile path) when one is known.
    """

    def __init__(
        self,
        message: str,
        *,
        expected: object = None,
        computed: object = None,
        where: str | None = None,
    ) -> None:
        self.message = message
        self.expected = expected
        self.computed = computed
        self.where = where
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [self.message]
        if self.where is not None:
            parts.append(f"at {self.where}")
        if self.expected is not None or self.computed is not None:
            parts.append(f"expected {_show(self.expected)}, computed {_show(self.computed)}")
        return "; ".join(parts)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)
