"""The inference service's HTTP bodies as typed models: the ``/v1/predict`` request (its
limits included) and every response.  ``inference.openapi`` generates the served OpenAPI
document from these models, so the document cannot drift from what the service accepts."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainValidator, PrivateAttr, Strict, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from common.labels import CIFAR10_CLASSES, CIFAR100_CLASSES
from common.models import _valid_unicode, _Wire, decode_image_b64
from common.wire import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_REQUEST_IMAGES, b64_chars


# ---------------------------------------------------------------- HTTP: /v1/predict request

class _HttpInstance(_Wire):
    """One image to classify (JSON style): base64 decoded once every field is valid; the
    image itself (PNG or JPEG, its size) is judged by the service's decoder."""

    _data: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _decode_b64(self):
        self._data = decode_image_b64(self.image)  # type: ignore[attr-defined]
        return self

    @property
    def data(self) -> bytes:
        return self._data


@functools.lru_cache(maxsize=None)
def instance_model(max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> type[_HttpInstance]:
    """The JSON instance of a service whose MAX_IMAGE_BYTES is ``max_image_bytes``: the base64
    text is refused by its length (``b64_chars``) before anything is decoded."""
    image = Annotated[str, Strict(), Field(
        min_length=1, max_length=b64_chars(max_image_bytes), json_schema_extra={"format": "byte"},
        description=f"base64 of a PNG or JPEG image (RGB, greyscale, palette or RGBA; at most "
                    f"{max_image_bytes} bytes, MAX_IMAGE_BYTES, and MAX_IMAGE_PIXELS pixels), "
                    f"resized by the service to the model's input size")]
    model = create_model(
        "Instance", __base__=_HttpInstance, __doc__="One image to classify.",
        image_id=(Annotated[str, Strict(), Field(min_length=1), AfterValidator(_valid_unicode)], ...),
        image=(image, ...))
    model._reasons = {
        **{("image_id", t): "field 'image_id' must be a non-empty string"
           for t in ("missing", "string_type", "string_too_short")},
        **{("image", t): "field 'image' must be a non-empty base64 string"
           for t in ("missing", "string_type", "string_too_short")},
    }
    return model


Instance = instance_model()


def _json_object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "Input should be an object")
    return value


# An instance must be a JSON object for the request to be well formed; its fields are
# validated one instance at a time (a bad image gets an error entry, not a 400), so the
# request keeps the object as is and documents it as an Instance.
@functools.lru_cache(maxsize=None)
def _instance_object(max_image_bytes: int):
    return Annotated[dict, PlainValidator(_json_object, json_schema_input_type=instance_model(max_image_bytes))]


InstanceObject = _instance_object(DEFAULT_MAX_IMAGE_BYTES)


@functools.lru_cache(maxsize=None)
def predict_request_model(max_batch: int = DEFAULT_MAX_REQUEST_IMAGES,
                          max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> type[BaseModel]:
    """The /v1/predict JSON request body for a service whose MAX_REQUEST_IMAGES is ``max_batch``
    (and MAX_IMAGE_BYTES ``max_image_bytes``): the limits are part of the model, so the service
    enforces the limits the document states."""
    return create_model(
        "PredictRequest", __doc__="A batch of images, classified in order.",
        instances=(Annotated[list[_instance_object(max_image_bytes)],
                             Field(min_length=1, max_length=max_batch)], ...))


PredictRequest = predict_request_model()


# ---------------------------------------------------------------- HTTP: responses

class Error(BaseModel):
    error: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model: str


class NotReady(BaseModel):
    status: Literal["loading", "failed"]
    # Absent while loading (dumped with exclude_none).
    error: str | SkipJsonSchema[None] = None


class ModelInfo(BaseModel):
    id: str = Field(json_schema_extra={"example": "resnet50-imagenet-224"})
    weights_source: str
    input_size: int = Field(ge=1)
    classes: list[str]
    untrained: bool = Field(description="random weights: labels are meaningless")
    weights_sha256: str | None = Field(
        None, description="sha256 of the weights file (MODEL_WEIGHTS=<file>, e.g. from make train)")
    max_request_images: int = Field(ge=1)
    model_batch_max_images: int = Field(ge=1)
    model_batch_delay_ms: float = Field(ge=0)


class Prediction(BaseModel):
    image_id: str
    # Every class a served model may answer: CIFAR-10's (ResNet50 folds ImageNet's into them,
    # the cifar10_* ResNets) and CIFAR-100's fine labels (the cifar100_* ResNets).
    label: Literal[tuple(dict.fromkeys(CIFAR10_CLASSES + CIFAR100_CLASSES))]
    confidence: float = Field(ge=0, le=1)
    received_at: float = Field(description="unix time the request arrived")
    inferred_at: float = Field(description="unix time the model output was ready")
    inference_ms: float = Field(ge=0, description="duration of the model call that classified it")


class InstanceError(BaseModel):
    image_id: str | None = Field(description="the instance's image_id when it was a string")
    error: str


class Timing(BaseModel):
    decode_ms: float = Field(ge=0)
    inference_ms: float = Field(ge=0)
    total_ms: float = Field(ge=0)


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction | InstanceError] = Field(description=(
        "exactly one entry per instance, in the order of the request's instances: predictions[i] "
        "answers instances[i] (image ids are echoed, never used to match: they may repeat)"))
    batch_size: int = Field(ge=1)
    timing: Timing
