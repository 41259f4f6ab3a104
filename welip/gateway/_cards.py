"""The ``/v1/models`` entries of what a gateway serves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# WeLIP's fields beyond OpenAI's model object; each kind of model has its own.
_OWN_FIELDS = ("parent", "max_model_len", "max_inputs_per_request")


class ModelCard(BaseModel):
    """One ``/v1/models`` entry: OpenAI's model object, plus WeLIP's fields where a model has them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "welip"
    root: str
    """The weights by name, never where they are stored: the model's own id, or an alias's target."""
    source: str | None = Field(None, exclude=True)
    """Where a served model's weights are read from (its tokenizer, for limits); never shown to clients."""
    parent: str | None = None
    """Adapters and aliases: the served model whose engine runs them."""
    max_model_len: int | None = None
    """Served models: the engine's context length (null when vLLM takes the model's own)."""
    max_inputs_per_request: int | None = None
    """Embedding models: most ``input`` items one request may send."""

    def public(self) -> dict[str, Any]:
        """The JSON clients see: WeLIP's fields only on the cards that were given them."""
        return self.model_dump(exclude={name for name in _OWN_FIELDS if name not in self.model_fields_set})
