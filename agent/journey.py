"""Running journey steps on the agent: templating, extraction, checks, user variables.

A `Step` is one scenario request made ready to send many times. A request
without templates is built once (the hot path stays as cheap as before); one
with `${...}` is rendered per send from the user's `UserState`: its variables
(the scenario's `variables`, then whatever it extracted), its feeder row, and
the built-ins. Values substituted into the path or query are percent-encoded;
header values and text bodies take them as they are; a JSON body (written as a
mapping in the scenario) is rendered leaf by leaf and re-encoded, so values
are always valid JSON, and a leaf that is just `${x}` keeps x's JSON type.

After the reply, `Step.evaluate` runs the extractions (a value that is not
found, and has no default, counts as a failed check named "extract VAR") and
the checks, and says whether the step failed (for `abort_on_fail`).
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

from loadctl.agent.http import Endpoint, HttpRequest, Reply
from loadctl.protocol.journey import (
    MISSING,
    ROW,
    Check,
    Extract,
    Ref,
    Template,
    is_static,
    json_lookup,
    json_templates,
    parse_template,
    parse_variables,
    request_refs,
    text_of,
)
from loadctl.protocol.scenario import RequestSpec, Scenario

_ENCODE_SAFE = "-._~"


@dataclass(slots=True)
class UserState:
    """One virtual user's context: what templates read and extractions write."""

    user_id: int
    iteration: int = 0
    vars: dict[str, Any] = field(default_factory=dict)
    row: Any = None
    rng: random.Random = field(default_factory=random.Random)
    done: set[str] = field(default_factory=set)  # `once` steps that have succeeded


def lookup(ref: Ref, state: UserState) -> Any:
    """A reference's value (MISSING when unset); built-ins are computed per use."""
    name = ref.name
    if name == ROW:
        row = state.row
        if ref.field is None:
            return MISSING if row is None else row
        if isinstance(row, Mapping):
            return row.get(ref.field, MISSING)
        return MISSING
    value = state.vars.get(name, MISSING)
    if value is not MISSING:
        return value
    if name == "user_id":
        return state.user_id
    if name == "iteration":
        return state.iteration
    if name == "random":
        return state.rng.randrange(2**31)
    if name == "uuid":
        return str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
    if name == "now":
        return int(time.time())
    if name == "now_ms":
        return int(time.time() * 1000)
    if name == "now_iso":
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return MISSING


def render(template: Template, state: UserState, encode: bool = False) -> str:
    """The template as text; unset references render empty."""
    out: list[str] = []
    for part in template:
        if isinstance(part, str):
            out.append(part)
            continue
        value = lookup(part, state)
        text = "" if value is MISSING else text_of(value)
        out.append(quote(text, safe=_ENCODE_SAFE) if encode else text)
    return "".join(out)


def render_value(template: Template, state: UserState) -> Any:
    """A template that is just `${x}` gives x as it is (a number stays a number)."""
    if len(template) == 1 and isinstance(template[0], Ref):
        value = lookup(template[0], state)
        return "" if value is MISSING else value
    return render(template, state)


def render_json(value: Any, state: UserState) -> Any:
    if isinstance(value, tuple):
        return render_value(value, state)
    if isinstance(value, list):
        return [render_json(v, state) for v in value]
    if isinstance(value, dict):
        return {k: render_json(v, state) for k, v in value.items()}
    return value


# -- replies ------------------------------------------------------------------------------


class ReplyView:
    """A reply read lazily: the body's text and JSON are decoded once, if ever."""

    __slots__ = ("_json", "_text", "latency", "reply")

    def __init__(self, reply: Reply | None, latency: float) -> None:
        self.reply = reply
        self.latency = latency
        self._text: str | None = None
        self._json: Any = None

    @property
    def status(self) -> int:
        return self.reply.status if self.reply is not None else 0

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.reply.body.decode("utf-8", "replace") if self.reply else ""
        return self._text

    def json(self) -> Any:
        """The body as JSON, or MISSING if it is not JSON."""
        if self._json is None:
            try:
                self._json = json.loads(self.reply.body) if self.reply else MISSING
            except ValueError:
                self._json = MISSING
        return self._json

    def header(self, name: str) -> str | None:
        if self.reply is None:
            return None
        lower = name.lower()
        for key, value in self.reply.headers:
            if key.lower() == lower:
                return value
        return None

    def cookie(self, name: str, jar: Iterable[Any] | None = None) -> str | None:
        """From this reply's Set-Cookie headers, else from the user's cookie jar."""
        if self.reply is not None:
            for key, value in self.reply.headers:
                if key.lower() != "set-cookie":
                    continue
                parsed: SimpleCookie = SimpleCookie()
                try:
                    parsed.load(value)
                except CookieError:
                    continue
                if name in parsed:
                    return parsed[name].value
        for morsel in jar or ():
            if getattr(morsel, "key", None) == name:
                return str(morsel.value)
        return None


def extract(item: Extract, view: ReplyView, jar: Iterable[Any] | None = None) -> Any:
    """The extracted value, or MISSING."""
    if view.reply is None:
        return MISSING
    if item.kind == "json":
        document = view.json()
        return MISSING if document is MISSING else json_lookup(document, item.json_path)
    if item.kind == "regex":
        match = _regex(item.expr).search(view.text)
        if match is None:
            return MISSING
        group = item.group if item.group is not None else (1 if match.re.groups else 0)
        value = match.group(group)
        return MISSING if value is None else value
    if item.kind == "header":
        found = view.header(item.expr)
        return MISSING if found is None else found
    found = view.cookie(item.expr, jar)
    return MISSING if found is None else found


_REGEXES: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    compiled = _REGEXES.get(pattern)
    if compiled is None:
        compiled = _REGEXES[pattern] = re.compile(pattern)
    return compiled


def check(item: Check, view: ReplyView, state: UserState) -> bool:
    if item.kind == "latency_under":
        return view.reply is not None and view.latency < item.seconds
    if view.reply is None:
        return False
    if item.kind == "status":
        return status_matches(item.statuses, view.status)
    if item.kind == "json":
        document = view.json()
        value = MISSING if document is MISSING else json_lookup(document, item.json_path)
        if item.has_equals:
            expected = item.equals
            if isinstance(expected, tuple):
                expected = render(expected, state)
            return value is not MISSING and same(value, expected)
        return (value is not MISSING) == bool(item.exists)
    if item.kind == "body_contains":
        return render(item.text, state) in view.text
    found = view.header(item.header)
    if found is None:
        return False
    return not item.has_equals or found == render(item.equals, state)


def status_matches(statuses: tuple[str, ...], status: int) -> bool:
    """Whether `status` is one of a status check's: "200", or a class such as "2xx"."""
    code = str(status)
    in_class = len(code) == 3  # "4xx" is 400-499, not 4 or 40
    return any(s == code or (in_class and s.endswith("xx") and s[0] == code[0]) for s in statuses)


def same(value: Any, expected: Any) -> bool:
    """JSON value equals the scenario's: exactly, or as text (YAML `ok` vs JSON "ok",
    `5` vs "5", `true` vs true)."""
    if isinstance(value, bool) != isinstance(expected, bool):
        return text_of(value) == text_of(expected)
    return bool(value == expected) or text_of(value) == text_of(expected)


# -- steps --------------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


class Step:
    """One scenario request as a journey step."""

    def __init__(self, spec: RequestSpec, endpoint: Endpoint, static: HttpRequest) -> None:
        self.spec = spec
        self.name = spec.name
        self.endpoint = endpoint
        self.static = static
        self.extracts = spec.extract
        self.checks = spec.check
        self.evaluates = bool(spec.extract or spec.check or spec.abort_on_fail)
        self.refs = frozenset(ref.name for ref, _ in request_refs(spec, ()))
        self.path = parse_template(spec.path)
        self.headers = [(k, parse_template(v)) for k, v in spec.headers]
        body = spec.body.decode("utf-8", "replace") if spec.body else ""
        self.json_body: Any = None
        self.text_body: Template = (body,)
        if spec.json_body:
            self.json_body = json_templates(json.loads(body), ())
            self.templated_body = _has_refs(self.json_body)
        else:
            self.text_body = parse_template(body)
            self.templated_body = not is_static(self.text_body)
        static_headers = all(is_static(t) for _, t in self.headers)
        self.templated = self.templated_body or not is_static(self.path) or not static_headers
        # only the path changes per request: a prepared head can take a new request line
        self.path_only = self.templated and not self.templated_body and static_headers

    def per_user(self, fixed: frozenset[str]) -> bool:
        """Templated, but only with names in `fixed` (`fixed_names`): it renders the
        same for all of a user's requests, so it can be rendered once per user."""
        return self.templated and self.refs <= fixed

    @functools.cached_property  # one for the run: every user of the step asks
    def lane_checks(self) -> tuple[bytes, int, float] | None:
        """For the compiled lane (agent/_lane.c): when every check of the step is a
        status or latency_under check and it has nothing else to do with a reply (no
        extraction, `once` or `abort_on_fail`), the statuses they all accept (a byte
        per status 0-599), how many checks each reply they accept passes, and the
        latency (seconds) it must stay under; else None."""
        spec = self.spec
        if not self.checks or self.extracts or spec.once or spec.abort_on_fail:
            return None
        if any(c.kind not in ("status", "latency_under") for c in self.checks):
            return None
        statuses = [c.statuses for c in self.checks if c.kind == "status"]
        accept = bytes(all(status_matches(s, code) for s in statuses) for code in range(600))
        under = min((c.seconds for c in self.checks if c.kind == "latency_under"), default=math.inf)
        return accept, len(self.checks), under

    def build(self, state: UserState) -> HttpRequest:
        if not self.templated:
            return self.static
        path = render(self.path, state, encode=True)
        headers = tuple((k, render(t, state)) for k, t in self.headers)
        body = self.static.body
        if self.templated_body:
            if self.json_body is not None:
                body = json.dumps(
                    render_json(self.json_body, state), separators=(",", ":"), ensure_ascii=False
                ).encode()
            else:
                body = render(self.text_body, state).encode()
        return HttpRequest(
            self.endpoint,
            self.static.method,
            path,
            headers,
            body,
            self.static.want_body,
            self.static.follow_redirects,
        )

    def evaluate(
        self, view: ReplyView, state: UserState, jar: Iterable[Any] | None = None
    ) -> Verdict:
        verdict = Verdict()
        for item in self.extracts:
            value = extract(item, view, jar)
            if value is MISSING and item.default is not None:
                value = item.default
            if value is MISSING:
                verdict.failed += 1
                verdict.failures.append(item.label)
            else:
                state.vars[item.var] = value
                verdict.passed += 1
        for test in self.checks:
            if check(test, view, state):
                verdict.passed += 1
            else:
                verdict.failed += 1
                verdict.failures.append(test.label)
        return verdict

    def failed(self, view: ReplyView, verdict: Verdict | None) -> bool:
        """For abort_on_fail and once: a failed check or extraction; for a step without
        any, no reply or an error status."""
        if verdict is not None and (self.extracts or self.checks):
            return not verdict.ok
        return view.reply is None or view.status >= 400


def _has_refs(value: Any) -> bool:
    if isinstance(value, tuple):
        return not is_static(value)
    if isinstance(value, list):
        return any(_has_refs(v) for v in value)
    if isinstance(value, dict):
        return any(_has_refs(v) for v in value.values())
    return False


def needs_body(spec: RequestSpec) -> bool:
    return bool(spec.extract) or any(c.needs_body for c in spec.check)


def fixed_names(scenario: Scenario, variables: Mapping[str, Any]) -> frozenset[str]:
    """Names whose value a user keeps for all its life: its id and the scenario's
    variables, unless an extraction writes them (row fields change with the row)."""
    extracted = {e.var for r in scenario.requests for e in r.extract}
    return frozenset(({"user_id"} | set(variables)) - extracted)


def initial_vars(scenario: Scenario) -> dict[str, Any]:
    """The scenario's `variables`: every user starts with them."""
    return parse_variables(scenario.source.get("variables"))
