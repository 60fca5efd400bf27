"""Stages and the one runner that runs them.

A stage declares the settings groups it reads, the artifacts it reads and writes, and what it
depends on outside the folder (a weights file, an image folder), as digests. Its record in the
manifest keeps those; a stage whose key, input and output digests are unchanged is up to date and
is not run again ("up to date" in the progress line), unless forced.

The failure contract, the same for every stage:
- SIGINT / KeyboardInterrupt: the stage's staged files are dropped; the folder is as it was before
  the stage (a folder this command created and left empty is removed).
- anything else: the failure is recorded in the manifest, manifest.json and report.md are written,
  and StageFailed names the stage (a UserError: one line). InternalError (a bug) keeps its traceback.
- a stage that ran but judged its result bad (parity beyond tolerance) returns `failure`: its files
  are kept (parity.json says why), and the same StageFailed is raised after they are recorded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rmeeto_export.errors import InternalError, UserError, first_line
from rmeeto_export.pipelines.folder import STAGING_PREFIX, BuildFolder, Staging, sigint_held_back
from rmeeto_export.pipelines.settings import BuildSettings

Log = Callable[[str], None]


class StageFailed(UserError):
    """A stage failed; the message names it, and the manifest and report record it."""


@dataclass
class StageResult:
    note: str = ""
    status: str = "ok"  # "ok", "skipped" (with the reason in note) or "failed"
    failure: Optional[str] = None  # why a stage that ran judged its result bad
    manifest: dict[str, Any] = field(default_factory=dict)  # top-level manifest entries (schedule, parity, engine)


@dataclass
class StageContext:
    """What a running stage sees: settings, the folder (inputs), staging (outputs), the model once loaded."""

    folder: BuildFolder
    settings: BuildSettings
    staging: Staging
    log: Log
    values: dict[str, Any]  # in-memory results of earlier stages of this run, e.g. "model"

    def input(self, name: str) -> Path:
        return self.folder.path(name)

    def output(self, name: str) -> Path:
        return self.staging.path(name)

    @property
    def model(self) -> Any:
        """The model the load stage made; the runner runs load before any stage that `uses` it."""
        if "model" not in self.values:
            raise InternalError("a stage uses the model but no load stage ran before it")
        return self.values["model"]


def _no_external(folder: BuildFolder) -> dict[str, Optional[str]]:
    return {}


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable[[StageContext], StageResult]
    groups: tuple[str, ...] = ()  # settings groups it reads (BuildSettings fields)
    inputs: tuple[str, ...] = ()  # artifacts it reads
    outputs: tuple[str, ...] = ()  # artifacts it may write
    external: Callable[[BuildFolder], dict[str, Optional[str]]] = _no_external  # digests of what it reads outside
    uses: tuple[str, ...] = ()  # in-memory values of earlier stages it needs (e.g. "model")
    provides: tuple[str, ...] = ()  # in-memory values it makes; it runs only when a later stage needs them

    def key(self, settings: BuildSettings, folder: BuildFolder) -> str:
        groups = settings.to_json()
        described = {"settings": {name: groups[name] for name in self.groups},
                     "external": self.external(folder)}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def digests(folder: BuildFolder, names: tuple[str, ...] | list[str]) -> dict[str, Optional[str]]:
    return {name: folder.digest(name) for name in names}


def up_to_date(stage: Stage, folder: BuildFolder, settings: BuildSettings) -> bool:
    record = folder.stage_record(stage.name)
    if record.get("status") != "ok" or "key" not in record:
        return False
    return (record["key"] == stage.key(settings, folder)
            and record["inputs"] == digests(folder, stage.inputs)
            and record["outputs"] == digests(folder, list(record["outputs"])))


def check_inputs_present(stages: list[Stage], folder: BuildFolder, settings: BuildSettings) -> None:
    """UserError, before any stage runs, when a stage reads a file that neither the folder nor an earlier stage has."""
    produced: set[str] = set()
    for stage in stages:
        missing = [name for name in stage.inputs if name not in produced and not folder.path(name).is_file()]
        if missing:
            raise UserError(f"{folder.root} lacks {', '.join(missing)}: run `rmeeto-export build --out {folder.root}` first")
        produced.update(stage.outputs)


def plan(stages: list[Stage], folder: BuildFolder, settings: BuildSettings, force: set[str]) -> list[bool]:
    """Which stages may have to run: forced, not up to date, or reading what an earlier one may rewrite."""
    may_run: list[bool] = []
    rewritten: set[str] = set()
    for stage in stages:
        runs = (stage.name in force or bool(rewritten.intersection(stage.inputs))
                or not up_to_date(stage, folder, settings))
        may_run.append(runs)
        if runs:
            rewritten.update(stage.outputs)
    needed = {value for stage, runs in zip(stages, may_run) if runs for value in stage.uses}
    # A stage that only makes in-memory values (load) runs when forced or when a stage that may run needs them.
    return [(stage.name in force or bool(needed.intersection(stage.provides))) if stage.provides else runs
            for stage, runs in zip(stages, may_run)]


class Runner:
    """Runs stages in order on one folder, with numbered progress lines and the failure contract above."""

    def __init__(self, folder: BuildFolder, stages: list[Stage], log: Log, force: tuple[str, ...] = ()) -> None:
        self.folder, self.stages, self.log, self.force = folder, stages, log, set(force)
        unknown = self.force - {stage.name for stage in stages}
        if unknown:
            raise InternalError(f"forced stages {sorted(unknown)} are not in this run")

    def run(self) -> BuildFolder:
        folder, settings = self.folder, self.folder.settings
        check_inputs_present(self.stages, folder, settings)
        created = _missing_parents(folder.root)
        values: dict[str, Any] = {}
        try:
            for number, (stage, may_run) in enumerate(zip(self.stages, plan(self.stages, folder, settings, self.force)), 1):
                self.log(f"[{number}/{len(self.stages)}] {stage.title} ...")
                forced = stage.name in self.force
                if not may_run or (not stage.provides and not forced and up_to_date(stage, folder, settings)):
                    reason = "not needed: the stages that use it are up to date" if stage.provides else \
                        "up to date: inputs and settings unchanged since its last run"
                    self.log(f"      {reason}")
                    continue
                self._run_one(stage, settings, values)
        except KeyboardInterrupt:
            _remove_if_empty(created)
            raise
        return folder

    def _run_one(self, stage: Stage, settings: BuildSettings, values: dict[str, Any]) -> None:
        folder = self.folder
        started = time.perf_counter()
        with Staging(folder, stage.name) as staging:
            context = StageContext(folder, settings, staging, self.log, values)
            try:
                result = stage.run(context)
            except KeyboardInterrupt:
                raise
            except Exception as err:
                seconds = time.perf_counter() - started
                message = first_line(err) if isinstance(err, UserError) else f"{type(err).__name__}: {first_line(err)}"
                folder.record_stage(stage.name, {"status": "failed", "seconds": round(seconds, 3), "note": message})
                folder.save()
                if isinstance(err, InternalError):
                    raise
                raise StageFailed(f"stage '{stage.name}' failed: {message}") from err
            seconds = time.perf_counter() - started
            with sigint_held_back():
                written = staging.move_into_place()
                record = {"status": "failed" if result.failure else result.status, "seconds": round(seconds, 3),
                          "note": result.failure or result.note}
                if result.status == "ok" and not result.failure:
                    record.update(key=stage.key(settings, folder), inputs=digests(folder, stage.inputs),
                                  outputs=digests(folder, written))
                folder.record_stage(stage.name, record)
                folder.manifest.update(result.manifest)
                folder.save()
        if result.failure:
            raise StageFailed(f"stage '{stage.name}' failed: {result.failure}")
        note = f": {result.note}" if result.note else ""
        self.log(f"      {record['status']} in {seconds:.1f} s{note}")


def _missing_parents(root: Path) -> list[Path]:
    """`root` and its ancestors that do not exist yet, deepest first."""
    missing = []
    path = root.absolute()
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    """Undo the folders this run created, where an interrupt left them empty."""
    for path in created:
        for staging in path.glob(f"{STAGING_PREFIX}*") if path.is_dir() else ():
            shutil.rmtree(staging, ignore_errors=True)
        try:
            path.rmdir()
        except OSError:
            return
