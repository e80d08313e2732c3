"""Progress reporting: what a run tells the outside world, and where it goes.

A pipeline stage calls a `Reporter`: `stage()` when a stage starts, `progress()` while it runs,
`plan()` once the layers are chosen, `results()` at the end. Sinks:

* `JsonlReporter`: one JSON object per line in `progress.jsonl` (local mode and every run's artifacts);
* the console sink (rich) for a person at a terminal;
* the Kubernetes status sink (`interlace.runtime.kube`, optional `kubernetes` dependency), which
  merge-patches the PruneJob's status subresource from inside the Ray job.

Payloads are the spec's own pydantic models (`Progress`, `LayerPlan`, `Results`), so every sink writes
the same camelCase fields that the CRD declares.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from interlace.schema.spec import LayerPlan, Results
from interlace.schema.status import Phase, Progress


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@runtime_checkable
class Reporter(Protocol):
    def stage(self, stage: Phase, message: str = "") -> None: ...
    def progress(self, progress: Progress) -> None: ...
    def plan(self, plan: LayerPlan) -> None: ...
    def results(self, results: Results) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def stage(self, stage: Phase, message: str = "") -> None:
        pass

    def progress(self, progress: Progress) -> None:
        pass

    def plan(self, plan: LayerPlan) -> None:
        pass

    def results(self, results: Results) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlReporter:
    """Appends one event per line: {"time", "event": stage|progress|plan|results, "data": {...}}."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def _write(self, event: str, data: dict) -> None:
        self._fh.write(json.dumps({"time": time.time(), "event": event, "data": data}) + "\n")
        self._fh.flush()

    def stage(self, stage: Phase, message: str = "") -> None:
        self._write("stage", {"stage": str(stage), "message": message})

    def progress(self, progress: Progress) -> None:
        self._write("progress", progress.to_wire())

    def plan(self, plan: LayerPlan) -> None:
        self._write("plan", plan.to_wire())

    def results(self, results: Results) -> None:
        self._write("results", results.to_wire())

    def close(self) -> None:
        self._fh.close()


class SubRunReporter:
    """One part of a larger run (a sweep's variant, a target's probe) reporting through the run's
    reporter: stage and progress messages start with `prefix`; its plan and results are dropped (the
    larger run reports its own). `lock` serialises the parent's calls when parts run in threads."""

    def __init__(self, parent: Reporter, prefix: str, lock: threading.Lock | None = None) -> None:
        self.parent = parent
        self.prefix = prefix
        self.lock = lock

    def _held(self) -> contextlib.AbstractContextManager[object]:
        return self.lock if self.lock is not None else contextlib.nullcontext()

    def stage(self, stage: Phase, message: str = "") -> None:
        with self._held():
            self.parent.stage(stage, self.prefix + message)

    def progress(self, progress: Progress) -> None:
        with self._held():
            self.parent.progress(progress.model_copy(update={"message": self.prefix + (progress.message or "")}))

    def plan(self, plan: LayerPlan) -> None:
        pass

    def results(self, results: Results) -> None:
        pass

    def close(self) -> None:
        pass


class MultiReporter:
    """Fans every call out to several sinks."""

    def __init__(self, *sinks: Reporter) -> None:
        self.sinks = list(sinks)

    def stage(self, stage: Phase, message: str = "") -> None:
        for s in self.sinks:
            s.stage(stage, message)

    def progress(self, progress: Progress) -> None:
        for s in self.sinks:
            s.progress(progress)

    def plan(self, plan: LayerPlan) -> None:
        for s in self.sinks:
            s.plan(plan)

    def results(self, results: Results) -> None:
        for s in self.sinks:
            s.results(results)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
