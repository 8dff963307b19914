"""The `status` of a ModelService object, as the reconciler writes it (also in the CRD)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class ModelServiceStatus(_Model):
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    selector: str | None = Field(default=None, description="label selector (scale subresource)")
    conditions: list[Condition] = Field(default_factory=list)
