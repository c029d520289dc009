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

    def __reduce__(self) -> tuple[object, ...]:  # crosses process boundaries (parallel verify)
        return (_rebuild, (self.message, self.expected, self.computed, self.where))

    def _describe(self) -> str:
        parts = [self.message]
        if self.where is not None:
            parts.append(f"at {self.where}")
        if self.expected is not None or self.computed is not None:
            parts.append(f"expected {_show(self.expected)}, computed {_show(self.computed)}")
        return "; ".join(parts)


def _rebuild(
    message: str, expected: object, computed: object, where: str | None
) -> VerificationError:
    return VerificationError(message, expected=expected, computed=computed, where=where)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)
