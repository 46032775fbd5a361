"""OpenAPI 3 description of the inference service (served at /openapi.json).

Generated from the pydantic models of :mod:`common.http_models` that the service validates
requests with and builds its responses from: ``components/schemas`` holds one schema
per model (``model_json_schema``), the operations refer to them.  The ``/v1/predict``
request's limits are the service's MAX_REQUEST_IMAGES and MAX_IMAGE_BYTES, so the document
is built per service (``openapi_document(settings.max_request_images,
settings.max_image_bytes)``).  Its multipart/form-data request has no pydantic model
(Werkzeug or inference/request_body.py parses it): :func:`multipart_request` writes its
schema.

pydantic writes JSON Schema 2020-12; :func:`to_openapi30` turns the few constructs
OpenAPI 3.0 spells differently (``null`` in a union -> ``nullable``, ``const`` ->
``enum``) and drops the generated titles.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common.http_models import Error, Health, ModelInfo, NotReady, PredictResponse, Ready, predict_request_model
from common.wire import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_REQUEST_IMAGES

REF_TEMPLATE = "#/components/schemas/{model}"


def http_models(max_batch: int = DEFAULT_MAX_REQUEST_IMAGES,
                max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> list[tuple[type[BaseModel], str]]:
    """The models of the HTTP bodies, each with the JSON Schema mode it is used in
    (requests are validated, responses serialized)."""
    return [(predict_request_model(max_batch, max_image_bytes), "validation"), (PredictResponse, "serialization"),
            (ModelInfo, "serialization"), (Health, "serialization"), (Ready, "serialization"),
            (NotReady, "serialization"), (Error, "serialization")]


def to_openapi30(schema: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema as an OpenAPI 3.0 schema object."""
    if isinstance(schema, list):
        return [to_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: to_openapi30(sub) for name, sub in value.items()}
        elif key == "const":
            out["enum"] = [value]
        elif key == "anyOf" and {"type": "null"} in value:
            rest = [s for s in value if s != {"type": "null"}]
            if len(rest) == 1:
                out.update(to_openapi30(rest[0]))
            else:
                out["anyOf"] = to_openapi30(rest)
            out["nullable"] = True
        elif isinstance(value, (dict, list)):
            out[key] = to_openapi30(value)
        else:
            out[key] = value
    return out


def component_schemas(max_batch: int = DEFAULT_MAX_REQUEST_IMAGES,
                      max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> dict[str, dict]:
    """``components/schemas``: every HTTP model and the models they refer to, by class name."""
    _, top = models_json_schema(http_models(max_batch, max_image_bytes), ref_template=REF_TEMPLATE)
    return {name: to_openapi30(schema) for name, schema in sorted(top["$defs"].items())}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


_ERRORS = {
    "400": _json(Error, "Malformed request (not JSON, no/empty/oversized 'instances', non-object instance; "
                        "multipart: no parts, or not as many 'image_id' parts as 'image' file parts, or "
                        "more than MAX_REQUEST_IMAGES)"),
    "401": _json(Error, "INFERENCE_TOKEN is set and the bearer token is missing or wrong"),
    "413": _json(Error, "Body larger than MAX_REQUEST_BYTES (multipart: also too many parts, or an "
                        "'image_id' part over 500 kB)"),
    "415": _json(Error, "Content type neither application/json nor multipart/form-data"),
    "503": _json(Error, "Model still loading (or failed), queue full, or inference timed out; retry"),
}


def multipart_request(max_batch: int = DEFAULT_MAX_REQUEST_IMAGES,
                      max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> dict:
    """The multipart/form-data request of /v1/predict (no pydantic model: Werkzeug parses it)."""
    schema = {
        "type": "object",
        "description": "Per image, in order: an 'image_id' text part, then an 'image' file part "
                       "(a filename in its Content-Disposition; content type image/png or image/jpeg; "
                       f"the file's bytes, at most {max_image_bytes} (MAX_IMAGE_BYTES)).  As many "
                       "'image_id' parts as 'image' parts: predictions[i] answers the i-th pair.",
        "properties": {
            "image_id": {"type": "array", "minItems": 1, "maxItems": max_batch,
                         "items": {"type": "string", "minLength": 1}},
            "image": {"type": "array", "minItems": 1, "maxItems": max_batch,
                      "items": {"type": "string", "format": "binary"}},
        },
        "required": ["image_id", "image"],
    }
    return {"schema": schema, "encoding": {"image": {"contentType": "image/png, image/jpeg"}}}


def openapi_document(max_batch: int = DEFAULT_MAX_REQUEST_IMAGES,
                     max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> dict:
    """The document of a service whose MAX_REQUEST_IMAGES is ``max_batch`` (MAX_IMAGE_BYTES
    ``max_image_bytes``)."""
    request = predict_request_model(max_batch, max_image_bytes)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "IoT image inference service",
            "version": "1.0.0",
            "description": "ResNet50 classification of PNG and JPEG images (resized to the model's "
                           "input size) into the CIFAR-10 classes, with server-side dynamic batching.",
        },
        "paths": {
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Liveness: the worker answers",
                "responses": {"200": _json(Health, "Alive")},
            }},
            "/readyz": {"get": {
                "operationId": "readyz", "summary": "Readiness: model loaded and warmed up",
                "responses": {"200": _json(Ready, "Ready to serve"),
                              "503": _json(NotReady, "Loading (or failed)")},
            }},
            "/v1/model": {"get": {
                "operationId": "getModel", "summary": "The loaded model",
                "security": [{}, {"bearerAuth": []}],
                "responses": {"200": _json(ModelInfo, "Model description"),
                              "401": _ERRORS["401"], "503": _ERRORS["503"]},
            }},
            "/v1/predict": {"post": {
                "operationId": "predict", "summary": "Classify a batch of images",
                "security": [{}, {"bearerAuth": []}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(request)},
                    "multipart/form-data": multipart_request(max_batch, max_image_bytes)}},
                "responses": {"200": _json(PredictResponse,
                                           "One entry per instance, in order; bad images get an 'error'"),
                              **_ERRORS},
            }},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": component_schemas(max_batch, max_image_bytes),
        },
    }
