"""Schema-driven fuzzing of the HTTP API with schemathesis, against a live server on the stub planner.

Every operation of the served OpenAPI schema gets its schema examples and a bounded number of generated requests,
valid ones (which, with the schema's constraints, reach the planner) and invalid ones; each response must be one
the schema documents, in status, content type, headers and body, and never a server error; an invalid one is
refused (4xx), and a call without or with a wrong token is 401.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_MODE = 20  # per operation and mode; ~10 s for the whole schema


def _check(strategy, max_examples: int) -> None:
    @given(case=strategy)
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def run(case):
        # Schema-valid is not always valid: JSON Schema cannot say "decodable image", "each camera once", "history
        # in time order" or "state on the observation but not in history", which the server checks (400).
        case.call_and_validate(timeout=10, excluded_checks=[positive_data_acceptance])

    run()


def test_every_response_is_documented_and_no_request_breaks_the_server(serve, stub):
    server = serve(token=TOKEN, max_queue=8)
    schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json", headers=AUTH)

    @schema.auth()
    class Token:  # the schema's bearer scheme, filled in by schemathesis (which also tries without and a wrong one)
        def get(self, case, context):
            return TOKEN

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/plan", "GET /v1/info", "GET /metrics", "GET /readyz"}
    for operation in operations:
        examples = operation.get_strategies_from_examples()
        if examples:
            _check(st.one_of(examples), len(examples))
        _check(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), EXAMPLES_PER_MODE)
        try:
            _check(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), EXAMPLES_PER_MODE)
        except Unsatisfiable:  # nothing to get wrong (a GET without parameters)
            assert operation.method.upper() == "GET"
    assert stub.requests, "no generated request reached the planner"
