"""schemathesis over ``gateway/openapi.yaml`` against a live gateway: for every operation,
cases generated from the document (valid ones, then invalid ones) are sent with the operator's
token, and each answer must be no 5xx, a status, content type, headers and body the document
declares. What a case creates (a kernel, a job) is deleted at once, so no run starves the next;
at the end no kernel is listed or running and nothing was logged as unhandled.

``CUMULUS_FUZZ_EXAMPLES`` (default 50) bounds the cases per operation and mode: about three
minutes on two cores."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import SPEC_PATH, assert_clean, delete_all_kernels
from tests.support.gateway import Gateway

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]

SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
# a WebSocket (it answers 101) is the hostile-input tier's: an HTTP fuzzer cannot speak it
OPERATIONS = [
    op
    for op in (r.ok() for r in SCHEMA.get_all_operations())
    if "101" not in op.responses.status_codes
]
EXAMPLES = int(os.environ.get("CUMULUS_FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,  # a kernel start takes seconds; the gateway's answer is what is checked
    database=None,
    derandomize=True,  # the same cases each run: a failure in CI is one a developer reproduces
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
SENT: Counter[str] = Counter()  # requests per mode, for the summary


def clean_up(gateway: Gateway, case: schemathesis.Case, response: Any) -> None:
    """Delete what the case created, before the next one runs."""
    if response.status_code != 201:
        return
    created = response.json()
    if case.path == "/api/kernels":
        assert gateway.delete(f"/api/kernels/{created['id']}").status_code == 204
    elif case.path == "/api/cumulus/jobs":
        assert gateway.delete(f"/api/cumulus/jobs/{created['id']}").status_code == 200


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_operation_conforms(
    gateway: Gateway, operation: schemathesis.APIOperation, mode: GenerationMode
) -> None:
    headers = gateway.headers()

    @SETTINGS
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        SENT[mode.value] += 1
        response = case.call(base_url=gateway.url, headers=headers, timeout=120)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        finally:
            clean_up(gateway, case, response)

    fuzz()


def test_fuzzing_left_nothing(gateway: Gateway) -> None:
    """Every kernel the fuzzer created is gone; the gateway is healthy; nothing unhandled."""
    print(f"\nschemathesis sent {sum(SENT.values())} requests: {dict(SENT)}")
    assert sum(SENT.values()) >= len(OPERATIONS)
    leftover = gateway.get("/api/kernels").json()
    delete_all_kernels(gateway)
    assert leftover == []
    assert_clean(gateway)
