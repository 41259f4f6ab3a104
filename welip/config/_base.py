"""The strict pydantic base of every WeLIP config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys are errors (a typo never passes silently), values are frozen.

    Configs are inert: validators never touch the network or disk.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
