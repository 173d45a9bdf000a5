"""What every spec section shares: unknown keys refused, numbers finite, integers and booleans strict."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# strict: YAML's true/false are not the integers 1 and 0, and the strings 'yes', 'no', 'off' are not booleans
# (every bool field is a StrictBool)
Positive = Annotated[int, Field(gt=0, strict=True)]
NonNegative = Annotated[int, Field(ge=0, strict=True)]


class Section(BaseModel):
    # allow_inf_nan=False: every number a spec holds is finite (lr: .inf would stop a run at its first step)
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)
