"""LoRA adapters: the static ``--lora-modules`` and those loaded at run time.

Mirrors vLLM's ``OpenAIServingModels``: each adapter gets an increasing integer id (the
``lora_id`` of KV events), the API answers with vLLM's messages, and a request selects an adapter
by naming it as its ``model``.
"""

from __future__ import annotations

from llmd_sdk.openai import OpenAIError

from llmd_sim.config import LoRAModule
from llmd_sim.engine import LoRA


class LoRARegistry:
    def __init__(self, base_models: list[str], modules: list[LoRAModule], enabled: bool) -> None:
        self.base_models = base_models
        self.enabled = enabled
        self.adapters: dict[str, LoRA] = {}
        self.parents: dict[str, str] = {}
        self._next_id = 1
        for m in modules:
            self.load(m.name, m.path, m.base_model_name)

    def load(self, name: str, path: str, base_model: str | None = None) -> LoRA:
        if not self.enabled:
            raise OpenAIError(400, "LoRA is not enabled: start the server with --enable-lora")
        if not name or not path:
            raise OpenAIError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.adapters:
            raise OpenAIError(400, f"The lora adapter '{name}' has already been loaded.")
        if name in self.base_models:
            raise OpenAIError(400, f"The lora adapter '{name}' has the name of a served model.")
        lora = LoRA(name=name, int_id=self._next_id, path=path)
        self._next_id += 1
        self.adapters[name] = lora
        self.parents[name] = base_model or self.base_models[0]
        return lora

    def unload(self, name: str) -> None:
        if not name:
            raise OpenAIError(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise OpenAIError(404, f"The lora adapter '{name}' cannot be found.")
        del self.adapters[name]
        del self.parents[name]

    def resolve(self, model: str) -> LoRA | None:
        """The adapter a request's `model` names; None for a base model; 404 otherwise."""
        if model in self.base_models:
            return None
        lora = self.adapters.get(model)
        if lora is None:
            raise OpenAIError(404, f"The model `{model}` does not exist.", param="model")
        return lora
