"""The objects templates get for project secrets (no database access here, so the template
sandbox can import them early). While a render is open (`accessing()`), every SecretValue
created is remembered, so the sandbox can recognise the value even after something turned it
into a plain string."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

_accessed: ContextVar[dict[str, str] | None] = ContextVar("sparkops_secret_access", default=None)


@contextlib.contextmanager
def accessing() -> Iterator[dict[str, str]]:
    """Collect `{value: name}` of the secrets a template reads until the block ends."""
    found: dict[str, str] = {}
    token = _accessed.set(found)
    try:
        yield found
    finally:
        _accessed.reset(token)


class SecretValue:
    """A secret as templates see it: rendered whole by plain interpolation (`str()`), never
    transformed. It is deliberately not a `str`: no methods, no length, no indexing, no
    iteration; the sandbox refuses filters, operators and calls that touch it. Its repr names
    the secret, never the value."""

    __slots__ = ("_value", "name")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value
        found = _accessed.get()
        if found is not None and value:
            found[value] = name

    def __str__(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<secret {self.name}>"

    def __format__(self, spec: str) -> str:
        raise TypeError(f"Secret '{self.name}' can only be used as a whole value.")

    def __bool__(self) -> bool:
        return bool(self._value)


class TemplateSecrets(Mapping[str, SecretValue]):
    """`secrets` in a template context: names map to SecretValue objects."""

    def __init__(self, bag: Mapping[str, str]) -> None:
        self._bag = bag

    def __getitem__(self, name: str) -> SecretValue:
        return SecretValue(name, self._bag[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._bag)

    def __len__(self) -> int:
        return len(self._bag)

    def __contains__(self, name: object) -> bool:
        return name in self._bag

    def __repr__(self) -> str:
        return "<secrets>"
