"""vLLM's OpenAIServingModels, fed from the AdapterStore and pinned per request.

vLLM's serving classes resolve a request's adapter with `models.lora_requests[request.model]` and name the
response with `models.model_name(lora_request)`. Here `lora_requests` is a per-request view: the mapping
captured when the request was admitted (store Ticket), so an adapter replaced or removed after admission does
not change what the request runs on. The view also records which version the request resolved, for the
response headers and the per-adapter metrics.

Admission state lives on the adopted models object (`app.state.openai_serving_models`), not in a module global:
the store (tickets, open-ticket counts per generation) and one ContextVar per models object. The ContextVar is
there because vLLM's handlers read `models.lora_requests` with no request in hand, so the current request can only
be found through the context: `admitted()` (AdmissionMiddleware) sets it around exactly one HTTP request, the tasks
vLLM's handlers start inherit it (asyncio copies the context), and it is reset when the response ends.

With tenants (`--keys`), `scoped(tenant)` (TenantMiddleware) narrows every view to the adapters the tenant may use,
and `is_base_model` / `show_available_models` to the base only if it may: a name outside the scope is absent, so
vLLM answers it exactly as it answers an unknown name.

vLLM sees one adapter name per version (`name@vN`): its LoRARequest equality is by name, so two versions of one
adapter in a batch must not share a name. Clients only ever see `name`.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator
from http import HTTPStatus

from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve import create_error_response
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelPermission

from .store import AdapterStore, Ticket, Version


@dataclass
class Admission:
    ticket: Ticket
    used: Version | None = None     # the adapter version the request resolved (None: base model / not yet)
    asked: str | None = None        # the first name looked up (an unknown one too: for the audit log)



class _View(dict):
    """name -> LoRARequest for one request; remembers the first version looked up."""

    def __init__(self, mapping: dict[str, Version], admission: Admission | None):
        super().__init__((n, v.handle) for n, v in mapping.items())
        self._versions, self._admission = mapping, admission

    def __contains__(self, name):
        if self._admission is not None and self._admission.asked is None and isinstance(name, str):
            self._admission.asked = name
        return super().__contains__(name)

    def __getitem__(self, name):
        handle = super().__getitem__(name)
        if self._admission is not None and self._admission.used is None:
            self._admission.used = self._versions[name]
        return handle


class HotSwapModels(OpenAIServingModels):
    """Adopted in place (`adopt`) so every vLLM handler already holding the models object sees the store."""

    _store: AdapterStore
    _admission: ContextVar[Admission | None]     # the request being handled in this context (None: outside one)
    _tenant: ContextVar                          # the tenant whose scope applies in this context (None: all)

    @classmethod
    def adopt(cls, models: OpenAIServingModels, store: AdapterStore) -> "HotSwapModels":
        models.__dict__.pop("lora_requests", None)
        models.__class__ = cls
        models._store = store
        models._admission = ContextVar(f"hylorada_admission_{id(models):x}", default=None)
        models._tenant = ContextVar(f"hylorada_tenant_{id(models):x}", default=None)
        return models

    @contextmanager
    def scoped(self, tenant) -> Iterator[None]:
        """Within the block (this context and the tasks it starts), only what `tenant` (keys.Tenant) may use."""
        token = self._tenant.set(tenant)
        try:
            yield
        finally:
            self._tenant.reset(token)

    @contextmanager
    def admitted(self) -> Iterator[Admission]:
        """One request's admission: a store ticket (the versions serving now), visible to `lora_requests` in this
        context until the block ends; the ticket is then released, so retired versions can be freed."""
        adm = Admission(self._store.admit())
        token = self._admission.set(adm)
        try:
            yield adm
        finally:
            self._admission.reset(token)
            self._store.release(adm.ticket)

    @property
    def lora_requests(self) -> dict:
        adm, tenant = self._admission.get(), self._tenant.get()
        mapping = adm.ticket.mapping if adm is not None else self._store.serving()
        if tenant is not None:
            mapping = {n: v for n, v in mapping.items() if tenant.allows(n)}
        return _View(mapping, adm)

    @lora_requests.setter
    def lora_requests(self, value) -> None:     # vLLM's __init__ assigns {}; the store is the source of truth
        pass

    def model_name(self, lora_request=None) -> str:
        if lora_request is not None:
            return lora_request.lora_name.rsplit("@v", 1)[0]
        return self.base_model_paths[0].name

    def is_base_model(self, model_name: str) -> bool:
        tenant = self._tenant.get()
        return (tenant is None or tenant.base) and super().is_base_model(model_name)

    async def show_available_models(self):
        cards = await self.registry.show_available_models()
        base, tenant = self.base_model_paths[0].name, self._tenant.get()
        if tenant is not None and not tenant.base:
            cards.data = []
        for name in sorted(self._store.serving()):
            if tenant is not None and not tenant.allows(name):
                continue
            cards.data.append(ModelCard(id=name, root=f"adapters/{name}", parent=base,
                                        permission=[ModelPermission()]))
        return cards

    async def load_lora_adapter(self, request, base_model_name=None):
        return create_error_response("adapters are loaded from the adapters folder: use POST /v1/adapters/{name}/load",
                                     err_type="BadRequestError", status_code=HTTPStatus.BAD_REQUEST)

    async def unload_lora_adapter(self, request):
        return create_error_response("use POST /v1/adapters/{name}/unload",
                                     err_type="BadRequestError", status_code=HTTPStatus.BAD_REQUEST)
