"""Experiment files: a base configuration plus a `[sweep]` table saying which variants to run.

    method = "dense"              # the base configuration: any keys of study/config/schema.py
    [sweep]
    mode = "grid"                 # grid: every point below; search: Optuna ranges, `trials` of them
    grid = { "train.seed" = [0, 1] }            # axes crossed with every arm
    [[sweep.arms]]                               # one family of variants
    name = "adl"
    set = { method = "adaptive_dropout" }        # fixed overrides
    grid = { "adl.tau" = [0.3, 1.0] }           # the arm's own axes
    [[sweep.arms]]
    name = "magnitude"
    set = { method = "magnitude_structured" }
    match = "adaptive_dropout"   # one point per finished run of that method in this sweep, with
                                 # prune.target_params set to that run's parameter count
    [[sweep.arms]]
    set = { method = "retrain_pruned" }
    match = "adaptive_dropout"   # one point per finished run, its architecture trained from scratch
    match_where = { "adl.target_reduction" = 0.5 }   # only the runs with these settings

Every point is built into a full Config when the file is loaded, so a bad key or value anywhere
is reported (file and key named) before any trial starts.
"""
from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.config import (
    METHODS,
    Config,
    ConfigError,
    build,
    flatten,
    knob,
    read_toml_with_sources,
    section,
    set_dotted,
    to_dict,
)
from study.names import RETRAIN_PRUNED


@dataclass
class ArmSpec:
    """`[[sweep.arms]]`: one family of variants."""
    name: str = knob("", "the arm's name (in run names and tables)")
    set: dict = knob(dict, "dotted key -> value: fixed overrides of the base configuration", factory=True)
    grid: dict = knob(dict, "dotted key -> list of values: the arm's own axes, crossed with [sweep] grid", factory=True)
    match: str = knob("", "a method: one point per size of its finished runs in this sweep, with prune.target_params "
                          "set to that run's parameter count (for retrain_pruned: one point per run, with "
                          "prune.source_run set to its id)", choices=("",) + METHODS)
    match_where: dict = knob(dict, "with match: only the runs with these settings, dotted key -> value, e.g. "
                                   "{ \"adl.pruning_epochs\" = 6 }", factory=True)


@dataclass
class SlurmSpec:
    """`[sweep.slurm]`: the worker jobs of `python sweep.py EXP --launcher slurm` (docs/cluster.md)."""
    partition: str = knob("", "the partition (empty: the cluster's default)")
    time_minutes: int = knob(240, "each worker job's time limit; near it the job's trial checkpoints at its next "
                                  "step and the job is requeued", min=1)
    signal_seconds: int = knob(120, "SIGUSR2 this long before the time limit: time to finish a step and checkpoint",
                               min=1)
    cpus_per_worker: int = knob(4, "cores per worker job (its trials' threads); per rank when trials have "
                                   "train.processes > 1", min=1)
    gpus_per_worker: int = knob(0, "GPUs per worker job (per node when it spans several)", min=0)
    nodes_per_worker: int = knob(1, "nodes per worker job, over which a trial's train.processes ranks are "
                                    "split evenly", min=1)
    mem_gb: int = knob(0, "memory per worker job in GB (0: the partition's default)", min=0)
    account: str = knob("", "sbatch --account")
    qos: str = knob("", "sbatch --qos")
    sbatch: dict = knob(dict, "more sbatch options, e.g. { constraint = \"a100\", exclude = \"node7\" }", factory=True)


@dataclass
class SweepSpec:
    """`[sweep]`: which variants of the base configuration to run (docs/sweeps.md)."""
    mode: str = knob("grid", "grid: every point; search: Optuna samples the search ranges", choices=("grid", "search"))
    trials: int = knob(20, "search mode: the trial budget of the whole sweep", min=1)
    workers: int = knob(1, "trials at once on one machine, unless --workers says otherwise", min=1)
    grid: dict = knob(dict, "dotted key -> list of values: axes crossed with every arm", factory=True)
    search: dict = knob(dict, "dotted key -> {low, high, log, step} or {choices}: search mode's ranges", factory=True)
    slurm: SlurmSpec = section(SlurmSpec, "worker jobs on a SLURM cluster (--launcher slurm)")


@dataclass(frozen=True)
class FinishedRun:
    """A finished trial run of the first phase, as a `match` arm sees it."""
    method: str
    params_total: int
    run_id: str
    settings: dict[str, str]  # the run's MLflow params: every configuration key, as text

    @classmethod
    def planned(cls, cfg: Config) -> "FinishedRun":
        """A grid point's trial before it runs (size and run id unknown)."""
        return cls(cfg.method, 0, "", {key: str(value) for key, value in flatten(to_dict(cfg)).items()})

    def fits(self, where: dict[str, Any]) -> bool:
        return all(self.settings.get(key) == str(value) for key, value in where.items())


@dataclass(frozen=True)
class Point:
    """One variant: the overrides that turn the base configuration into its Config."""
    arm: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:  # stable across launches: the grid value Optuna stores
        return json.dumps({"arm": self.arm, **dict(self.overrides)}, sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> "Point":
        values = json.loads(key)
        arm = values.pop("arm")
        return cls(arm, tuple(sorted(values.items())))


@dataclass
class Experiment:
    path: Path
    name: str
    base: dict  # the TOML without [sweep]
    spec: SweepSpec
    arms: list[ArmSpec]
    overrides: dict[str, Any] = field(default_factory=dict)  # --set: part of every point, applied last
    sources: list[Path] = field(default_factory=list)  # the file and the files it extends

    def config(self, point: Point | None = None, extra: dict[str, Any] | None = None) -> Config:
        tree = copy.deepcopy(self.base)
        for key, value in [*(point.overrides if point else self.overrides.items()), *(extra or {}).items()]:
            set_dotted(tree, key, value)
        try:
            cfg = build(Config, tree)
        except ConfigError as exc:
            where = f" (arm {point.arm!r}, {dict(point.overrides)})" if point else ""
            raise ConfigError(f"{self.path}{where}: {exc}") from None
        cfg.tracking.experiment = cfg.tracking.experiment or self.name
        return cfg

    def points(self) -> list[Point]:
        """The grid points known before any trial runs (every arm without `match`)."""
        return [p for arm in self.arms if not arm.match for p in self.arm_points(arm, {})]

    def arm_method(self, arm: ArmSpec) -> str:
        return str(arm.set.get("method", self.base.get("method", "dense")))

    def matched_points(self, finished: list[FinishedRun]) -> list[Point]:
        """Points of the `match` arms, given the finished trials so far."""
        points = []
        for arm in self.arms:
            runs = sorted((r for r in finished if r.method == arm.match and r.fits(arm.match_where)),
                          key=lambda r: (r.params_total, r.run_id))
            if self.arm_method(arm) == RETRAIN_PRUNED:
                extras = [{"prune.source_run": r.run_id} for r in runs]
            else:
                extras = [{"prune.target_params": t} for t in sorted({r.params_total for r in runs})]
            for extra in extras:
                points.extend(self.arm_points(arm, extra))
        return points

    def placeholder_match(self, arm: ArmSpec) -> dict[str, Any]:
        """What a matched point gets from its run, with a stand-in value: the point must build at load time."""
        return {"prune.source_run": "0" * 32} if self.arm_method(arm) == RETRAIN_PRUNED else {"prune.target_params": 1}

    def arm_points(self, arm: ArmSpec, extra: dict[str, Any]) -> list[Point]:
        """The arm's grid crossed with the common one; an arm's own `set` and `grid` win over the
        common axes (e.g. a baseline pinned to one seed), and repeated points are dropped."""
        axes = {**self.spec.grid, **arm.grid}
        points = []
        for values in itertools.product(*axes.values()):
            chosen = dict(zip(axes, values))
            common = {k: v for k, v in chosen.items() if k not in arm.set and k not in arm.grid}
            overrides = {**common, **arm.set, **{k: chosen[k] for k in arm.grid}, **extra, **self.overrides}
            point = Point(arm.name, tuple(sorted(overrides.items())))
            if point not in points:
                points.append(point)
        return points


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Reads and checks an experiment file; a file with no [sweep] table is a single trial."""
    path = Path(path)
    tree, sources = read_toml_with_sources(path)
    sweep = tree.pop("sweep", {})
    try:
        raw_arms = sweep.pop("arms", [{}]) if isinstance(sweep, dict) else sweep
        spec = build(SweepSpec, sweep, "sweep.")
        if not isinstance(raw_arms, list) or not raw_arms:
            raise ConfigError("sweep.arms: expected a non-empty list of tables")
        arms = [build(ArmSpec, arm, f"sweep.arms[{i}].") for i, arm in enumerate(raw_arms)]
        _check_axes(spec.grid, "sweep.grid")
        for i, arm in enumerate(arms):
            arm.name = arm.name or str(arm.set.get("method", tree.get("method", "dense")))
            _check_axes(arm.grid, f"sweep.arms[{i}].grid")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if len({a.name for a in arms}) != len(arms):
        raise ConfigError(f"{path}: sweep.arms: two arms share a name")
    name = (overrides or {}).get("tracking.experiment") or tree.get("tracking", {}).get("experiment") or path.stem  # the MLflow experiment and Optuna study
    experiment = Experiment(path, name, tree, spec, arms, dict(overrides or {}), sources)
    from study.method.reachable import check_reachable  # model code (torch): not for readers of experiment files alone
    for point in experiment.points():  # every known point must build, and reach the size it asks for
        cfg = experiment.config(point)
        try:
            check_reachable(cfg)
        except ValueError as exc:
            raise ConfigError(f"{path} (arm {point.arm!r}): {exc}") from None
    known_keys = set(flatten(to_dict(Config())))
    for i, arm in enumerate(arms):
        unknown = sorted(set(arm.match_where) - known_keys)
        if unknown or (arm.match_where and not arm.match):
            raise ConfigError(f"{path}: sweep.arms[{i}].match_where: "
                              + (f"unknown key {unknown[0]!r}" if unknown else "needs match (the method whose runs it filters)"))
        if arm.match:  # a matched point must build too, with a placeholder budget or source
            for point in experiment.arm_points(arm, experiment.placeholder_match(arm)):
                experiment.config(point)
    if spec.mode == "search":
        _check_search(experiment)
    return experiment


def _check_axes(axes: dict, where: str) -> None:
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")


SEARCH_KEYS = {"low", "high", "log", "step", "choices"}


def _check_search(experiment: Experiment) -> None:
    if not experiment.spec.search:
        raise ConfigError(f"{experiment.path}: sweep.search: search mode needs at least one range")
    for key, rng in experiment.spec.search.items():
        where = f"{experiment.path}: sweep.search.{key}"
        if not isinstance(rng, dict) or set(rng) - SEARCH_KEYS or not ({"low", "high"} <= set(rng) or "choices" in rng):
            raise ConfigError(f"{where}: expected {{low, high[, log, step]}} or {{choices}}, got {rng!r}")
        probe = rng["choices"] if "choices" in rng else [rng["low"], rng["high"]]
        for value in probe:
            experiment.config(Point("search", ()), {key: value})
