"""Schemathesis against the served /openapi.json of a real server, with a valid token:
no server error and no response that breaks the schema, stateless and stateful."""

import hypothesis
import pytest
import schemathesis
from conftest import start_server, stop_server
from conftest import test_settings as make_settings
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import tokens

EXAMPLES = 15
# Schema-valid is not always acceptable: PostIn also refuses control characters, duplicate mind
# names and tags without letters, which JSON Schema cannot express; those answers are documented
# 422s. Every other check runs (server errors, status codes, content types, schemas, headers,
# negative data rejected, auth enforced).
EXCLUDED = [positive_data_acceptance]
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def api(settings, tmp_path):  # type: ignore[no-untyped-def]
    # Schemathesis also checks that bad tokens are refused; a high limit keeps those checks from
    # locking the test client out (the limit itself is tested in test_ingest.py).
    server = start_server(settings, tmp_path, WORKSHOP_AUTH_FAIL_LIMIT="1000000")
    engine_settings = make_settings(settings.database_url)
    from app.db import make_engine

    engine = make_engine(engine_settings)
    token = tokens.create_token(engine, "schemathesis")
    engine.dispose()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    yield schema, {"Authorization": f"Bearer {token}"}
    stop_server(server)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_stateless(api, mode):  # type: ignore[no-untyped-def]
    schema, auth = api
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    for operation in operations:

        @SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):  # type: ignore[no-untyped-def]
            case.call_and_validate(headers=auth, excluded_checks=EXCLUDED)

        check()


def test_stateful(api):  # type: ignore[no-untyped-def]
    schema, auth = api
    base = schema.as_state_machine()

    class Workflow(base):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case):  # type: ignore[no-untyped-def]
            return {"headers": auth}

        def validate_response(self, response, case, additional_checks=None, **kwargs):  # type: ignore[no-untyped-def]
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=EXCLUDED,
                transport_kwargs=kwargs or None,
                recorder=getattr(self, "recorder", None),
            )

    Workflow.run(settings=hypothesis.settings(SETTINGS, max_examples=10, stateful_step_count=6))


def test_the_schema_describes_both_etags_of_a_post(client) -> None:
    """The gzipped answer's own tag, and that preconditions take either (test_api_etags.py)."""
    schema = client.get("/openapi.json").json()
    get = schema["paths"]["/api/v1/posts/{post_id}"]["get"]
    for status in ("200", "304"):
        assert "-gzip" in get["responses"][status]["headers"]["ETag"]["description"]
