"""Property-based run over the OpenAPI schema: no server errors, responses match the schema.

Schemathesis drives the ASGI app in-process; each operation gets a bounded number of
generated requests (``MAX_EXAMPLES``), sent with the upload token so that model upload and
delete are exercised past authentication. (Schemathesis' own pytest plugin does not load
under this pytest version, so the operations are looped over with Hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convscope.config import Settings
from convscope.services.facade import Convscope
from tests.server.conftest import AUTH

MAX_EXAMPLES = 15
# Schema-valid is not content-valid: random bytes that the schema calls a binary file are not
# an image or a safetensors file, and the API says so with 415/422. Every other check runs:
# no 5xx, declared status codes, content types, response schemas and headers, and
# schema-invalid requests rejected.
EXCLUDED = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.not_a_server_error]


def not_a_server_error_but_unavailable_models(unavailable: frozenset[str]):  # type: ignore[no-untyped-def]
    """Schemathesis' ``not_a_server_error``, less one documented answer: 503
    ``model_unavailable`` for a model that ``GET /api/models`` lists as unavailable (no weights
    here). Schemathesis reuses values from earlier responses, so it does ask for those models.
    Any other 5xx, including a 503 for an available model, fails."""

    def no_server_error(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
        if response.status_code < 500:
            return
        model = (case.path_parameters or {}).get("model")
        body = response.json() if "json" in response.headers.get("content-type", [""])[0] else {}
        if response.status_code == 503 and body.get("code") == "model_unavailable":
            assert model in unavailable, f"503 model_unavailable for {model!r}: {body}"
            return
        raise AssertionError(f"server error {response.status_code}: {response.text[:500]}")

    return no_server_error


@pytest.fixture(scope="module")
def api_schema(hard_settings: Settings, hard_service: Convscope):  # type: ignore[no-untyped-def]
    from convscope.api.app import create_app

    app = create_app(hard_settings, hard_service)
    app.state.ready.set()  # the session service has its default model loaded already
    return schemathesis.openapi.from_asgi("/openapi.json", app)


REAL = {  # half the cases use real names, so generated query values reach the model
    "model": st.just("efficientnet_lite0"),
    "layer": st.sampled_from(
        ["conv_stem", "bn1", "blocks.1.0.conv_dw", "blocks.6.0.conv_pw", "global_pool", "output"]
    ),
}


def _realistic(case, use_real: bool, layer: str, image_id: str):  # type: ignore[no-untyped-def]
    params = case.path_parameters or {}
    if use_real:
        for key, value in (
            ("model", "efficientnet_lite0"),
            ("layer", layer),
            ("image_id", image_id),
        ):
            if key in params:
                params[key] = value
    return case


def test_api_conforms_to_its_schema(api_schema, hard_service: Convscope) -> None:  # type: ignore[no-untyped-def]
    cat = next(i["id"] for i in hard_service.list_images() if i["name"] == "cat")
    unavailable = frozenset(m["name"] for m in hard_service.models() if not m["available"])
    server_errors = not_a_server_error_but_unavailable_models(unavailable)
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(
            case=st.builds(
                _realistic, operation.as_strategy(), st.booleans(), REAL["layer"], st.just(cat)
            )
        )
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(
                headers=AUTH, excluded_checks=EXCLUDED, additional_checks=[server_errors]
            )

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # report every operation's failures
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
