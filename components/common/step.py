"""Step bookkeeping shared by every pipeline step: timing, and reuse of identical earlier outputs.

A step's fingerprint hashes its name, its configuration, the fingerprints of its input
artifacts and the source code the step runs: its own package under components/, every
components package it imports (transitively), components/common and schemas/. So a change
to the trainer re-runs the trainer and what follows it, not example_gen. With a cache root, a step whose fingerprint
was completed before gets that output (hard links, no copy of the bytes) instead of running,
so a pipeline that failed restarts at the failed step. Every output gets `fingerprint.txt`
and `step.json` (wall time, whether it was reused, peak memory of the step's process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import resource
import shutil
import time

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_IMPORT = re.compile(r"\bcomponents\.(\w+)")


def _code_files(folder: str) -> list[str]:
    if os.path.isfile(os.path.join(PACKAGE_ROOT, folder)):
        return [os.path.join(PACKAGE_ROOT, folder)]
    found = []
    for root, dirs, files in os.walk(os.path.join(PACKAGE_ROOT, folder)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.join(root, name) for name in sorted(files) if name.endswith((".py", ".pbtxt"))]
    return found


@functools.cache
def code_fingerprint(step: str = "") -> str:
    """Hash of the .py and .pbtxt files a step runs: components/<step> and the components packages it
    imports (transitively), components/common and schemas/. A name that is no components package
    (or '') hashes the whole package (components/, tfx_pipeline/, schemas/)."""
    if not step or not os.path.isdir(os.path.join(PACKAGE_ROOT, "components", step)):
        folders = ["components", "tfx_pipeline", "schemas"]
    else:
        packages, todo = set(), [step, "common"]
        while todo:
            package = todo.pop()
            if package in packages or not os.path.isdir(os.path.join(PACKAGE_ROOT, "components", package)):
                continue
            packages.add(package)
            for path in _code_files(os.path.join("components", package)):
                with open(path, encoding="utf-8") as f:
                    todo += _IMPORT.findall(f.read())
        folders = [os.path.join("components", p) for p in sorted(packages)] + ["schemas"]
        folders.insert(0, os.path.join("components", "__init__.py"))
    digest = hashlib.sha256()
    for path in [p for folder in folders for p in _code_files(folder)]:
        digest.update(os.path.relpath(path, PACKAGE_ROOT).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def fingerprint(name: str, config_json: str, input_dirs: list[str]) -> str:
    digest = hashlib.sha256(f"{name}\n{config_json}\n{code_fingerprint(name)}\n".encode())
    for path in input_dirs:
        marker = os.path.join(path, "fingerprint.txt")
        if os.path.exists(marker):
            with open(marker, encoding="utf-8") as f:
                digest.update(f.read().strip().encode())
        else:  # an input not made by a step (external data): its path identifies it
            digest.update(os.path.abspath(path).encode())
    return digest.hexdigest()[:32]


@dataclasses.dataclass
class StepRun:
    needed: bool
    fingerprint: str


def _link(source: str, target: str) -> None:
    if os.path.lexists(target):  # an output directory that already holds a (linked) copy
        os.remove(target)
    os.link(source, target)


def _link_tree(source: str, target: str) -> None:
    shutil.copytree(source, target, copy_function=_link, dirs_exist_ok=True)


def is_chief_task() -> bool:
    """Whether this process writes a step's outputs: True unless TF_CONFIG (set on every replica of a
    multi-worker job by Vertex AI and Kubeflow's TFJob) names another task than the chief, i.e. than
    the 'chief' task or, in a cluster without one, worker 0. The other replicas write to scratch."""
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = spec.get("task") or {}, spec.get("cluster") or {}
    if not task.get("type"):
        return True
    return task["type"] == "chief" or (task["type"] == "worker" and int(task.get("index", 0)) == 0
                                       and "chief" not in cluster)


@contextlib.contextmanager
def step_run(name: str, output_dir: str, config_json: str = "", input_dirs: tuple[str, ...] = (),
             cache_root: str = ""):
    """Context for one step: yields StepRun(needed=False) when a cached identical output was linked in.
    On a replica other than the chief of a multi-worker job, the step runs and records nothing."""
    if not is_chief_task():
        yield StepRun(needed=True, fingerprint="")
        return
    started = time.monotonic()
    print_ = functools.partial(print, flush=True)
    fp = fingerprint(name, config_json, list(input_dirs))
    cached = os.path.join(cache_root, name, fp) if cache_root else ""
    os.makedirs(output_dir, exist_ok=True)
    reused = bool(cached) and os.path.isdir(cached)
    if reused:
        _link_tree(cached, output_dir)
        print_(f"[{name}] reused the outputs of an identical earlier run (fingerprint {fp})")
        yield StepRun(needed=False, fingerprint=fp)
    else:
        print_(f"[{name}] starting")
        yield StepRun(needed=True, fingerprint=fp)
        with open(os.path.join(output_dir, "fingerprint.txt"), "w", encoding="utf-8") as f:
            f.write(fp + "\n")
        if cached:
            partial = cached + ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            _link_tree(output_dir, partial)
            os.replace(partial, cached)  # a cache entry exists only once complete
    seconds = time.monotonic() - started
    with open(os.path.join(output_dir, "step.json"), "w", encoding="utf-8") as f:
        json.dump({"step": name, "wall_seconds": seconds, "reused": reused, "peak_rss_mb": peak_rss_mb()}, f)
    print_(f"[{name}] finished in {seconds:,.1f}s (peak memory of the process {peak_rss_mb():,.0f} MB)")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
