"""Turning a scenario's requests into engine requests, and choosing them.

The open model picks request k of a phase's mix by striping the request
weights exactly as arrivals are striped over agents: over any window the mix
matches the weights within one request, and no random generator has to agree
across agents.

`prepare` builds each request once. A request with templates (`${...}`) has
no fixed form: in an arrival-rate phase it is rendered at each lookup with the
built-ins that need no user (random, uuid, time) and the scenario's
variables; users phases render it per user (see `loadctl.agent.journey`).
"""

from __future__ import annotations

import random

from loadctl.agent.http import Endpoint, HttpRequest
from loadctl.agent.journey import Step, UserState, initial_vars, needs_body
from loadctl.protocol.scenario import Phase, RequestSpec, Scenario
from loadctl.protocol.segments import Stripe


class Requests(dict[str, HttpRequest]):
    """Name -> request. Templated requests are not stored: each lookup renders one."""

    def __init__(self, steps: dict[str, Step], state: UserState) -> None:
        super().__init__({n: s.static for n, s in steps.items() if not s.templated})
        self._steps = steps
        self._state = state

    def __missing__(self, name: str) -> HttpRequest:
        return self._steps[name].build(self._state)


def prepare(scenario: Scenario) -> Requests:
    return Requests(steps(scenario), UserState(0, vars=initial_vars(scenario), rng=random.Random()))


def steps(scenario: Scenario) -> dict[str, Step]:
    endpoint = Endpoint.parse(scenario.target)
    return {r.name: Step(r, endpoint, _http_request(endpoint, r)) for r in scenario.requests}


def _http_request(endpoint: Endpoint, spec: RequestSpec) -> HttpRequest:
    return HttpRequest(
        endpoint,
        spec.method,
        spec.path,
        spec.headers,
        spec.body,
        want_body=needs_body(spec),
        follow_redirects=spec.follow_redirects,
    )


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

    @property
    def period(self) -> int:
        """`pick(k)` is `pick(k % period)`."""
        return self._stripe.period
