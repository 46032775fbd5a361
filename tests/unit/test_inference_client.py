"""The inference consumer against a fake HTTP service (consumers/inference.py): the
failure policy by cause, predictions paired by position, the start-up limit check.

``FakeService`` is a requests transport adapter mounted on the client's own session, so
the real ``InferenceClient`` builds, sends and reads every request; Kafka is the
in-memory consumer and producer of tests/unit/test_consumer_offsets.py with its fake
clock, so a backoff costs no time.  Nothing here compares a time or a rate.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from requests.adapters import BaseAdapter

from common.labels import CIFAR10_CLASSES
from common.schema import dumps, encode_png, make_image_message
from common.settings import InferenceClientSettings
from consumers import inference, predict_client
from tests.fakes import (P0, RESULTS, FakeConsumer, RecordingProducer, assert_liveness_polls_only,
                         dead_letters, kafka_settings, oam, stop_after_paused_polls, stop_when_drained)

URL = "http://service.invalid"
POISON, CORRUPT = 13, 7  # pixel values the fake service refuses (400) / answers with an error


def b64(pixel: int) -> str:
    return base64.b64encode(encode_png(np.full((32, 32, 3), pixel, dtype=np.uint8))).decode("ascii")


def pixel_of(image_b64: str) -> int:
    with Image.open(io.BytesIO(base64.b64decode(image_b64))) as img:
        return int(np.asarray(img)[0, 0, 0])


def label_of(pixel: int) -> str:
    return CIFAR10_CLASSES[pixel % 10]


def image_value(seq: int, pixel: int | None = None, image_id: str | None = None) -> bytes:
    """A valid image message; its pixels (all ``pixel``, default ``seq``) decide the fake's
    answer (so a default ``seq`` must not be POISON or CORRUPT)."""
    png = encode_png(np.full((32, 32, 3), seq if pixel is None else pixel, dtype=np.uint8))
    msg = make_image_message(image=png, device_id="dev", producer_id="prod", seq=seq, label=None,
                             dataset="test", image_id=image_id)
    return dumps({**msg, "sent_at": 1.0})


def predict_body(instances: list[dict]) -> dict:
    """What the service answers: one entry per instance, in order; the label follows the pixels."""
    predictions = []
    for inst in instances:
        pixel = pixel_of(inst["image"])
        if pixel == CORRUPT:
            predictions.append({"image_id": inst["image_id"], "error": "corrupt PNG data (OSError)"})
        else:
            predictions.append({"image_id": inst["image_id"], "label": label_of(pixel),
                                "confidence": (pixel + 1) / 256, "received_at": 1.0,
                                "inferred_at": 2.0, "inference_ms": 1.0})
    return {"model": "m", "predictions": predictions, "batch_size": len(instances),
            "timing": {"decode_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0}}


def model_body(max_request_images: int) -> dict:
    return {"id": "m", "weights_source": "random", "input_size": 32, "classes": list(CIFAR10_CLASSES),
            "untrained": True, "max_request_images": max_request_images, "model_batch_max_images": 64,
            "model_batch_delay_ms": 2.0}


def parse_body(request):
    """A JSON body, or a multipart one (predict_files) as the same ``{"instances": [...]}``
    (base64 images, plus each part's content type), read by Werkzeug as the service reads it."""
    if not request.body:
        return None
    content_type = request.headers.get("Content-Type", "")
    if not content_type.startswith("multipart/form-data"):
        return json.loads(request.body)
    from werkzeug.formparser import parse_form_data

    _, form, files = parse_form_data({"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
                                      "CONTENT_LENGTH": str(len(request.body)),
                                      "wsgi.input": io.BytesIO(request.body)})
    ids, images = form.getlist("image_id"), files.getlist("image")
    assert len(ids) == len(images) and set(form) <= {"image_id"} and set(files) <= {"image"}
    return {"instances": [{"image_id": i, "image": base64.b64encode(f.read()).decode(), "content_type": f.mimetype}
                          for i, f in zip(ids, images)]}


class FakeService(BaseAdapter):
    """The service behind requests' transport API.  Each request takes the next answer of
    ``script`` (an exception to raise, ``(status, body)`` or ``(status, body, headers)``, or
    a function of (path, body) returning one), then ``then`` (default: the healthy service)."""

    def __init__(self, calls: list, script=(), then=None, max_request_images: int = 128):
        super().__init__()
        self.calls, self.script = calls, list(script)
        self.then = then or self.healthy
        self.max_request_images = max_request_images
        self.requests: list = []  # (method, path, body)
        self.closed = 0  # the client dropped its connections (requests' Session.close)

    def close(self) -> None:
        self.closed += 1

    def healthy(self, path: str, body):
        if path == "/v1/model":
            return 200, model_body(self.max_request_images)
        return 200, predict_body(body["instances"])

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        path = urlsplit(request.url).path
        body = parse_body(request)
        self.requests.append((request.method, path, body))
        if path == "/v1/predict":
            self.calls.append(("predict", len(body["instances"])))
        answer = self.script.pop(0) if self.script else self.then
        if callable(answer):
            answer = answer(path, body)
        if isinstance(answer, BaseException):
            raise answer
        status, payload, *headers = answer
        resp = requests.Response()
        resp.status_code, resp.url, resp.request, resp.encoding = status, request.url, request, "utf-8"
        resp.headers.update(headers[0] if headers else {})
        if isinstance(payload, (dict, list)):
            resp._content, resp.headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
        else:
            resp._content, resp.headers["Content-Type"] = payload, "text/html"
        return resp


def hang_guard(_consumer, poll_index):
    """Ends a consumer that would otherwise run forever (its stop condition never came)."""
    if poll_index >= 10_000:
        raise RuntimeError("the consumer is still running after 10000 polls")


@pytest.fixture
def run_consumer(monkeypatch, clock):
    def run(consumer, service, *, batch=8, stop_paused_polls=None, retry_max_s=1.0):
        producer = RecordingProducer(consumer.calls)
        monkeypatch.setattr(inference, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(inference, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        settings = InferenceClientSettings(inference_url=URL, predict_batch_images=batch, predict_batch_wait_ms=0,
                                           retry_initial_s=0.5, retry_max_s=retry_max_s)
        ic, loop = inference.make_loop(kafka_settings(), settings, stop)
        ic.client.session.mount(URL, service)
        consumer.hooks.append(stop_when_drained(stop) if stop_paused_polls is None
                              else stop_after_paused_polls(stop, stop_paused_polls))
        consumer.hooks.append(hang_guard)
        loop.run()
        return ic, producer
    return run


def published(producer, topic: str) -> list[dict]:
    return [json.loads(value) for t, value in producer.sent if t == topic]


def predict_sizes(consumer) -> list[int]:
    return [n for name, n in consumer.calls if name == "predict"]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------- 1. failure policy by cause

TOKEN = {"error": "missing or invalid bearer token"}
TRANSIENT = [  # (answer, cause counted, HTTP status named in the warning)
    pytest.param((401, TOKEN), "unauthorized", 401, id="401-token-rotation"),
    pytest.param((403, {"error": "forbidden"}), "forbidden", 403, id="403"),
    pytest.param((404, b"<html>404 Not Found</html>"), "not found", 404, id="404-proxy"),
    pytest.param((408, b"<html>408 Request Timeout</html>"), "request timeout", 408, id="408"),
    pytest.param((429, {"error": "slow down"}), "too many requests", 429, id="429"),
    pytest.param((500, {"error": "internal server error"}), "server error", 500, id="500"),
    pytest.param((502, b"<html>502 Bad Gateway</html>"), "server error", 502, id="502"),
    pytest.param((503, {"error": "model is loading"}), "server error", 503, id="503"),
    pytest.param((504, b"<html>504 Gateway Timeout</html>"), "server error", 504, id="504"),
    pytest.param(requests.ConnectionError("connection refused"), "connection", None, id="connection"),
    pytest.param(requests.ReadTimeout("read timed out"), "timeout", None, id="timeout"),
]


@pytest.mark.parametrize("answer, cause, status", TRANSIENT)
def test_a_transient_failure_keeps_the_batch_backs_off_and_never_dead_letters(
        clock, run_consumer, caplog, answer, cause, status):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]})
    service = FakeService(c.calls, [answer, answer])
    with caplog.at_level(logging.WARNING, logger="consumers.inference"):
        ic, producer = run_consumer(c, service)
    assert dead_letters(producer) == [], "a transient failure dead-lettered valid images"
    assert predict_sizes(c) == [3, 3, 3], "the same batch is sent again until the service answers"
    assert sorted(r["seq"] for r in published(producer, RESULTS)) == [0, 1, 2]
    names = c.names()
    assert c.commits == [{P0: oam(3)}] and names.index("commit") > max(
        i for i, n in enumerate(names) if n == "predict"), "committed before the batch was done"
    assert_liveness_polls_only([p for p in c.polls if p["paused"]])  # backoff keeps the membership
    assert ic.stats.retries_by_cause == {cause: 2}
    warned = [w for w in warnings_of(caplog) if cause in w and (status is None or f"HTTP {status}" in w)]
    assert len(warned) == 2, warnings_of(caplog)


def test_a_loading_service_is_asked_again_when_its_retry_after_says(clock, run_consumer, caplog):
    # Down first (no Retry-After: the backoff doubles), then loading with Retry-After: 1:
    # the consumer asks again after 1 s, not after its grown backoff.
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]})
    down = requests.ConnectionError("connection refused")
    loading = (503, {"error": "model is loading"}, {"Retry-After": "1"})
    service = FakeService(c.calls, [down, down, down, loading, loading])
    with caplog.at_level(logging.WARNING, logger="consumers.inference"):
        run_consumer(c, service, retry_max_s=10.0)
    delays = [float(w.rsplit(" in ", 1)[1].split()[0]) for w in warnings_of(caplog) if "retrying" in w]
    assert delays == [0.5, 1.0, 2.0, 1.0, 1.0], warnings_of(caplog)
    assert c.commits == [{P0: oam(3)}]
    # each 503 dropped the connection: the next try may reach another instance
    assert service.closed == 2


def test_a_401_that_lasts_dead_letters_nothing_and_commits_nothing(clock, run_consumer):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(5)]}, committed={P0: 2})
    service = FakeService(c.calls, then=(401, TOKEN))
    ic, producer = run_consumer(c, service, stop_paused_polls=3)
    assert producer.sent == [] and "commit" not in c.names()
    assert c.seeks == [(P0, 2)] and c.position(P0) == 2  # read again at the next start
    assert ic.stats.retries_by_cause["unauthorized"] >= 1


@pytest.mark.parametrize("status, refusal", [(400, {"error": "the fake service refuses this image"}),
                                             (413, {"error": "the fake service refuses this image"}),
                                             (413, b"<html>the fake service refuses this image</html>")],
                         ids=["400", "413", "413-proxy"])
def test_a_refused_request_is_split_until_the_refused_image_is_alone(clock, run_consumer, status, refusal):
    values = [image_value(i, pixel=30 + i) for i in range(8)]
    values[5] = image_value(5, pixel=POISON)
    c = FakeConsumer(clock, {P0: values})

    def refuse_poison(path, body):
        if any(pixel_of(inst["image"]) == POISON for inst in body["instances"]):
            return status, refusal
        return 200, predict_body(body["instances"])

    ic, producer = run_consumer(c, FakeService(c.calls, then=refuse_poison))
    # halves, depth first, until the refused image is alone: 0-3 | 4-7 > 4-5 > 4 | 5 ; 6-7
    assert predict_sizes(c) == [8, 4, 4, 2, 1, 1, 2]
    results = published(producer, RESULTS)
    assert {r["seq"]: r["prediction"] for r in results} == {i: label_of(30 + i) for i in range(8) if i != 5}
    dead = dead_letters(producer)
    assert [d.source_offset for d in dead] == [5]
    assert "the fake service refuses this image" in dead[0].reason and str(status) in dead[0].reason
    assert c.commits == [{P0: oam(8)}]
    assert ic.stats.retries_by_cause == {}  # a refusal is not retried as such


def test_a_400_that_is_not_the_services_answer_is_transient(clock, run_consumer, caplog):
    """The service answers every error as JSON {"error": ...}; a 400 without it (a proxy's
    page) says nothing about the images, so it must not dead-letter them."""
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]})
    service = FakeService(c.calls, [(400, b"<html><body>400 Bad Request</body></html>")])
    with caplog.at_level(logging.WARNING, logger="consumers.inference"):
        ic, producer = run_consumer(c, service)
    assert dead_letters(producer) == []
    assert predict_sizes(c) == [3, 3]
    assert sorted(r["seq"] for r in published(producer, RESULTS)) == [0, 1, 2]
    assert c.commits == [{P0: oam(3)}]
    assert sum(ic.stats.retries_by_cause.values()) == 1
    assert any("HTTP 400" in w for w in warnings_of(caplog))


INVALID_200 = [
    pytest.param((200, b"<html>not json</html>"), id="not-json"),
    pytest.param((200, {"model": "m", "predictions": "none"}), id="not-a-PredictResponse"),
    pytest.param(lambda path, body: (200, {**predict_body(body["instances"]),
                                           "predictions": predict_body(body["instances"])["predictions"][:-1]}),
                 id="one-prediction-short"),
    pytest.param(lambda path, body: (200, {**predict_body(body["instances"]),
                                           "predictions": predict_body(body["instances"])["predictions"][::-1]}),
                 id="out-of-order"),
]


@pytest.mark.parametrize("answer", INVALID_200)
def test_a_200_with_an_invalid_body_is_retried_not_a_crash(clock, run_consumer, caplog, answer):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]})
    with caplog.at_level(logging.WARNING, logger="consumers.inference"):
        ic, producer = run_consumer(c, FakeService(c.calls, [answer]))
    assert dead_letters(producer) == []
    assert predict_sizes(c) == [3, 3]
    assert {r["seq"]: r["prediction"] for r in published(producer, RESULTS)} == {i: label_of(i) for i in range(3)}
    assert c.commits == [{P0: oam(3)}]
    assert ic.stats.retries_by_cause == {"invalid response": 1}
    assert any("invalid response" in w and "HTTP 200" in w for w in warnings_of(caplog))


def test_a_per_image_error_dead_letters_that_image_only(clock, run_consumer):
    c = FakeConsumer(clock, {P0: [image_value(0), image_value(1, pixel=CORRUPT), image_value(2)]})
    ic, producer = run_consumer(c, FakeService(c.calls))
    assert predict_sizes(c) == [3]
    dead = dead_letters(producer)
    assert [d.source_offset for d in dead] == [1] and "corrupt PNG data" in dead[0].reason
    assert sorted(r["seq"] for r in published(producer, RESULTS)) == [0, 2]
    assert c.commits == [{P0: oam(3)}]


# ---------------------------------------------------------------- 2. paired by position

def test_predictions_are_paired_by_position_not_by_image_id(clock, run_consumer):
    """Two records with one image_id in a batch: each gets the answer to its own image."""
    twin = str(uuid.uuid4())
    c = FakeConsumer(clock, {P0: [image_value(0, pixel=20), image_value(1, pixel=21, image_id=twin),
                                  image_value(2, pixel=CORRUPT, image_id=twin), image_value(3, pixel=23)]})
    ic, producer = run_consumer(c, FakeService(c.calls))
    results = {r["seq"]: (r["image_id"], r["prediction"]) for r in published(producer, RESULTS)}
    assert {seq: label for seq, (_id, label) in results.items()} == {0: label_of(20), 1: label_of(21),
                                                                      3: label_of(23)}
    assert results[1][0] == twin
    dead = dead_letters(producer)
    assert [d.source_offset for d in dead] == [2], "the valid twin was dead-lettered (or the bad one was not)"
    assert c.commits == [{P0: oam(4)}]


# ---------------------------------------------------------------- 3. the service's limit, at start

class Started(Exception):
    """main() got past its checks and began consuming."""


@pytest.fixture
def start_main(monkeypatch):
    """consumers.inference.main() against ``service``; 'consuming' once it makes its consumer."""
    def start(service, argv):
        real_session = requests.Session

        def session():
            s = real_session()
            s.mount(URL, service)
            return s

        def started(*_a, **_k):
            raise Started

        monkeypatch.setattr(requests, "Session", session)
        monkeypatch.setattr(inference, "setup_logging", lambda *a, **k: None)
        monkeypatch.setattr(inference, "stop_event", threading.Event)
        monkeypatch.setattr(inference, "make_consumer", started)
        for name in ("PREDICT_BATCH_IMAGES", "INFERENCE_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("RETRY_INITIAL_S", "0.001")
        monkeypatch.setenv("RETRY_MAX_S", "0.001")
        try:
            return inference.main(["--inference-url", URL, *argv])
        except Started:
            return "consuming"
    return start


def test_the_consumer_refuses_to_start_with_batches_above_the_service_limit(start_main, caplog):
    service = FakeService([], max_request_images=128)
    with caplog.at_level(logging.ERROR, logger="consumers.inference"):
        outcome = start_main(service, ["--batch-size", "200"])
    assert outcome != "consuming", "started with PREDICT_BATCH_IMAGES above the service's MAX_REQUEST_IMAGES"
    assert outcome == 2
    assert [path for _m, path, _b in service.requests] == ["/v1/model"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("PREDICT_BATCH_IMAGES=200" in e and "MAX_REQUEST_IMAGES" in e and "128" in e for e in errors), errors


def test_the_consumer_waits_for_the_service_then_starts_within_its_limit(start_main, caplog):
    service = FakeService([], [requests.ConnectionError("connection refused"), (503, {"error": "model is loading"}),
                               (401, TOKEN)], max_request_images=128)
    with caplog.at_level(logging.WARNING, logger="consumers.inference"):
        outcome = start_main(service, ["--batch-size", "128"])
    assert outcome == "consuming"
    assert [path for _m, path, _b in service.requests] == ["/v1/model"] * 4
    warned = warnings_of(caplog)
    assert any("connection" in w for w in warned) and any("HTTP 503" in w for w in warned) \
        and any("HTTP 401" in w for w in warned), warned


def test_a_503_makes_the_next_try_open_a_new_connection():
    """Through a real HTTP/1.1 server on loopback: after a 200 the client keeps its
    connection; after a 503 it opens a new one, which another instance listening on the
    same address (a handover's old service, a load balancer's other backend) may answer."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = [503, 200, 200, 503, 200]
    peers: list[int] = []  # the client's port of each request: one per connection

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            peers.append(self.client_address[1])
            status = answers[len(peers) - 1]
            body = json.dumps(model_body(64) if status == 200 else {"error": "model is loading"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = inference.InferenceClient(InferenceClientSettings(inference_url=url))
    try:
        for status in answers:
            if status == 503:
                with pytest.raises(predict_client.ServiceUnavailable) as exc:
                    client.model_info(url)
                assert exc.value.status == 503 and exc.value.retry_after_s == 1
            else:
                assert client.model_info(url)["max_request_images"] == 64
    finally:
        client.session.close()
        server.shutdown()
        server.server_close()
    # 503 | 200 200 (one connection kept) 503 | 200 (a new one)
    assert peers[1] != peers[0] and peers[2] == peers[1] and peers[3] == peers[2] and peers[4] != peers[3], peers


# ---------------------------------------------------------------- predict_files (multipart)

def png_of(pixel: int) -> bytes:
    return encode_png(np.full((32, 32, 3), pixel, dtype=np.uint8))


def files_client(service) -> inference.InferenceClient:
    client = inference.InferenceClient(InferenceClientSettings(inference_url=URL))
    client.session.mount(URL, service)
    return client


def test_predict_files_sends_one_multipart_request_answered_in_order():
    calls: list = []
    service = FakeService(calls)
    items = [(f"id-{k}", png_of(k), "image/png") for k in (3, 1, 2)] + [("j", png_of(4), "image/jpeg")]
    body = files_client(service).predict_files(items)
    assert calls == [("predict", 4)]
    method, path, sent = service.requests[0]
    assert (method, path) == ("POST", "/v1/predict")
    assert [(i["image_id"], pixel_of(i["image"]), i["content_type"]) for i in sent["instances"]] == \
        [("id-3", 3, "image/png"), ("id-1", 1, "image/png"), ("id-2", 2, "image/png"), ("j", 4, "image/jpeg")]
    assert [p["label"] for p in body["predictions"]] == [label_of(k) for k in (3, 1, 2, 4)]


@pytest.mark.parametrize("answer, error, fragment", [
    ((400, {"error": "2 'image_id' parts and 1 'image' file parts"}), inference.BatchRejected, "'image_id' parts"),
    ((413, {"error": "too large"}), inference.BatchRejected, "too large"),
    ((413, b"<html>413</html>"), inference.BatchRejected, "413"),
    ((400, b"<html>400 Bad Request</html>"), inference.ServiceUnavailable, "400 not from the service"),
    ((415, {"error": "unsupported content type"}), inference.ServiceUnavailable, "unexpected status"),
    ((503, {"error": "model is loading"}), inference.ServiceUnavailable, "server error"),
    (requests.ConnectionError("refused"), inference.ServiceUnavailable, "connection"),
    *[pytest.param(a.values[0], inference.ServiceUnavailable, "invalid response", id=a.id) for a in INVALID_200],
])
def test_predict_files_handles_errors_as_predict_does(answer, error, fragment):
    items = [(f"id-{k}", png_of(k), "image/png") for k in range(3)]
    for method in ("predict_files", "predict"):
        client = files_client(FakeService([], [answer]))
        with pytest.raises(error, match=fragment):
            if method == "predict_files":
                client.predict_files(items)
            else:
                client.predict([{"image_id": i, "image": base64.b64encode(d).decode()} for i, d, _ in items])


def test_encode_multipart_boundary_and_arguments(monkeypatch):
    data = b"\x89PNG...0123456789abcdef0123456789abcdef..."
    tokens = iter(["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"])
    monkeypatch.setattr(predict_client.secrets, "token_hex", lambda n: next(tokens))
    body, content_type = inference.encode_multipart([("a", data, "image/png")])
    assert content_type == "multipart/form-data; boundary=fedcba9876543210fedcba9876543210"  # the 1st was in the data
    assert body.endswith(b"--fedcba9876543210fedcba9876543210--\r\n") and data in body
    with pytest.raises(ValueError, match="image/png or image/jpeg"):
        inference.encode_multipart([("a", data, "image/gif")])
    with pytest.raises(ValueError):
        inference.encode_multipart([("\ud800", data, "image/png")])
