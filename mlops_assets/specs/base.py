"""The base of every spec section: unknown keys are errors and a loaded spec never changes.

Unknown keys are refused so that a misspelt key (``window_day``) fails loading, naming itself, instead
of silently taking the default; frozen so that a spec can be hashed and shared between assets.
"""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
