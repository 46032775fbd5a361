"""``python -m bench.decode_cost``: what real camera images cost the service, and the wire.

Prints, per image (best of several timeit rounds, so a neighbour's burst on a shared
machine does not count):

1. the service's decode (``inference.api.decode_image``: open, pixel check, JPEG draft,
   load, RGB, resize) of a 32x32 PNG at 32 px (no resize: today's path) against a 640x480
   JPEG resized to 32 and to 224 px, and the ratios;
2. ``/v1/predict`` request handling through Flask's test client for 64 32x32 PNGs, JSON +
   base64 against multipart/form-data: parsing, validation, decoding, the dynamic batcher
   and the response, with a stub model (zeros) so that the model's time does not hide
   the rest;
3. the client's body building for 64 3 KB images: JSON + base64 (what ``predict`` sends),
   the hand-built multipart body (``consumers.inference.encode_multipart``) and urllib3's
   ``encode_multipart_formdata``.

A measurement, not a test: nothing here asserts a time.  No TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import timeit

import numpy as np
from PIL import Image


def best_us(fn, per: int = 1, repeat: int = 5) -> float:
    """Microseconds per item of ``fn`` (which handles ``per`` items), best of ``repeat``."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number / per * 1e6


def photo(width: int = 640, height: int = 480, fmt: str = "JPEG") -> bytes:
    """A photo-like image: smooth gradients plus noise (a camera frame compresses like this)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx + yy) % 256], axis=-1)
    pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png32(seed: int) -> bytes:
    from common.schema import encode_png

    return encode_png(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def decode_costs() -> dict:
    from inference.api import ImageLimits, decode_image

    small, jpeg = png32(0), photo()
    out = {"png32_at_32": best_us(lambda: decode_image(small, ImageLimits(size=32))),
           "jpeg640x480_to_32": best_us(lambda: decode_image(jpeg, ImageLimits(size=32))),
           "jpeg640x480_to_224": best_us(lambda: decode_image(jpeg, ImageLimits(size=224))),
           "jpeg_bytes": len(jpeg), "png_bytes": len(small)}
    print("1. service-side decode, per image:")
    print(f"   32x32 PNG ({len(small)} B) at 32 px (no resize)        {out['png32_at_32']:8.1f} us")
    for size in (32, 224):
        us = out[f"jpeg640x480_to_{size}"]
        print(f"   640x480 JPEG ({len(jpeg)} B) resized to {size:3d} px    {us:8.1f} us"
              f"  ({us / out['png32_at_32']:.1f}x the 32x32 PNG)")
    return out


class _StubModel:
    id, weights_source, input_size, untrained, weights_sha256 = "stub", "stub", 32, True, None

    def __init__(self):
        from common.labels import CIFAR10_CLASSES

        self.classes = CIFAR10_CLASSES

    @staticmethod
    def predict(images: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(images), 10), dtype=np.float32)
        probs[:, 0] = 1.0
        return probs


def stub_app():
    """The service's app (inference.create_app) on a ready ModelHost whose model is a stub."""
    from common.settings import ServiceSettings
    from inference import create_app
    from inference.batcher import DynamicBatcher
    from inference.serving import READY, ModelHost

    model_host = ModelHost(ServiceSettings(model_weights="random"))  # never started: no TensorFlow
    model_host.model = _StubModel()
    model_host.batcher = DynamicBatcher(model_host.model.predict, max_batch=64, max_delay_s=0.0)
    model_host.state = READY
    return create_app({"TESTING": True, "MODEL_HOST": model_host})


def request_costs(n: int = 64) -> dict:
    from consumers.inference import encode_multipart

    client = stub_app().test_client()
    pngs = [png32(i) for i in range(n)]
    json_body = json.dumps({"instances": [{"image_id": f"img-{i}", "image": base64.b64encode(p).decode()}
                                          for i, p in enumerate(pngs)]}).encode()
    mp_body, mp_type = encode_multipart([(f"img-{i}", p, "image/png") for i, p in enumerate(pngs)])
    for body, ctype in ((json_body, "application/json"), (mp_body, mp_type)):
        r = client.post("/v1/predict", data=body, content_type=ctype)
        assert r.status_code == 200 and all("label" in p for p in r.json["predictions"]), r.json
    # A preamble (legal, ignored) makes the service fall back to Werkzeug's general parser.
    preambled = b"preamble\r\n" + mp_body
    out = {"json_us": best_us(lambda: client.post("/v1/predict", data=json_body, content_type="application/json"), n),
           "multipart_us": best_us(lambda: client.post("/v1/predict", data=mp_body, content_type=mp_type), n),
           "multipart_werkzeug_us": best_us(lambda: client.post("/v1/predict", data=preambled,
                                                                content_type=mp_type), n),
           "json_bytes": len(json_body), "multipart_bytes": len(mp_body)}
    print(f"2. /v1/predict handling (Flask test client, stub model), {n} x 32x32 PNG, per image:")
    print(f"   JSON + base64  ({len(json_body):7d} B body)          {out['json_us']:8.1f} us")
    print(f"   multipart      ({len(mp_body):7d} B body)          {out['multipart_us']:8.1f} us"
          f"  (JSON / multipart: {out['json_us'] / out['multipart_us']:.2f})")
    print(f"   multipart through Werkzeug's parser        {out['multipart_werkzeug_us']:8.1f} us")
    return out


def client_costs(n: int = 64, size: int = 3000) -> dict:
    from urllib3 import encode_multipart_formdata

    from consumers.inference import encode_multipart

    items = [(f"00000000-0000-4000-8000-{i:012d}", os.urandom(size), "image/png") for i in range(n)]

    def json_b64():
        return json.dumps({"instances": [{"image_id": i, "image": base64.b64encode(d).decode()}
                                         for i, d, _ in items]}).encode()

    def urllib3_multipart():
        fields = []
        for image_id, data, ctype in items:
            fields += [("image_id", image_id), ("image", ("image.png", data, ctype))]
        return encode_multipart_formdata(fields)

    out = {"json_b64_us": best_us(json_b64), "hand_us": best_us(lambda: encode_multipart(items)),
           "urllib3_us": best_us(urllib3_multipart)}
    print(f"3. client body for {n} images of {size} B, per request:")
    print(f"   JSON + base64 (predict)                  {out['json_b64_us']:8.1f} us")
    print(f"   multipart by hand (predict_files)        {out['hand_us']:8.1f} us")
    print(f"   urllib3 encode_multipart_formdata        {out['urllib3_us']:8.1f} us"
          f"  ({out['urllib3_us'] / out['hand_us']:.1f}x the hand-built body)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)
    figures = {"decode": decode_costs(), "request": request_costs(), "client": client_costs()}
    try:
        figures["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
