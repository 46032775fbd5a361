"""The Kafka messages of the wire contract as typed pydantic v2 models (docs/ARCHITECTURE.md).

:class:`ImageMessage` (``iot-images``, schema 1), :class:`ImageRecordMeta` (schema 2's
headers) and :class:`ResultMessage` (``iot-inference``); their names and limits are
:mod:`common.wire`'s.  ``common.schema`` wraps them in the functions the producers and
consumers call (``parse_image_record`` ...).  Dead letters (``iot-dlq``) are the original
records plus ``dlq.*`` headers (``common.deadletter``); the inference service's HTTP
bodies are :mod:`common.http_models`, built on the field types here.

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
import json
import struct
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, Strict, ValidationError, ValidationInfo, model_validator)
from pydantic_core import PydanticCustomError

from common.wire import (IMAGE, IMAGE_FORMATS, JPEG, PNG, IMAGE_SCHEMA_HEADERS, IMAGE_SCHEMA_JSON, IMAGE_SIZE, INT64_MAX, INT64_MIN,
                         MAX_IMAGE_B64_CHARS, MAX_TEXT_CHARS, RESULT_SCHEMA, SCHEMA)

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
    if fmt == PNG:
        if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
            raise InvalidMessage("image is not a PNG")
        width, height = struct.unpack(">II", data[16:24])
        if not width or not height:
            raise InvalidMessage(f"image is {width}x{height}")
    elif fmt == JPEG:
        if len(data) < 4 or not data.startswith(_JPEG_SOI):
            raise InvalidMessage("image is not a JPEG")
    else:
        raise InvalidMessage(f"unsupported image format {fmt!r}")


def sniff_format(data: bytes) -> str | None:
    """``png`` / ``jpeg`` by the file's first bytes, None for anything else."""
    if data.startswith(_PNG_SIGNATURE):
        return PNG
    if data.startswith(_JPEG_SOI):
        return JPEG
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
    if value != PNG:
        raise InvalidMessage(f"unsupported image format {value!r}")
    return value


def _v2_format(value: str) -> str:
    if value not in IMAGE_FORMATS:
        raise InvalidMessage(f"unsupported image format {value!r} (schema 2 takes {' or '.join(IMAGE_FORMATS)})")
    return value


def _schema_version(version: int):
    return Annotated[Literal[version], BeforeValidator(_exactly_int(version))]
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

    schema_version: int = Field(alias=SCHEMA)
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

    version: ClassVar[int] = IMAGE_SCHEMA_JSON
    schema_version: _schema_version(IMAGE_SCHEMA_JSON) = Field(alias=SCHEMA)
    format: Annotated[Text, AfterValidator(_png_format)] = Field(json_schema_extra={"enum": [PNG]})
    image: Base64Png

    _reasons = {(IMAGE, "string_too_short"): "field 'image' must be a non-empty base64 string"}


class ImageRecordMeta(ImageMeta):
    """Image record (topic iot-images), schema 2: the value is the image file's bytes
    (PNG or JPEG, any size), these fields are record headers (UTF-8 text; ``seq`` and
    ``sent_at`` in decimal; no ``label`` header for a null label).  See
    :func:`common.schema.parse_image_record`."""

    version: ClassVar[int] = IMAGE_SCHEMA_HEADERS
    schema_version: _schema_version(IMAGE_SCHEMA_HEADERS) = Field(alias=SCHEMA)
    format: Annotated[Text, AfterValidator(_v2_format)] = Field(json_schema_extra={"enum": list(IMAGE_FORMATS)})


class ResultMessage(_Wire):
    """Result message (topic iot-inference), schema 1: the image's fields plus the prediction."""

    version: ClassVar[int] = RESULT_SCHEMA
    schema_version: _schema_version(RESULT_SCHEMA) = Field(alias=SCHEMA)
    image_id: ImageId
    device_id: ShortText
    producer_id: ShortText
    seq: Int64
    sent_at: Timestamp
    label: ShortText | None
    prediction: Text = Field(description="class name (CIFAR-10, or CIFAR-100 for a cifar100_* model)")
    confidence: Number = Field(description="0..1")
    model: Text = Field(description="model id, e.g. resnet50-imagenet-224")
    received_at: Timestamp = Field(description="the inference consumer polled the image")
    inferred_at: Timestamp = Field(description="the model's output was ready (service clock)")
    published_at: Timestamp = Field(description="the result was handed to the Kafka producer")


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
    if loc[:1] == (SCHEMA,):
        value = None if typ == "missing" else err["input"]
        return f"unknown schema version {value!r} (expected {getattr(model, 'version', '?')})"
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
    if err["loc"][:1] == (SCHEMA,):
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
