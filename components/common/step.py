"""Step bookkeeping shared by every entry point: wall time recorded next to the outputs."""

from __future__ import annotations

import contextlib
import json
import os
import time


@contextlib.contextmanager
def timed_step(name: str, output_dir: str):
    """Runs the body and writes {step, wall_seconds} to output_dir/step.json."""
    started = time.monotonic()
    print(f"[{name}] starting", flush=True)
    yield
    seconds = time.monotonic() - started
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "step.json"), "w", encoding="utf-8") as f:
        json.dump({"step": name, "wall_seconds": seconds}, f)
    print(f"[{name}] finished in {seconds:,.1f}s", flush=True)
