"""The wire contract: valid messages parse, every kind of bad input names its reason."""

import base64
import json
import uuid

import numpy as np
import pytest

from common.models import ImageMessage, ResultMessage, validate
from common.schema import (InvalidMessage, check_png_header, dumps, encode_png, make_image_message,
                           make_result_message, parse_image_message, parse_result_message)
from tests.hostile import with_raw_field


def png(shape=(32, 32, 3)):
    from PIL import Image
    import io

    arr = np.zeros(shape, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_msg(**overrides):
    msg = make_image_message(image=encode_png(np.full((32, 32, 3), 7, np.uint8)), device_id="cam1",
                             producer_id="p1", seq=3, label="cat", dataset="cifar10")
    msg["sent_at"] = 1.5
    msg.update(overrides)
    return msg


def reason_of(raw, **kw):
    with pytest.raises(InvalidMessage) as exc:
        parse_image_message(raw, **kw)
    return exc.value.reason


def test_valid_image_message_round_trips():
    msg = image_msg()
    parsed, raw_png = parse_image_message(dumps(msg))
    assert parsed == msg
    assert raw_png.startswith(b"\x89PNG")
    assert set(msg) == {"schema", "image_id", "device_id", "producer_id", "seq", "sent_at",
                        "label", "dataset", "format", "image"}


@pytest.mark.parametrize("raw, expected", [
    (b"\xff\xfe not json", "invalid JSON"),
    (b"{truncated", "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"null", "not a JSON object"),
])
def test_undecodable_payloads(raw, expected):
    assert expected in reason_of(raw)


def test_none_value_and_oversize():
    assert "null value" in reason_of(None)
    assert "over the 100-byte limit" in reason_of(dumps(image_msg()), max_bytes=100)


@pytest.mark.parametrize("overrides, expected", [
    ({"schema": 2}, "unknown schema version 2"),
    ({"schema": "1"}, "unknown schema version '1'"),
    ({"seq": "3"}, "field 'seq' has the wrong type"),
    ({"seq": True}, "field 'seq' has the wrong type"),
    ({"sent_at": None}, "field 'sent_at' has the wrong type"),
    ({"image_id": "not-a-uuid"}, "not a UUID"),
    ({"format": "jpeg"}, "unsupported image format"),
    ({"image": "!!!not base64!!!"}, "not valid base64"),
    ({"image": ""}, "non-empty base64"),
    ({"image": base64.b64encode(b"GIF89a....").decode()}, "not a PNG"),
    ({"image": base64.b64encode(png((64, 64, 3))).decode()}, "64x64, expected 32x32"),
    ({"image": base64.b64encode(png((32, 32))).decode()}, "not 8-bit RGB"),
    ({"image": base64.b64encode(png((32, 32, 4))).decode()}, "not 8-bit RGB"),
])
def test_bad_fields_have_reasons(overrides, expected):
    assert expected in reason_of(dumps(image_msg(**overrides)))


def test_missing_field():
    msg = image_msg()
    del msg["device_id"]
    assert reason_of(dumps(msg)) == "missing field 'device_id'"


def test_null_label_allowed():
    parsed, _ = parse_image_message(dumps(image_msg(label=None)))
    assert parsed["label"] is None


def test_png_header_check_without_decoding():
    check_png_header(png())
    with pytest.raises(InvalidMessage):
        check_png_header(png()[:20])


def test_result_message():
    msg = image_msg()
    result = make_result_message(msg, prediction="dog", confidence=0.25, model="m",
                                 received_at=2.0, inferred_at=2.5)
    result["published_at"] = 2.6
    assert parse_result_message(dumps(result)).prediction == "dog"
    bad = dict(result, confidence="high")
    with pytest.raises(InvalidMessage, match="confidence"):
        parse_result_message(dumps(bad))
    uuid.UUID(msg["image_id"])


# ------------------------------------------------------------ the typed models' rejections

TEXT_FIELDS = ("device_id", "producer_id", "label", "dataset", "image_id", "format")


def result_msg(**overrides):
    result = make_result_message(image_msg(), prediction="dog", confidence=0.25, model="m",
                                 received_at=2.0, inferred_at=2.5)
    result["published_at"] = 2.6
    result.update(overrides)
    return result


def result_reason(raw):
    with pytest.raises(InvalidMessage) as exc:
        parse_result_message(raw)
    return exc.value.reason


def test_the_model_is_the_contract():
    from common.wire import IMAGE, IMAGE_META_FIELDS, RESULT_MESSAGE_FIELDS

    assert ImageMessage.wire_fields() == ("schema", "image_id", "device_id", "producer_id", "seq",
                                          "sent_at", "label", "dataset", "format", "image")
    assert ImageMessage.wire_fields() == IMAGE_META_FIELDS + (IMAGE,)
    assert ResultMessage.wire_fields() == RESULT_MESSAGE_FIELDS
    result = result_msg()
    assert tuple(result) == ResultMessage.wire_fields()
    assert parse_result_message(dumps(result)).wire() == result


@pytest.mark.parametrize("name", TEXT_FIELDS)
@pytest.mark.parametrize("text", [b'"\\ud800"', b'"cam\\udfff"', b'"\\udc00\\ud800"', b'"a\\ud83d"'])
def test_lone_surrogate_in_a_text_field_is_named(name, text):
    """JSON: jiter refuses it; the reason still names the field."""
    reason = reason_of(with_raw_field(image_msg(), name, text))
    assert reason.startswith(f"field '{name}' is not valid Unicode text (lone surrogate"), reason


def test_a_valid_surrogate_pair_is_text():
    parsed, _ = parse_image_message(with_raw_field(image_msg(), "device_id", b'"cam\\ud83d\\ude00"'))
    assert parsed["device_id"] == "cam\U0001F600"


@pytest.mark.parametrize("name", ["device_id", "producer_id", "label", "dataset"])
def test_lone_surrogate_refused_when_building_messages(name):
    """Python side (no JSON parser in the way): the models refuse it too, so a producer
    cannot send a message whose key or BSON encoding would crash later."""
    kwargs = dict(image=encode_png(np.zeros((32, 32, 3), np.uint8)), device_id="cam1", producer_id="p1",
                  seq=1, label="cat", dataset="cifar10")
    with pytest.raises(InvalidMessage, match=f"field '{name}' is not valid Unicode"):
        make_image_message(**{**kwargs, name: "x\ud800"})
    with pytest.raises(InvalidMessage, match=f"field '{name}' is not valid Unicode"):
        validate(ImageMessage, {**image_msg(), name: "\udfff"})


@pytest.mark.parametrize("name", ["device_id", "producer_id", "label", "prediction", "model"])
def test_lone_surrogate_in_a_result(name):
    reason = result_reason(with_raw_field(result_msg(), name, b'"\\ud800"'))
    assert f"field '{name}' is not valid Unicode" in reason
    with pytest.raises(InvalidMessage, match=f"field '{name}' is not valid Unicode"):
        validate(ResultMessage, {**result_msg(), name: "\ud800"})


@pytest.mark.parametrize("value, ok", [
    (2**63 - 1, True), (-2**63, True), (2**63, False), (-2**63 - 1, False), (10**30, False),
])
def test_int64_edges(value, ok):
    for name in ("seq", "sent_at"):
        raw = dumps(image_msg(**{name: value}))
        if ok:
            assert parse_image_message(raw)[0][name] == (value if name == "seq" else float(value))
        else:
            assert reason_of(raw) == f"field '{name}' is outside the signed 64-bit integer range"
    for name in ("seq", "sent_at", "confidence", "received_at", "inferred_at", "published_at"):
        raw = dumps(result_msg(**{name: value}))
        if ok:
            parse_result_message(raw)
        else:
            assert result_reason(raw) == f"field '{name}' is outside the signed 64-bit integer range"


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999",
                                  b"1" + b"0" * 400 + b".5"])
def test_non_finite_numbers(text):
    reason = reason_of(with_raw_field(image_msg(), "sent_at", text))
    assert reason.startswith("field 'sent_at' is not a finite number") or reason.startswith("invalid JSON")
    for name in ("confidence", "sent_at", "received_at", "inferred_at", "published_at"):
        reason = result_reason(with_raw_field(result_msg(), name, text))
        assert reason.startswith(f"field '{name}' is not a finite number") or \
            reason.startswith("invalid JSON"), reason
    with pytest.raises(InvalidMessage, match="field 'confidence' is not a finite number"):
        make_result_message(image_msg(), prediction="cat", confidence=float("nan"), model="m",
                            received_at=1.0, inferred_at=1.0)


@pytest.mark.parametrize("raw", [
    b"[" * 50_000,
    b"{" * 50_000,
    b'{"a":' * 10_000,
    b'{"schema": 1, "device_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    b'{"schema": 1, "extra": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    b'{"device_id": "\\ud800", "x": ' + b"[" * 50_000,  # the surrogate fallback parser meets it too
])
def test_deep_nesting_is_invalid_json_not_recursion_error(raw):
    assert reason_of(raw).startswith("invalid JSON"), reason_of(raw)
    assert result_reason(raw).startswith("invalid JSON")


@pytest.mark.parametrize("name", ["seq", "sent_at"])
def test_bool_is_not_a_number(name):
    assert reason_of(dumps(image_msg(**{name: True}))) == f"field '{name}' has the wrong type (bool)"
    assert result_reason(dumps(result_msg(**{name: False}))) == f"field '{name}' has the wrong type (bool)"
    with pytest.raises(InvalidMessage, match=f"field '{name}' has the wrong type"):
        validate(ImageMessage, {**image_msg(), name: True})


@pytest.mark.parametrize("name, value", [("seq", "3"), ("seq", 3.0), ("seq", 1e2), ("sent_at", "1.5"),
                                         ("sent_at", [1.5]), ("sent_at", {"t": 1})])
def test_string_or_float_is_not_an_integer_or_number(name, value):
    assert reason_of(dumps(image_msg(**{name: value}))) == \
        f"field '{name}' has the wrong type ({type(value).__name__})"


def test_result_wrong_types():
    assert result_reason(dumps(result_msg(confidence="0.5"))) == "field 'confidence' has the wrong type (str)"
    assert result_reason(dumps(result_msg(confidence=True))) == "field 'confidence' has the wrong type (bool)"
    assert result_reason(dumps(result_msg(prediction=3))) == "field 'prediction' has the wrong type (int)"
    assert "unknown schema version True" in result_reason(dumps(result_msg(schema=True)))


def test_integer_timestamps_are_numbers():
    parsed, _ = parse_image_message(dumps(image_msg(sent_at=1700000000)))
    assert parsed["sent_at"] == 1700000000 and isinstance(parsed["sent_at"], float)


def test_the_earliest_problem_class_is_reported():
    """Schema version, then missing/mistyped fields, then bad values, then the image."""
    msg = image_msg(schema=2, seq="x", image_id="bad")
    assert reason_of(dumps(msg)) == "unknown schema version 2 (expected 1)"
    assert reason_of(dumps(image_msg(image_id="bad", label=7))) == "field 'label' has the wrong type (int)"
    assert reason_of(dumps(image_msg(image_id="bad", image="%%%"))) == "field 'image_id' is not a UUID"


def test_make_image_message_refuses_what_consumers_would_refuse():
    with pytest.raises(InvalidMessage, match="field 'producer_id' is longer than 256"):
        make_image_message(image=encode_png(np.zeros((32, 32, 3), np.uint8)), device_id="c",
                           producer_id="p" * 257, seq=1, label=None, dataset="d")
    with pytest.raises(InvalidMessage, match="not a PNG"):
        make_image_message(image=b"GIF89a" + bytes(40), device_id="c", producer_id="p", seq=1,
                           label=None, dataset="d")
    with pytest.raises(InvalidMessage, match="field 'seq' has the wrong type"):
        make_image_message(image=encode_png(np.zeros((32, 32, 3), np.uint8)), device_id="c",
                           producer_id="p", seq=True, label=None, dataset="d")


# ------------------------------------------------------------ the OpenAPI document

def _served(max_batch=None):
    from common.settings import ServiceSettings
    from inference import create_app
    from inference.serving import ModelHost

    config = {"TESTING": True, "MODEL_HOST": ModelHost(ServiceSettings(model_weights="random"))}  # never started
    if max_batch:
        config["MAX_REQUEST_IMAGES"] = max_batch
    r = create_app(config).test_client().get("/openapi.json")
    assert r.status_code == 200
    return r.json


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_served_openapi_is_generated_from_the_models():
    from inference.openapi import REF_TEMPLATE, http_models, openapi_document, to_openapi30

    doc = _served()
    assert doc == json.loads(json.dumps(openapi_document()))
    schemas = doc["components"]["schemas"]
    # every HTTP model is a component, exactly its model_json_schema() (in OpenAPI 3.0 spelling)
    for model, mode in http_models():
        generated = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        generated.pop("$defs", None)
        assert schemas[model.__name__] == json.loads(json.dumps(to_openapi30(generated)))
    # the operations refer to the models, and every reference resolves
    predict = doc["paths"]["/v1/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/PredictRequest"}
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/PredictResponse"}
    refs = set(_refs(doc))
    assert {"#/components/schemas/Instance", "#/components/schemas/Prediction",
            "#/components/schemas/InstanceError", "#/components/schemas/ModelInfo",
            "#/components/schemas/Error"} <= refs
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(schemas)
    # the limits the service enforces are in the document
    instances = schemas["PredictRequest"]["properties"]["instances"]
    assert (instances["minItems"], instances["maxItems"]) == (1, 128)
    assert instances["items"] == {"$ref": "#/components/schemas/Instance"}
    assert schemas["Instance"]["properties"]["image_id"]["minLength"] == 1
    assert schemas["Instance"]["properties"]["image"]["format"] == "byte"
    assert schemas["InstanceError"]["properties"]["image_id"]["nullable"] is True
    assert schemas["ModelInfo"]["properties"]["id"]["example"] == "resnet50-imagenet-224"
    assert "error" not in schemas["NotReady"]["required"]
    # what the hand-written document had: paths, status codes, security
    assert {p: sorted(ops[next(iter(ops))]["responses"]) for p, ops in doc["paths"].items()} == {
        "/healthz": ["200"], "/readyz": ["200", "503"], "/v1/model": ["200", "401", "503"],
        "/v1/predict": ["200", "400", "401", "413", "415", "503"]}
    assert doc["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    assert predict["security"] == [{}, {"bearerAuth": []}]
    assert doc["openapi"] == "3.0.3"
    text = json.dumps(schemas)
    assert '"null"' not in text and '"const"' not in text and '"title"' not in text  # OpenAPI 3.0


def test_served_openapi_states_the_services_batch_limit():
    from inference.openapi import openapi_document

    doc = _served(max_batch=4)
    assert doc["components"]["schemas"]["PredictRequest"]["properties"]["instances"]["maxItems"] == 4
    assert doc == json.loads(json.dumps(openapi_document(4)))
