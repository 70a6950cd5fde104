"""Turning a scenario's requests into engine requests, and choosing them.

The open model picks request k of a phase's mix by striping the request
weights exactly as arrivals are striped over agents: over any window the mix
matches the weights within one request, and no random generator has to agree
across agents.
"""

from __future__ import annotations

from loadctl.agent.http import Endpoint, HttpRequest
from loadctl.protocol.scenario import Phase, RequestSpec, Scenario
from loadctl.protocol.segments import Stripe


def prepare(scenario: Scenario) -> dict[str, HttpRequest]:
    endpoint = Endpoint.parse(scenario.target)
    return {r.name: _http_request(endpoint, r) for r in scenario.requests}


def _http_request(endpoint: Endpoint, spec: RequestSpec) -> HttpRequest:
    return HttpRequest(endpoint, spec.method, spec.path, spec.headers, spec.body)


class Mix:
    """Which request arrival k (or iteration k) of a phase sends."""

    def __init__(self, scenario: Scenario, phase: Phase) -> None:
        self.specs = [scenario.request(n) for n in phase.requests]
        weights = [s.weight for s in self.specs]
        if sum(weights) == 0:
            weights = [1] * len(self.specs)
        self._stripe = Stripe.from_weights(weights)

    def pick(self, k: int) -> RequestSpec:
        return self.specs[self._stripe.owner(k)]
