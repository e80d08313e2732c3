"""The base of every API type (spec and status): camelCase on the wire, unknown fields rejected."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base: camelCase aliases on the wire, unknown fields rejected (typos are errors, not silence)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys and no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
