"""The leak detector: resident memory sampled every few seconds, one least-squares line
per process lifetime (a killed process restarts with a new pid: a new lifetime), its
slope in bytes/s and in bytes per image sent meanwhile.

A lifetime is judged on its samples after its start-up (imports, the model loaded, first
batches, the allocator's arenas filling: growth that stops): the first ``SKIP_FRACTION``
of it, at least ``WARMUP_S``, and at least ``WARMUP_S`` after its component was known to
serve again (``ready_at``; a TensorFlow worker on a busy host takes minutes to load), and
only when what is left spans ``MIN_SPAN_S`` and enough images went through it for the
bound to show: ``MIN_RESOLVED_B`` at the bound (1 MiB: 1,024 images at 1 KB each).  Below
that, an allocator's next chunk or a one-time allocation (a broker's buffers as its
clients come back after a restart: 1.3 MiB over 403 images) outweighs the bound; such a
lifetime is "too short" (reported, not judged).  It "grows" when its slope exceeds
``BOUND_B_PER_IMAGE`` bytes per image sent meanwhile, over the judged samples, over their
last half and over their last quarter alike: a leak grows to the end at the same rate,
whereas a start-up or a backlog's buffers filling slows down, and a high-water mark stops
(a Gunicorn worker serving alone while its sibling restarts grows its request threads'
arenas once, then stays there: the soak's run 11, docs/RELIABILITY.md).  Why
that bound: docs/RELIABILITY.md, "Soak" (a deliberate leak of 4 KB per image must be
flagged, the unmodified build's lifetimes measured below it).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

WARMUP_S = 30.0
SKIP_FRACTION = 1 / 3
MIN_SPAN_S = 40.0
MIN_SAMPLES = 10
BOUND_B_PER_IMAGE = 1024.0
MIN_RESOLVED_B = 2**20


@dataclass
class Lifetime:
    """One process from its first sample to its last: ``samples`` are (unix s, RSS bytes)."""

    component: str
    role: str
    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.component}/{self.role}/{self.pid}"


def least_squares(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through ``points`` (at least two
    distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("all points at one time")
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


class Images:
    """How many images were sent between two times (the stored documents' sent_at, sorted):
    the load offered, which a stall does not shrink as it does the images stored."""

    def __init__(self, stored_at: list[float]):
        self.times = sorted(stored_at)

    def between(self, t0: float, t1: float) -> int:
        return bisect.bisect_right(self.times, t1) - bisect.bisect_left(self.times, t0)


def judge(life: Lifetime, images: Images, *, bound_b_per_image: float = BOUND_B_PER_IMAGE,
          warmup_s: float = WARMUP_S, min_span_s: float = MIN_SPAN_S, skip_fraction: float = SKIP_FRACTION,
          ready_at: float | None = None) -> dict:
    """The lifetime's record: its span, slope (B/s, B/image), growth and verdict
    ("grows", "flat" or "too short")."""
    samples = sorted(x for x in life.samples if x[1] > 0)  # 0: the process was exiting
    row = {"component": life.component, "role": life.role, "pid": life.pid, "samples": len(samples),
           "first_s": samples[0][0] if samples else None, "last_s": samples[-1][0] if samples else None,
           "rss_first_mib": round(samples[0][1] / 2**20, 1) if samples else None,
           "rss_last_mib": round(samples[-1][1] / 2**20, 1) if samples else None}
    judged = []
    if samples:
        first, last = samples[0][0], samples[-1][0]
        start = max(first + warmup_s, first + skip_fraction * (last - first),
                    ready_at + warmup_s if ready_at is not None else first)
        judged = [(t, rss) for t, rss in samples if t >= start]
    span = judged[-1][0] - judged[0][0] if len(judged) > 1 else 0.0
    row["judged_span_s"] = round(span, 1)
    if len(judged) < MIN_SAMPLES or span < min_span_s:
        row.update(verdict="too short", slope_b_s=None, slope_b_per_image=None, images=None)
        return row
    per_image, slope, n = _per_image(judged, images)
    late_per_image = _tail_per_image(judged, 2, images)
    last_per_image = _tail_per_image(judged, 4, images)
    row.update(slope_b_s=round(slope, 1), images=n,
               slope_b_per_image=None if per_image is None else round(per_image, 1),
               late_slope_b_per_image=None if late_per_image is None else round(late_per_image, 1),
               last_slope_b_per_image=None if last_per_image is None else round(last_per_image, 1),
               growth_mib=round(slope * span / 2**20, 2))
    if per_image is None or late_per_image is None or last_per_image is None:
        # No image went through while it lived: any steady growth is not the images'.
        row["verdict"] = "too short"
    elif n * bound_b_per_image < MIN_RESOLVED_B:
        row["verdict"] = "too short"
        row["why_too_short"] = (f"{n} images: {n * bound_b_per_image / 2**20:.2f} MiB at the bound, "
                                f"under the {MIN_RESOLVED_B / 2**20:g} MiB it must reach to show")
    else:
        row["verdict"] = "grows" if min(per_image, late_per_image, last_per_image) > bound_b_per_image else "flat"
    return row


def _tail_per_image(judged: list[tuple[float, int]], parts: int, images: Images) -> float | None:
    """The slope per image over the last 1/``parts`` of ``judged`` (None: too few samples
    there, or no image went through meanwhile)."""
    tail = judged[(parts - 1) * len(judged) // parts:]
    return _per_image(tail, images)[0] if len(tail) >= MIN_SAMPLES // 2 else None


def _per_image(points: list[tuple[float, int]], images: Images) -> tuple[float | None, float, int]:
    """(slope per image, slope per second, images) over ``points``."""
    slope, _ = least_squares(points)
    n = images.between(points[0][0], points[-1][0])
    return (slope * (points[-1][0] - points[0][0]) / n if n else None), slope, n
