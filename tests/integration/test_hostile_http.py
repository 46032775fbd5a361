"""The inference API fuzzed through the real Gunicorn of the local stack.

* schemathesis, driven by the OpenAPI document the service serves at /openapi.json:
  every operation, valid and invalid requests, /v1/predict in both of its request styles
  (JSON and multipart/form-data, whose image parts are drawn from real and broken
  PNG/JPEG files): never a 5xx other than the documented 503, responses conform to the
  document.
* hypothesis: arbitrary bodies, content types and instance lists on /v1/predict:
  never a 500.
* the limits: a body over MAX_REQUEST_BYTES is 413, more than MAX_REQUEST_IMAGES instances 400.
* afterwards the Gunicorn master and its workers are the same processes (no worker
  died, none was restarted).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack.supervisor import child_pids
from tests.hostile import JSON_VALUES, b64, png_bytes, wrong_images

pytestmark = pytest.mark.integration

# Multipart image files: real PNG and JPEG images of any size and mode, other formats,
# garbage (tests/hostile.py).  (Not registered with schemathesis.openapi.media_type: a
# registered strategy makes schemathesis 4 send one 'image' part without a filename instead
# of the array of file parts the document describes.)
IMAGE_FILES = st.one_of(st.builds(png_bytes, st.integers(1, 64), st.integers(1, 64), st.just("RGB"),
                                  st.integers(0, 9), st.sampled_from(["PNG", "JPEG"])),
                        wrong_images)


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
    sent = Counter()  # /v1/predict: (media type, status)
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
            if op.label == "POST /v1/predict":  # noqa: B023 (check() runs in this iteration)
                sent[case.media_type, response.status_code] += 1
            if mode == "positive":
                # A multipart body with as many 'image_id' parts as 'image' parts cannot be said
                # in JSON Schema: schema-valid bodies with unequal counts are (documented) 400s,
                # so "positive data is accepted" does not hold for them.
                multipart = case.media_type == "multipart/form-data"
                case.validate_response(response, excluded_checks=[positive_data_acceptance] if multipart else None)
            elif op.label == "POST /v1/predict":  # noqa: B023
                assert response.status_code in (200, 400, 413, 415), response.text[:300]

        check()
    # Both request styles were reached, multipart ones up to the images (a 200).
    print(f"/v1/predict cases ({mode}): {dict(sent)}")
    assert sum(n for (media, _), n in sent.items() if media == "multipart/form-data") > 0, sent
    assert sum(n for (media, _), n in sent.items() if media == "application/json") > 0, sent
    if mode == "positive":
        assert sent["multipart/form-data", 200] > 0, sent
        assert sent["multipart/form-data", 400] > 0, sent  # unequal counts


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
                                                   "application/octet-stream", "",
                                                   "multipart/form-data; boundary=x", "multipart/form-data"]),
       path=st.sampled_from(["/v1/predict", "/v1/predict/", "/v1/model", "/readyz", "/nope"]))
def test_arbitrary_requests_never_500(service, body, content_type, path):
    headers = {"Content-Type": content_type} if content_type else {}
    r = requests.post(service["url"] + path, data=body, headers=headers, timeout=60)
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    if path == "/v1/predict" and r.status_code == 200 and content_type == "application/json":
        preds = r.json()["predictions"]
        assert len(preds) == len(json.loads(body)["instances"])


MULTIPART = st.lists(st.tuples(st.one_of(st.text(max_size=20), st.just("")), IMAGE_FILES,
                               st.sampled_from(["image/png", "image/jpeg", "text/plain", "application/octet-stream"]),
                               st.sampled_from(["i.png", "i.jpg", None])), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=MULTIPART, extra_ids=st.integers(0, 1))
def test_arbitrary_multipart_requests_never_500(service, items, extra_ids):
    """Multipart bodies of real and broken images, any content type, with and without a
    filename, sometimes one image_id too many: 200 (per-image errors) or 400, never a 500."""
    files = []
    for image_id, data, content_type, filename in items:
        files += [("image_id", (None, image_id)), ("image", (filename, data, content_type))]
    files += [("image_id", (None, "extra"))] * extra_ids
    if not files:
        files = [("other", (None, "x"))]
    r = requests.post(service["url"] + "/v1/predict", files=files, timeout=60)
    assert r.status_code in (200, 400, 413), (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    named = all(filename for *_, filename in items)
    if r.status_code == 200:
        assert named and not extra_ids and items
        preds = r.json()["predictions"]
        assert [p["image_id"] for p in preds] == [i[0] for i in items]
    else:
        assert r.status_code == 400 and (extra_ids or not named or not items), r.text[:300]


def test_request_size_and_batch_limits(service):
    good = {"image_id": "x", "image": b64(png_bytes())}
    r = requests.post(service["url"] + "/v1/predict", json={"instances": [good] * 129}, timeout=60)
    assert r.status_code == 400 and "MAX_REQUEST_IMAGES" in r.json()["error"]
    big = b'{"instances": [' + b'"' + b"A" * (65 * 1024 * 1024) + b'"]}'
    try:
        r = requests.post(service["url"] + "/v1/predict", data=big,
                          headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 413, r.status_code
    except requests.ConnectionError:
        pytest.fail("the service dropped the connection instead of answering 413")
    r = requests.post(service["url"] + "/v1/predict", json={"instances": [good] * 128}, timeout=120)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 128
    # multipart: the same image limit, and a part count over MAX_FORM_PARTS is 413
    def parts(n):
        return [("image_id", (None, f"i{k}")) for k in range(n)] + \
            [("image", ("i.png", png_bytes(), "image/png")) for _ in range(n)]
    r = requests.post(service["url"] + "/v1/predict", files=parts(129), timeout=60)
    assert r.status_code == 400 and "MAX_REQUEST_IMAGES" in r.json()["error"]
    r = requests.post(service["url"] + "/v1/predict", files=parts(200), timeout=60)
    assert r.status_code == 413 and r.headers["Content-Type"].startswith("application/json")
    r = requests.post(service["url"] + "/v1/predict", files=parts(128), timeout=120)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 128
