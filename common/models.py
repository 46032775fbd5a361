"""The wire contract as typed pydantic v2 models (see docs/ARCHITECTURE.md).

One set of models drives both sides of every interface:

* Kafka messages: :class:`ImageMessage` (``iot-images``), :class:`ResultMessage`
  (``iot-inference``).  ``common.schema`` wraps them in the functions the producers and
  consumers call (``parse_image_message`` ...).  Dead letters (``iot-dlq``) are the original
  records plus ``dlq.*`` headers (``common.deadletter``).
* HTTP bodies of the inference service: :func:`predict_request_model` (the
  ``/v1/predict`` request, its batch limit included) and the responses
  (:class:`PredictResponse`, :class:`ModelInfo` ...).  ``inference.openapi`` generates
  the served OpenAPI document from these models, so the document cannot drift from
  what the service accepts.

Input is validated strictly: a JSON ``true`` is not an integer, ``"1.5"`` is not a
number, integers must fit a signed 64-bit integer (BSON's largest), numbers must be
finite (no NaN, no infinities, no ``1e999``), and text must be valid Unicode (a lone
surrogate such as ``"\\ud800"`` would later crash ``str.encode`` and BSON encoding).
JSON is parsed by pydantic's parser (jiter), which refuses lone surrogates and nests
deeper than 200 levels as invalid JSON: a hostile ``[[[[...`` is an error, never a
``RecursionError``.

Every rejection becomes :class:`InvalidMessage` with one readable reason (see
:func:`reason_of`), which is what a dead letter carries.

"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import struct
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      PrivateAttr, Strict, ValidationError, ValidationInfo, create_model,
                      model_validator)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from common.labels import CIFAR10_CLASSES

SCHEMA_VERSION = 1  # results (iot-inference) and schema-1 image messages
IMAGE_SCHEMA_V2 = 2  # image records: raw image bytes in the value, metadata in headers
IMAGE_FORMATS = ("png", "jpeg")  # schema 2; schema 1 carries PNG only
IMAGE_SIZE = 32  # CIFAR images are 32x32 RGB
# Text fields are copied into the result message: unbounded, a valid image could
# yield a result too big for the DB consumer (found by tests/integration/test_hostile.py).
MAX_TEXT_CHARS = 256
MAX_IMAGE_MESSAGE_BYTES = 256 * 1024  # KafkaSettings.max_message_bytes
MAX_RESULT_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_REQUEST_IMAGES = 128  # ServiceSettings.max_request_images
# Longest base64 text of one Kafka image message's image, checked before anything is
# decoded: 8 KiB of base64 is a 6 KiB PNG, twice the largest 32x32 RGB PNG (3 KiB of
# pixels + headers).  (The HTTP service's JSON instances have their own limit, the base64
# of MAX_IMAGE_BYTES: instance_model.)
MAX_IMAGE_B64_CHARS = 8 * 1024
# The HTTP service (/v1/predict) takes PNG and JPEG images of any size: one image's bytes
# are at most ServiceSettings.max_image_bytes (MAX_IMAGE_BYTES), its pixels at most
# max_image_pixels (MAX_IMAGE_PIXELS, checked from the header before decoding).
DEFAULT_MAX_IMAGE_BYTES = 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096


def b64_chars(n_bytes: int) -> int:
    """Length of the base64 text of ``n_bytes`` bytes (padded)."""
    return 4 * ((n_bytes + 2) // 3)


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_RGB = 2  # IHDR colour type for truecolour without alpha
_JPEG_SOI = b"\xff\xd8\xff"  # start of image + the first marker's 0xFF


class InvalidMessage(ValueError):
    """A message that can never be processed; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- cheap image checks

def check_png_header(png: bytes, size: int = IMAGE_SIZE) -> None:
    """Raise InvalidMessage unless ``png`` starts like a size x size 8-bit RGB PNG."""
    if len(png) < 33 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise InvalidMessage("image is not a PNG")
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    if (width, height) != (size, size):
        raise InvalidMessage(f"image is {width}x{height}, expected {size}x{size}")
    if depth != 8 or colour != _PNG_RGB:
        raise InvalidMessage(f"image is not 8-bit RGB (bit depth {depth}, colour type {colour})")


def check_image_magic(data: bytes, fmt: str) -> None:
    """Raise InvalidMessage unless ``data`` starts like an image of ``fmt`` (schema 2: any size;
    the inference service checks the dimensions against its pixel limit when it decodes)."""
    if fmt == "png":
        if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
            raise InvalidMessage("image is not a PNG")
        width, height = struct.unpack(">II", data[16:24])
        if not width or not height:
            raise InvalidMessage(f"image is {width}x{height}")
    elif fmt == "jpeg":
        if len(data) < 4 or not data.startswith(_JPEG_SOI):
            raise InvalidMessage("image is not a JPEG")
    else:
        raise InvalidMessage(f"unsupported image format {fmt!r}")


def sniff_format(data: bytes) -> str | None:
    """``png`` / ``jpeg`` by the file's first bytes, None for anything else."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    return None


def decode_image_b64(text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise InvalidMessage("field 'image' must be a non-empty base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage("field 'image' is not valid base64") from None


# ---------------------------------------------------------------- field types

def _not_unicode(name: str, value: Any) -> str | None:
    """The reason a text field is refused for a lone surrogate, None when it holds none."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"field '{name}' is not valid Unicode text (lone surrogate "
                f"U+{ord(value[exc.start]):04X} at character {exc.start})")
    except AttributeError:  # not a str
        return f"field '{name}' is not valid Unicode text"
    return None


def _valid_unicode(value: str, info: ValidationInfo) -> str:
    """Lone surrogates (only Python-side input can hold them: jiter refuses them in JSON)."""
    reason = _not_unicode(info.field_name, value)
    if reason:
        raise InvalidMessage(reason)
    return value


def _int64_if_int(value: Any, info: ValidationInfo) -> Any:
    # A number field takes an integer too (JSON 2 is the number 2), but only one that
    # fits the int64 range every integer of the contract is held to.
    if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
        raise InvalidMessage(f"field '{info.field_name}' is outside the signed 64-bit integer range")
    return value


def _exactly_int(version: int):
    """A before-validator for ``schema``: Literal[N] alone would take true and N.0 (they
    compare equal to N)."""
    def check(value: Any) -> Any:
        if type(value) is not int:
            raise PydanticCustomError("schema_version", f"schema must be the integer {version}")
        return value
    return check


def _uuid(value: str, info: ValidationInfo) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidMessage(f"field '{info.field_name}' is not a UUID") from None
    return value


def _png_format(value: str) -> str:
    if value != "png":
        raise InvalidMessage(f"unsupported image format {value!r}")
    return value


def _v2_format(value: str) -> str:
    if value not in IMAGE_FORMATS:
        raise InvalidMessage(f"unsupported image format {value!r} (schema 2 takes png or jpeg)")
    return value


SchemaVersion = Annotated[Literal[1], BeforeValidator(_exactly_int(1))]
SchemaVersion2 = Annotated[Literal[2], BeforeValidator(_exactly_int(2))]
Int64 = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
# A finite number; JSON integers are accepted (as floats) within the int64 range.
Number = Annotated[float, Strict(), Field(allow_inf_nan=False), BeforeValidator(_int64_if_int)]
Timestamp = Annotated[Number, Field(description="unix seconds")]
Text = Annotated[str, Strict(), AfterValidator(_valid_unicode)]
ShortText = Annotated[str, Strict(), Field(max_length=MAX_TEXT_CHARS), AfterValidator(_valid_unicode)]
ImageId = Annotated[str, Strict(), Field(max_length=MAX_TEXT_CHARS, json_schema_extra={"format": "uuid"}),
                    AfterValidator(_valid_unicode), AfterValidator(_uuid)]
Base64Png = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_IMAGE_B64_CHARS,
                                           json_schema_extra={"format": "byte"},
                                           description="base64 of a 32x32 8-bit RGB PNG")]


class _Wire(BaseModel):
    """Common behaviour: unknown fields are ignored (a newer producer may add some), ``schema`` by alias."""

    model_config = ConfigDict(extra="ignore", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)
    # Reasons that replace the generic ones, by (field, pydantic error type).
    _reasons: ClassVar[dict[tuple[str, str], str]] = {}

    def wire(self) -> dict:
        """The message as a JSON-ready dict, fields in contract order, ``schema`` included."""
        return self.model_dump(by_alias=True)

    @classmethod
    def wire_fields(cls) -> tuple[str, ...]:
        return tuple(f.alias or name for name, f in cls.model_fields.items())


class _WithPng(_Wire):
    """Decodes ``image`` once every field is valid (the PNG header only, no pixels)."""

    _png: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _decode_png(self):
        png = decode_image_b64(self.image)  # type: ignore[attr-defined]
        check_png_header(png)
        self._png = png
        return self

    @property
    def png(self) -> bytes:
        return self._png


# ---------------------------------------------------------------- Kafka messages

class ImageMeta(_Wire):
    """What every image message says about its image, whatever its schema: both schemas
    parse into a model of this class (:func:`common.schema.parse_image_record`), so the
    validators, the consumers and the dead-letter reasons are the same for both."""

    schema_version: int = Field(alias="schema")
    image_id: ImageId = Field(description="UUID4; MongoDB _id")
    device_id: ShortText = Field(description="simulated camera, e.g. p-1a2b3c-cam02")
    producer_id: ShortText = Field(description="producer process")
    seq: Int64 = Field(description="per-producer sequence number")
    sent_at: Timestamp
    label: ShortText | None = Field(description="ground-truth class name (null for synthetic images)")
    dataset: ShortText = Field(description="cifar10, cifar100, synthetic, folder")
    format: Text

    def meta(self) -> dict:
        """The metadata fields only (no image), as the consumers pass them on."""
        return self.model_dump(by_alias=True, include=set(ImageMeta.model_fields))


class ImageMessage(ImageMeta, _WithPng):
    """Image message (topic iot-images), schema 1: one JSON object, the PNG in base64."""

    schema_version: SchemaVersion = Field(alias="schema")
    format: Annotated[Text, AfterValidator(_png_format)] = Field(json_schema_extra={"enum": ["png"]})
    image: Base64Png

    _reasons = {("image", "string_too_short"): "field 'image' must be a non-empty base64 string"}


class ImageRecordMeta(ImageMeta):
    """Image record (topic iot-images), schema 2: the value is the image file's bytes
    (PNG or JPEG, any size), these fields are record headers (UTF-8 text; ``seq`` and
    ``sent_at`` in decimal; no ``label`` header for a null label).  See
    :func:`common.schema.parse_image_record`."""

    schema_version: SchemaVersion2 = Field(alias="schema")
    format: Annotated[Text, AfterValidator(_v2_format)] = Field(json_schema_extra={"enum": list(IMAGE_FORMATS)})


class ResultMessage(_Wire):
    """Result message (topic iot-inference), schema 1: the image's fields plus the prediction."""

    schema_version: SchemaVersion = Field(alias="schema")
    image_id: ImageId
    device_id: ShortText
    producer_id: ShortText
    seq: Int64
    sent_at: Timestamp
    label: ShortText | None
    prediction: Text = Field(description="CIFAR-10 class name")
    confidence: Number = Field(description="0..1")
    model: Text = Field(description="model id, e.g. resnet50-imagenet-224")
    received_at: Timestamp = Field(description="the inference consumer polled the image")
    inferred_at: Timestamp = Field(description="the model's output was ready (service clock)")
    published_at: Timestamp = Field(description="the result was handed to the Kafka producer")


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
    label: Literal[CIFAR10_CLASSES]
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


# ---------------------------------------------------------------- validation -> InvalidMessage

_WRONG_TYPE = {"string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type",
               "model_type", "int_from_float", "int_parsing", "float_parsing", "bool_parsing"}


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _reason(err: dict, model: type[BaseModel]) -> str:
    typ, loc, ctx = err["type"], err["loc"], err.get("ctx") or {}
    if isinstance(ctx.get("error"), InvalidMessage):  # our own checks name their field
        return ctx["error"].reason
    name = _where(loc)
    if loc[:1] == ("schema",):
        value = None if typ == "missing" else err["input"]
        return f"unknown schema version {value!r} (expected {SCHEMA_VERSION})"
    special = getattr(model, "_reasons", {}).get((name, typ))
    if special:
        return special
    if not loc:
        if typ == "json_invalid":
            return f"invalid JSON: {ctx.get('error', err['msg'])}"
        if typ in ("model_type", "model_attributes_type", "dict_type"):
            return "message is not a JSON object"
        return err["msg"]
    if typ == "missing":
        return f"missing field '{name}'"
    if typ in _WRONG_TYPE:
        return f"field '{name}' has the wrong type ({type(err['input']).__name__})"
    if typ == "string_unicode":  # pydantic-core's own check, where a length limit needs the text
        return _not_unicode(name, err["input"]) or f"field '{name}' is not valid Unicode text"
    if typ == "string_too_long":
        return f"field '{name}' is longer than {ctx['max_length']} characters"
    if typ == "finite_number":
        return f"field '{name}' is not a finite number ({err['input']!r})"
    if (typ, ctx.get("ge"), ctx.get("le")) in (("greater_than_equal", INT64_MIN, None),
                                               ("less_than_equal", None, INT64_MAX)):
        return f"field '{name}' is outside the signed 64-bit integer range"
    return f"field '{name}': {err['msg']}"


def _rank(err: dict) -> int:
    """Which error a message is rejected for: the schema version first (a message of
    another version is not judged by this one's rules), then missing and mistyped
    fields, then bad values, then the image itself (checked once all fields are valid)."""
    if err["loc"][:1] == ("schema",):
        return 0
    if not err["loc"]:
        return 0 if err["type"] in ("json_invalid", "model_type") else 3
    return 1 if err["type"] == "missing" or err["type"] in _WRONG_TYPE else 2


def reason_of(exc: ValidationError, model: type[BaseModel]) -> str:
    """The one reason, in plain words, that ``exc`` (raised validating ``model``) reports."""
    errors = exc.errors(include_url=False)
    return _reason(min(errors, key=_rank), model)  # min() is stable: field order within a rank


def validate(model: type[_Wire], obj: Any, **kwargs):
    """``model.model_validate(obj)``, rejections as InvalidMessage."""
    try:
        return model.model_validate(obj, **kwargs)
    except ValidationError as exc:
        raise InvalidMessage(reason_of(exc, model)) from None


def validate_json(model: type[_Wire], raw: bytes | None, *, max_bytes: int):
    """``model.model_validate_json(raw)`` for one Kafka message value, rejections as InvalidMessage."""
    if raw is None:
        raise InvalidMessage("empty message (null value)")
    if len(raw) > max_bytes:
        raise InvalidMessage(f"message is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        reason = reason_of(exc, model)
    if reason.startswith("invalid JSON") and ("surrogate" in reason or "hex escape" in reason):
        reason = _which_field_is_not_unicode(model, raw) or reason
    raise InvalidMessage(reason)


def _which_field_is_not_unicode(model: type[_Wire], raw: bytes) -> str | None:
    """jiter refuses a lone surrogate as invalid JSON without naming the field; the
    standard library parser keeps it, so the Python-side validation can name it (the
    error path only; a message it cannot parse keeps jiter's reason)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        return reason_of(exc, model)
    return None  # the surrogate is in a field the contract ignores
