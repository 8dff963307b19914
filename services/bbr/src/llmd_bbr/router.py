"""The routing decision, without I/O: body (or model) in, headers and maybe a new body out."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmd_bbr.body import BodyRejected, check_model, extract_model, rewrite_model
from llmd_bbr.model_table import EMPTY_TABLE, ModelTable, Route

MODEL_HEADER = "x-gateway-model-name"
BASE_MODEL_HEADER = "x-gateway-base-model-name"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request.

    `route` is None when the request passes untouched (`outcome` says why). `body` is the
    rewritten body when an alias rewrote the model, else None (the body stays as it is).
    """

    outcome: str
    model: str | None = None  # the model the client asked for
    route: Route | None = None
    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    body: bytes | None = None


PASSTHROUGH = Decision("passthrough")


class BodyRouter:
    """Routing policy over the current model table.

    `table` is swapped whole by the reloader: a decision reads it once, so it sees either the
    old table or the new one, never a mix.
    """

    def __init__(self, table: ModelTable = EMPTY_TABLE, *, require_model: bool = True) -> None:
        self.table = table
        self.require_model = require_model

    def decide(self, body: bytes, *, rewrite: bool = True) -> Decision:
        """Decide from a complete body. Raises `BodyRejected` for bodies BBR refuses.

        `rewrite=False` skips building the rewritten body (the caller has rewritten already).
        """
        if not body:
            return PASSTHROUGH
        model = extract_model(body)
        if model is None:
            if self.require_model:
                raise BodyRejected(
                    400, "model is missing from the request body", "missing_model", "model"
                )
            return Decision("no_model")
        decision = self._route(model)  # extract_model has checked it
        if rewrite and decision.route is not None and decision.route.rewrite_to is not None:
            new_body = rewrite_model(body, decision.route.rewrite_to)
            return Decision(
                decision.outcome,
                model,
                decision.route,
                decision.set_headers,
                decision.remove_headers,
                new_body,
            )
        return decision

    def decide_model(self, model: str) -> Decision:
        """Decide from the model alone (the body may still be arriving)."""
        return self._route(check_model(model))

    def _route(self, model: str) -> Decision:
        route = self.table.resolve(model)
        headers = {MODEL_HEADER: route.model}
        remove: tuple[str, ...] = ()
        if route.base_model is not None:
            headers[BASE_MODEL_HEADER] = route.base_model
        else:
            # Not ours to vouch for: never let a client-sent base-model header route the request.
            remove = (BASE_MODEL_HEADER,)
        return Decision("routed", model, route, headers, remove)
