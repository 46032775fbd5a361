"""``python -m experiments.camera_images DIR``: a folder of camera-like JPEGs for ``DATASET=folder``.

Real camera pictures cannot be downloaded here, so these stand in for them: smooth
scenes (a low-resolution random picture scaled up, plus sensor-like noise) saved as
640x480 JPEG at quality 85, about the size (30-60 KB) of a real frame of that
resolution; random noise would make 200 KB files no camera sends.  With
``--from-cifar SOURCE`` the scenes are CIFAR-10 test images scaled up instead, in
sub-folders named after their class (the folder dataset's labels).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def scene(rng: np.random.Generator, width: int, height: int, base: np.ndarray | None = None) -> Image.Image:
    small = base if base is not None else rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_folder(out: Path, count: int = 64, width: int = 640, height: int = 480, seed: int = 0,
                 cifar_source: str | None = None) -> list[Path]:
    """``count`` JPEGs under ``out`` (labelled sub-folders with CIFAR scenes); their paths."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    bases: list = [(None, None)] * count
    if cifar_source:
        from common.dataset import load

        ds = load("cifar10", cifar_source, limit=count)
        bases = [(ds.images[i % len(ds)], ds.labels[i % len(ds)]) for i in range(count)]
    paths = []
    for i, (base, label) in enumerate(bases):
        folder = out / label if label else out
        folder.mkdir(exist_ok=True)
        path = folder / f"frame-{i:05d}.jpg"
        path.write_bytes(jpeg_bytes(scene(rng, width, height, base)))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.camera_images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--from-cifar", metavar="SOURCE", help="CIFAR-10 directory/tarball: scenes with labels")
    args = p.parse_args(argv)
    paths = write_folder(args.out, args.count, args.width, args.height, cifar_source=args.from_cifar)
    sizes = [pth.stat().st_size for pth in paths]
    print(f"{len(paths)} JPEGs {args.width}x{args.height} in {args.out}, "
          f"{min(sizes) // 1024}-{max(sizes) // 1024} KB each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
