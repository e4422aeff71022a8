"""The HTTP API fuzzed from its own OpenAPI document (schemathesis) against a real registry process on
loopback, with an admin token so that every route is exercised past authentication: no 5xx, no status code
the document does not declare, no response body that breaks its declared schema.

Bounded: a fixed number of examples per operation, derandomized (the same cases every run), no shrinking.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from deltaformat import client
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.serve import RegistryServer

if sys.version_info < (3, 11):  # a builtin from 3.11; pytest brings the backport before
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.usefixtures("client_env")
EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def test_the_http_api_fuzzed_from_its_own_openapi_document(artifacts: Artifacts, tmp_path: Path):
    srv = RegistryServer(tmp_path / "data").start()
    try:
        pushed = client.push(artifacts.delta, f"{srv.host}/acme/tiny-chat:1.0", token=srv.token("acme", "push"))
        # Real values for path parameters in a third of the cases, so that routes are exercised past the 404s.
        known = {"name": "acme/tiny-chat", "reference": "1.0", "digest": pushed.digest}
        auth = {"Authorization": f"Bearer {srv.token('*', 'admin')}"}
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json", headers=auth)
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15  # the document lists the API, not an empty shell
        for operation in operations:
            failures += _fuzz(operation, srv.url, auth, known)
        assert not failures, "\n\n".join(failures[:10])
        assert "Traceback" not in srv.log_text()  # nothing failed unexpectedly on the way either
    finally:
        srv.stop()


def _fuzz(operation, base_url: str, auth: dict[str, str], known: dict[str, str]) -> list[str]:  # noqa: ANN001
    """The first failure of one operation's examples, if any (without shrinking: its report names the case).
    Cases are valid by the document (with random or real path parameters) or invalid by it (negative mode)."""
    params = {p.name: known[p.name] for p in operation.path_parameters if p.name in known}
    cases = st.one_of(operation.as_strategy(), operation.as_strategy(path_parameters=params),
                      operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case) -> None:  # noqa: ANN001
        case.call_and_validate(base_url=base_url, headers=auth, checks=CHECKS, timeout=30)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collected: one run reports every failing operation
        return [f"{operation.label}: {str(exc)[:1500]}"]
    return []
