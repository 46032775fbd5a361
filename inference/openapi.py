"""OpenAPI 3 description of the inference service (served at /openapi.json)."""

from __future__ import annotations

from common.labels import CIFAR10_CLASSES


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


_ERRORS = {
    "400": _json("Error", "Malformed request (not JSON, no/empty/oversized 'instances', non-object instance)"),
    "401": _json("Error", "INFERENCE_TOKEN is set and the bearer token is missing or wrong"),
    "413": _json("Error", "Body larger than MAX_REQUEST_BYTES"),
    "503": _json("Error", "Model still loading (or failed), queue full, or inference timed out; retry"),
}


def openapi_document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "IoT image inference service",
            "version": "1.0.0",
            "description": "ResNet50 classification of 32x32 RGB PNG images into the CIFAR-10 classes, "
                           "with server-side dynamic batching.",
        },
        "paths": {
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Liveness: the worker answers",
                "responses": {"200": _json("Health", "Alive")},
            }},
            "/readyz": {"get": {
                "operationId": "readyz", "summary": "Readiness: model loaded and warmed up",
                "responses": {"200": _json("Ready", "Ready to serve"),
                              "503": _json("NotReady", "Loading (or failed)")},
            }},
            "/v1/model": {"get": {
                "operationId": "getModel", "summary": "The loaded model",
                "security": [{}, {"bearerAuth": []}],
                "responses": {"200": _json("ModelInfo", "Model description"),
                              "401": _ERRORS["401"], "503": _ERRORS["503"]},
            }},
            "/v1/predict": {"post": {
                "operationId": "predict", "summary": "Classify a batch of images",
                "security": [{}, {"bearerAuth": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": {"200": _json("PredictResponse",
                                           "One entry per instance, in order; bad images get an 'error'"),
                              **_ERRORS},
            }},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "Health": {"type": "object", "required": ["status"],
                           "properties": {"status": {"type": "string", "enum": ["ok"]}}},
                "Ready": {"type": "object", "required": ["status", "model"],
                          "properties": {"status": {"type": "string", "enum": ["ready"]},
                                         "model": {"type": "string"}}},
                "NotReady": {"type": "object", "required": ["status"],
                             "properties": {"status": {"type": "string", "enum": ["loading", "failed"]},
                                            "error": {"type": "string"}}},
                "ModelInfo": {
                    "type": "object",
                    "required": ["id", "weights_source", "input_size", "classes", "untrained", "max_batch"],
                    "properties": {
                        "id": {"type": "string", "example": "resnet50-imagenet-224"},
                        "weights_source": {"type": "string"},
                        "input_size": {"type": "integer", "minimum": 1},
                        "classes": {"type": "array", "items": {"type": "string"}},
                        "untrained": {"type": "boolean",
                                      "description": "random weights: labels are meaningless"},
                        "max_batch": {"type": "integer", "minimum": 1},
                        "dynamic_batch_max": {"type": "integer", "minimum": 1},
                        "dynamic_batch_delay_ms": {"type": "number", "minimum": 0},
                    },
                },
                "Instance": {
                    "type": "object", "required": ["image_id", "image"],
                    "properties": {
                        "image_id": {"type": "string", "minLength": 1},
                        "image": {"type": "string", "format": "byte",
                                  "description": "base64 of a 32x32 8-bit RGB PNG"},
                    },
                },
                "PredictRequest": {
                    "type": "object", "required": ["instances"],
                    "properties": {"instances": {"type": "array", "minItems": 1,
                                                 "items": {"$ref": "#/components/schemas/Instance"}}},
                },
                "Prediction": {
                    "type": "object",
                    "required": ["image_id", "label", "confidence", "received_at", "inferred_at",
                                 "inference_ms"],
                    "properties": {
                        "image_id": {"type": "string"},
                        "label": {"type": "string", "enum": list(CIFAR10_CLASSES)},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "received_at": {"type": "number", "description": "unix time the request arrived"},
                        "inferred_at": {"type": "number", "description": "unix time the model output was ready"},
                        "inference_ms": {"type": "number", "minimum": 0,
                                         "description": "duration of the model call that classified it"},
                    },
                },
                "InstanceError": {
                    "type": "object", "required": ["image_id", "error"],
                    "properties": {"image_id": {"type": "string", "nullable": True},
                                   "error": {"type": "string"}},
                },
                "PredictResponse": {
                    "type": "object", "required": ["model", "predictions", "batch_size", "timing"],
                    "properties": {
                        "model": {"type": "string"},
                        "predictions": {"type": "array", "items": {"oneOf": [
                            {"$ref": "#/components/schemas/Prediction"},
                            {"$ref": "#/components/schemas/InstanceError"}]}},
                        "batch_size": {"type": "integer", "minimum": 1},
                        "timing": {
                            "type": "object", "required": ["decode_ms", "inference_ms", "total_ms"],
                            "properties": {"decode_ms": {"type": "number", "minimum": 0},
                                           "inference_ms": {"type": "number", "minimum": 0},
                                           "total_ms": {"type": "number", "minimum": 0}},
                        },
                    },
                },
            },
        },
    }
