"""The soak's catch-up probe: how fast the pipeline clears a backlog, measured on the
soak's own stack before its producers start.

The lag bound (verify.lag_bound: 2 T + slack) holds only if, after a component was down
for T, the pipeline stores at least twice the offered rate until the backlog is gone: the
backlog grew at the offered rate and must shrink at least as fast.  The capacity ramp
measures a fresh flow, whose records the consumers read as they arrive.  A backlog is read
back after the fact, and on the broker's S3 storage that was measured slower: at 120 img/s
offered, a 30 s pause of the inference consumer left a backlog that took minutes to clear,
while the ramp had stored 230 img/s (docs/RELIABILITY.md, "Soak", 1. Load).  So the
soak measures both and sizes its load from the lower.

The probe: producers at ``rate`` for ``WARM_S``; the inference consumer stopped
(SIGSTOP: no restart cost in the figure, only the backlog) for ``PAUSE_S``; then resumed,
and the lag read every second until both groups are back in their bands (verify.in_band)
or ``GUARD_S`` passed.  The catch-up rate is the offered rate plus the backlog (the
inference group's peak lag, in images) over the time it took to clear."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

from stack.control import process_tree
from tests.soak import verify
from tests.soak.producers import Producers
from tests.soak.sampler import Lag

WARM_S = 30.0
PAUSE_S = 30.0
GUARD_S = 240.0
PAUSED = "inference-consumer"


def catch_up_rate(samples: list[dict], t_resume: float, rate: float, band: dict[str, int],
                  group: str = "iot-inference") -> dict:
    """From the lag ``samples`` (``{"t", group: records...}``) of a probe resumed at
    ``t_resume`` with ``rate`` offered: the backlog (``group``'s peak lag after the pause
    began), how long after ``t_resume`` every group was back in ``band``
    (``cleared_after_s``, None: not within the samples) and ``catch_up_img_s``.  When it
    did not clear, the figure is an upper bound: the backlog over the whole window."""
    peak = max((s[group] for s in samples if s.get(group) is not None), default=0)
    after = [s for s in samples if s["t"] >= t_resume]
    back = next((s["t"] for s in after if verify.in_band(s, band)), None)
    out = {"backlog_images": peak, "offered_img_s": rate}
    if back is not None:
        took = max(1.0, back - t_resume)
        out.update(cleared_after_s=round(took, 1), catch_up_img_s=round(rate + peak / took, 2))
    else:
        window = max(1.0, (after[-1]["t"] - t_resume) if after else 1.0)
        out.update(cleared_after_s=None, catch_up_img_s=round(rate + peak / window, 2),
                   note=f"the backlog was not cleared in {window:.0f} s: the figure is an upper bound")
    return out


def probe(stack, out: Path, rate: float, band: dict[str, int], say) -> dict:
    """Run the probe at ``rate`` images/s on ``stack``; its producers write under ``out``
    (their images are stored like any others, under their own ids, and not judged)."""
    lag = Lag(stack.kafka())
    producers = Producers(out, stack.env, tag=f"catchup-{uuid.uuid4().hex[:4]}", count=2, rate_each=rate / 2,
                          end_at=time.time() + WARM_S + PAUSE_S + GUARD_S)
    samples: list[dict] = []

    def sample() -> None:
        samples.append({"t": time.time(), **lag.read()})

    try:
        producers.start()
        time.sleep(WARM_S)
        pid = stack.pid(PAUSED)
        if pid is None:  # process_tree(None) would be this process
            raise RuntimeError(f"catch-up probe: {PAUSED} is not running ({stack.dir}/pids)")
        procs = process_tree(pid)
        say(f"catch-up probe: {PAUSED} paused for {PAUSE_S:.0f} s at {rate:g} img/s offered")
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        t_pause = time.time()
        try:
            while time.time() < t_pause + PAUSE_S:
                sample()
                time.sleep(1.0)
        finally:
            for p in procs:
                p.send_signal(signal.SIGCONT)
        t_resume = time.time()
        while time.time() < t_resume + GUARD_S:
            sample()
            if samples[-1]["t"] > t_resume + 2 and verify.in_band(samples[-1], band):
                break
            time.sleep(1.0)
        producers.stop()
        # A producer stopped mid-run leaves images in flight: let the pipeline store them
        # so the soak's producers start on an empty backlog.
        deadline = time.time() + GUARD_S
        while time.time() < deadline and not verify.in_band(lag.read(), band):
            time.sleep(1.0)
    finally:
        producers.stop()
        lag.close()
    result = catch_up_rate(samples, t_resume, rate, band)
    result.update(paused=PAUSED, pause_s=PAUSE_S,
                  lag=[{k: (round(v - t_pause, 1) if k == "t" else v) for k, v in s.items()} for s in samples])
    return result
