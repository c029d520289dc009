"""ECS's own field definitions (`ecs_flat.yml`) as a checker for exported documents.

The file is not copied into the project (its README says to read it where it lies):
`../shared/data/ecs/ecs_flat.yml` beside the repository, or the path in the environment
variable AUDITMESH_ECS_FLAT. Tests that need it skip, saying so, only when it is absent.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ENV_VAR = "AUDITMESH_ECS_FLAT"
DEFAULT_PATH = Path(__file__).parents[2] / ".." / "shared" / "data" / "ecs" / "ecs_flat.yml"

# Elasticsearch `strict_date_optional_time` as we write it: RFC 3339, up to 9 fraction digits.
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_TEXT_TYPES = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text"}


def ecs_flat_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


@functools.cache
def _load(path: Path) -> dict[str, dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        fields: dict[str, dict[str, Any]] = yaml.load(f, Loader=loader)
    return fields


class EcsSchema:
    """Checks a flat field map (dotted names) against the ECS field definitions."""

    def __init__(self, fields: dict[str, dict[str, Any]]) -> None:
        self.fields = fields

    @classmethod
    def load_or_skip(cls) -> EcsSchema:
        path = ecs_flat_path()
        if not path.is_file():
            pytest.skip(
                f"ECS field definitions not found at {path} (set {ENV_VAR} to ecs_flat.yml "
                "from the elastic/ecs repository to run the ECS field checks)"
            )
        return cls(_load(path))

    def _allowed(self, name: str) -> set[str]:
        return {v["name"] for v in self.fields[name].get("allowed_values") or []}

    def _value_problem(self, name: str, ecs_type: str, value: object) -> str | None:
        if ecs_type in _TEXT_TYPES:
            ok = isinstance(value, str)
        elif ecs_type == "long":
            ok = type(value) is int and -(2**63) <= value < 2**63
        elif ecs_type == "integer":
            ok = type(value) is int and -(2**31) <= value < 2**31
        elif ecs_type in ("float", "double", "scaled_float"):
            ok = type(value) in (int, float)
        elif ecs_type == "boolean":
            ok = type(value) is bool
        elif ecs_type == "date":
            ok = isinstance(value, str) and _DATE.match(value) is not None
        elif ecs_type == "ip":
            try:
                ipaddress.ip_address(value)  # type: ignore[arg-type]
                ok = isinstance(value, str) and "%" not in value
            except ValueError:
                ok = False
        else:
            return f"{name}: we write no fields of ECS type {ecs_type}"
        return None if ok else f"{name}: {value!r} is not a valid ECS {ecs_type}"

    def problems(self, flat: dict[str, Any]) -> list[str]:
        """Every way `flat` departs from ECS; empty when it conforms."""
        found: list[str] = []
        for name, value in flat.items():
            if value is None:
                found.append(f"{name}: null written; absent fields must be left out")
                continue
            head, _, rest = name.partition(".")
            parent = self.fields.get(head)
            if name not in self.fields and parent and parent["type"] == "object" and rest:
                # `labels.*`: an ECS object field whose values are of its object_type.
                if "." in rest:
                    found.append(f"{name}: key under {head} must not contain a dot")
                problem = self._value_problem(name, parent.get("object_type", "keyword"), value)
                if problem:
                    found.append(problem)
                continue
            spec = self.fields.get(name)
            if spec is None:
                found.append(f"{name}: not an ECS field")
                continue
            is_array = "array" in (spec.get("normalize") or [])
            if isinstance(value, list):
                if not is_array:
                    found.append(f"{name}: ECS does not normalise this field to an array")
                values: list[object] = value
            else:
                values = [value]
            allowed = self._allowed(name)
            for item in values:
                problem = self._value_problem(name, spec["type"], item)
                if problem:
                    found.append(problem)
                if allowed and item not in allowed:
                    found.append(f"{name}: {item!r} is not one of ECS's allowed values")
        found += self._categorization_problems(flat)
        return found

    def _categorization_problems(self, flat: dict[str, Any]) -> list[str]:
        """ECS Categorization Fields: each event.type is an expected type of a category."""
        categories = flat.get("event.category") or []
        types = flat.get("event.type") or []
        expected: set[str] = set()
        for value in self.fields["event.category"].get("allowed_values") or []:
            if value["name"] in categories:
                expected |= set(value.get("expected_event_types") or [])
        return [
            f"event.type {t!r} is not expected for event.category {categories}"
            for t in types
            if t not in expected
        ]
