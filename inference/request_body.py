"""The body of a /v1/predict request: a JSON PredictRequest's instances, or the
(image_id, image) part pairs of a multipart/form-data body.  A body that breaks the
contract raises werkzeug's BadRequest (400) or RequestEntityTooLarge (413), which
inference/api.py answers as JSON; the images themselves are decoded there, one by one.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from flask import request
from pydantic import ValidationError
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.http import parse_options_header

from common.http_models import predict_request_model
from common.models import reason_of


def _request_error(exc: ValidationError, max_batch: int) -> str:
    """The 400 message for a body that is not a PredictRequest (the first problem found)."""
    err = exc.errors(include_url=False)[0]
    typ, loc = err["type"], err["loc"]
    if typ == "json_invalid":  # jiter: also non-UTF-8, lone surrogates, nesting over 200 levels
        return f"body is not valid JSON: {str((err.get('ctx') or {}).get('error', ''))[:200]}"
    if not loc:
        return "body must be a JSON object with an 'instances' list"
    if loc == ("instances",):
        if typ == "too_long":
            return f"{len(err['input'])} instances, over the limit of {max_batch} (MAX_REQUEST_IMAGES)"
        return {"missing": "missing field 'instances'",
                "list_type": "field 'instances' must be a list",
                "too_short": "field 'instances' is empty"}.get(typ, f"field 'instances': {err['msg']}")
    if len(loc) == 2 and typ == "dict_type":
        return f"instances[{loc[1]}] is not an object"
    return reason_of(exc, predict_request_model(max_batch))


def parse_instances(max_batch: int, max_image_bytes: int) -> list[dict]:
    """The instances of an application/json body (400 when it is not a PredictRequest)."""
    raw = request.get_data(cache=False)  # 413 from Werkzeug if over MAX_CONTENT_LENGTH
    try:
        body = predict_request_model(max_batch, max_image_bytes).model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(_request_error(exc, max_batch)) from None
    return body.instances


def instance_id(inst: dict) -> str | None:
    image_id = inst.get("image_id")
    return image_id if isinstance(image_id, str) else None


class ImagePart(NamedTuple):
    image_id: str
    data: bytes
    content_type: str  # the part's media type, lower case, parameters dropped ("" if none)


def split_multipart(body: bytes, boundary: str, max_parts: int,
                    max_text: int) -> tuple[list[str], list[tuple[bytes, str]]] | None:
    """The 'image_id' text parts and 'image' file parts (data, media type) of a multipart body
    in its plain form (what clients write: no preamble, CRLF line ends, headers in every
    part), by finding its delimiters: a fraction of Werkzeug's general parser's time
    (bench/decode_cost.py).  None for any other form: Werkzeug parses it then.  Werkzeug's
    rules: a part is a file when its Content-Disposition has a filename; 413 over
    ``max_parts`` parts or a text part over ``max_text`` bytes."""
    opening = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + opening
    if not body.startswith(opening):
        return None
    ids, files = [], []
    pos, parts = len(opening), 0
    while not body.startswith(b"--", pos):  # the closing delimiter (the epilogue is ignored)
        end = body.find(delimiter, pos)
        if end < 0 or not body.startswith(b"\r\n", pos):
            return None
        head_end = body.find(b"\r\n\r\n", pos, end)
        if head_end < 0:
            return None
        parts += 1
        if parts > max_parts:
            raise RequestEntityTooLarge()
        head, data = body[pos + 2:head_end], body[head_end + 4:end]
        pos = end + len(delimiter)
        disposition, content_type, charset = None, "", ""
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                return None
            name = name.strip().lower()
            if name == b"content-disposition":
                disposition = parse_options_header(value.decode("utf-8", "replace").strip())
            elif name == b"content-type":
                content_type, params = parse_options_header(value.decode("utf-8", "replace").strip())
                content_type, charset = content_type.lower(), params.get("charset", "").lower()
        if disposition is None or disposition[0].lower() != "form-data" or charset not in ("", "utf-8"):
            return None  # (a text part in another charset: Werkzeug decodes it)
        field, is_file = disposition[1].get("name"), "filename" in disposition[1]
        if not is_file and len(data) > max_text:
            raise RequestEntityTooLarge()
        if field == "image_id" and not is_file:
            ids.append(data.decode("utf-8", "replace"))
        elif field == "image" and is_file:
            files.append((data, content_type))
    return ids, files


def parse_parts(max_batch: int) -> list[ImagePart]:
    """The (image_id, image file) pairs of a multipart/form-data body, in order.  413 for a
    body over MAX_CONTENT_LENGTH, more parts than MAX_FORM_PARTS or a text part over
    MAX_FORM_MEMORY_SIZE; a body that cannot be parsed holds no parts (400 below)."""
    boundary = request.mimetype_params.get("boundary")
    split = None
    if boundary:
        max_parts, max_text = request.max_form_parts, request.max_form_memory_size
        split = split_multipart(request.get_data(cache=True), boundary,
                                sys.maxsize if max_parts is None else max_parts,
                                sys.maxsize if max_text is None else max_text)
    if split is not None:
        ids, files = split
    else:  # Werkzeug's parser (it reads the cached body when the split gave up)
        ids = request.form.getlist("image_id")
        files = [(f.read(), f.mimetype) for f in request.files.getlist("image")]
    if not ids and not files:
        raise BadRequest("no images: a multipart/form-data body needs, per image, an 'image_id' "
                         "text part and an 'image' file part")
    if len(ids) != len(files):
        raise BadRequest(f"{len(ids)} 'image_id' parts and {len(files)} 'image' file parts: each image "
                         "needs one of each (an 'image' part is a file: a filename in its "
                         "Content-Disposition)")
    if len(ids) > max_batch:
        raise BadRequest(f"{len(ids)} images, over the limit of {max_batch} (MAX_REQUEST_IMAGES)")
    return [ImagePart(i, data, ctype) for i, (data, ctype) in zip(ids, files)]
