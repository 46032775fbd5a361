"""The inference API fuzzed through the real Gunicorn of the local stack.

* schemathesis, driven by the OpenAPI document the service serves at /openapi.json:
  every operation, valid and invalid requests: never a 5xx other than the
  documented 503, responses conform to the document.
* hypothesis: arbitrary bodies, content types and instance lists on /v1/predict:
  never a 500.
* the limits: a body over MAX_REQUEST_BYTES is 413, more than MAX_REQUEST_IMAGES instances 400.
* afterwards the Gunicorn master and its workers are the same processes (no worker
  died, none was restarted).
"""

from __future__ import annotations

import json
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack.supervisor import child_pids
from tests.hostile import JSON_VALUES, b64, png_bytes, wrong_images

pytestmark = pytest.mark.integration


def _children(ppid: int) -> set[int]:
    return set(child_pids(ppid))


@pytest.fixture(scope="module")
def service(local_stack):
    """The stack's service URL; on teardown, checks that no worker died meanwhile."""
    url = local_stack["env"]["INFERENCE_URL"]
    master = int((local_stack["dir"] / "pids" / "inference.pid").read_text())
    workers = _children(master)
    assert workers, "gunicorn has no worker"
    yield {"url": url, "master": master, "workers": workers}
    assert int((local_stack["dir"] / "pids" / "inference.pid").read_text()) == master
    assert os.path.exists(f"/proc/{master}")
    assert _children(master) == workers, "a gunicorn worker died or was replaced during the fuzzing"
    assert requests.get(url + "/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_conforms_to_its_openapi_document(service, mode):
    """Every operation of /openapi.json, schemathesis-generated requests (valid ones, and
    ones the document says are invalid): no 5xx but the documented 503, and every
    answer conforms to the document (status code, content type, body schema)."""
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(service["url"] + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/predict", "GET /v1/model", "GET /readyz"}
    for op in operations:
        if mode == "negative" and op.method.upper() != "POST":
            continue  # GETs without parameters have no invalid form
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        def check(case):
            response = case.call(timeout=60)
            assert response.status_code < 500 or response.status_code == 503, \
                (case.method, case.path, response.status_code, response.text[:300])
            if mode == "positive":
                case.validate_response(response)
            elif op.label == "POST /v1/predict":  # noqa: B023 (check() runs in this iteration)
                assert response.status_code in (200, 400, 413), response.text[:300]

        check()


BODIES = st.one_of(
    st.binary(max_size=3000),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.lists(st.one_of(
        JSON_VALUES,
        st.fixed_dictionaries({"image_id": JSON_VALUES, "image": JSON_VALUES}),
        st.fixed_dictionaries({"image_id": st.text(min_size=1, max_size=20),
                               "image": wrong_images.map(b64)}),
        st.fixed_dictionaries({"image_id": st.text(max_size=20),
                               "image": st.integers(0, 9).map(lambda s: b64(png_bytes(seed=s)))}),
    ), max_size=8).map(lambda items: json.dumps({"instances": items}).encode()),
    # what json.dumps does not write: deep nesting, lone surrogates, NaN, int64 overflow
    st.sampled_from([b"[" * 50_000, b'{"instances": ' + b"[" * 50_000,
                     b'{"instances": [{"image_id": "\\ud800", "image": "QQ=="}]}',
                     b'{"instances": [{"image_id": "a", "image": NaN}]}',
                     b'{"instances": [{"image_id": 9223372036854775808, "image": "QQ=="}]}',
                     b'{"instances": [{"image_id": true, "image": "QQ=="}]}']),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES, content_type=st.sampled_from(["application/json", "text/plain",
                                                   "application/octet-stream", ""]),
       path=st.sampled_from(["/v1/predict", "/v1/predict/", "/v1/model", "/readyz", "/nope"]))
def test_arbitrary_requests_never_500(service, body, content_type, path):
    headers = {"Content-Type": content_type} if content_type else {}
    r = requests.post(service["url"] + path, data=body, headers=headers, timeout=60)
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    if path == "/v1/predict" and r.status_code == 200:
        preds = r.json()["predictions"]
        assert len(preds) == len(json.loads(body)["instances"])


def test_request_size_and_batch_limits(service):
    good = {"image_id": "x", "image": b64(png_bytes())}
    r = requests.post(service["url"] + "/v1/predict", json={"instances": [good] * 129}, timeout=60)
    assert r.status_code == 400 and "MAX_REQUEST_IMAGES" in r.json()["error"]
    big = b'{"instances": [' + b'"' + b"A" * (17 * 1024 * 1024) + b'"]}'
    try:
        r = requests.post(service["url"] + "/v1/predict", data=big,
                          headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 413, r.status_code
    except requests.ConnectionError:
        pytest.fail("the service dropped the connection instead of answering 413")
    r = requests.post(service["url"] + "/v1/predict", json={"instances": [good] * 128}, timeout=120)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 128
