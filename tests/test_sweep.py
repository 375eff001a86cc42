"""The sweep driver: grid points run once across workers, lost trials rerun, failures recorded,
runs nested under their sweep, on journal and PostgreSQL storage and an MLflow tracking server."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

import sweep
from study.sweep.optuna_storage import point_of
from tests.helpers import (
    FOUR_POINTS,
    FOUR_POINTS_AND_A_FAILURE,
    PACED,
    check_grid_ran_once,
    child_runs,
    run_sweep,
    start_sweep,
    sweep_command,
    sweep_storage,
    trials,
    wait_for_checkpoint,
    worker_pids,
    write_experiment,
)













@pytest.mark.slow
def test_grid_with_two_workers_runs_each_point_once_and_records_a_failure(tmp_path, corpus_cache, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main([str(exp), "--workers", "2", "--devices", "cpu,cpu", "--tracking-uri", uri,
                       "--no-analysis"]) == 1  # one failed
    out = capsys.readouterr().out
    assert out.count("finished dense-s") == 4 and "FAILED   small-dense-p10-s0" in out
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny_sweep")
    _, parents = child_runs(uri)
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in out  # the UI's runs
    assert parents[0].info.run_id in out and f"mlflow ui --backend-store-uri {uri}" in out
    # each worker's seat (its device; the tiny recipe fixes its own thread count) reaches every trial it ran
    assert parents[0].data.params["devices"] == "cpu,cpu" and parents[0].data.params["workers"] == "2"
    assert {(r.data.params["train.device"], r.data.params["train.threads"]) for r in child_runs(uri)[0]} == {("cpu", "1")}
    # Everything the sweep wrote is under the working directory's runs/ or beside the store, not in ./mlruns.
    assert experiment.artifact_location == (tmp_path / "artifacts").as_uri() and not (tmp_path / "mlruns").exists()
    assert len(list((tmp_path / "artifacts").rglob("model.pt"))) == 4
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs/optuna/tiny_sweep.journal")))
    check_grid_ran_once(uri, storage)
    # A third seed added to the file: only the new points run; the failed point is retried once.
    exp.write_text(exp.read_text().replace('"train.seed" = [0, 1]', '"train.seed" = [0, 1, 2]'))
    capsys.readouterr()
    assert sweep.main([str(exp), "--workers", "2", "--tracking-uri", uri, "--no-analysis"]) == 1
    assert capsys.readouterr().out.count("finished dense-s2") == 2
    done = [point_of(t) for t in trials("tiny_sweep", storage) if t.state == TrialState.COMPLETE]
    assert len(done) == len(set(done)) == 6
    assert sweep.main([str(exp), "--status"]) == 0
    table = capsys.readouterr().out
    assert table.count("COMPLETE") == 6 and table.count("FAIL") == 2 and "dense-s1" in table, table


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_killed_sweep_resumes_and_finishes_every_point_once(tmp_path, corpus_cache, storage_kind, request):
    """Relaunched at once: on PostgreSQL the lost trial's heartbeat is still fresh (its grace period is 120 s),
    but its worker's process is gone from this machine, so it is resumed in this launch."""
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE.split("[[sweep.arms]]\nname = \"impossible\"")[0],
                           epochs=6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = sweep_storage(storage_kind, tmp_path, request)
    command = sweep_command(exp, uri, *(["--storage", storage] if storage_kind == "postgresql" else []))
    proc = start_sweep(command, tmp_path, tmp_path / "launch-1.log")
    wait_for_checkpoint(tmp_path, proc)  # a trial is mid-way
    for pid in [proc.pid, *worker_pids(proc)]:  # driver and worker vanish, as with a lost machine
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    children, _ = child_runs(uri)
    assert [r.info.status for r in children] == ["RUNNING"]  # what a lost machine leaves behind

    result = run_sweep(command, tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    check_grid_ran_once(uri, storage, failing=False)
    children, parents = child_runs(uri)
    assert len(children) == 4  # the killed trial's run was resumed, not duplicated
    resumed = [r for r in children if r.data.tags.get("resumed_from_epoch", "0") != "0"]
    assert len(resumed) == 1
    assert sorted(p.info.status for p in parents) == ["FAILED", "FINISHED"]
    lost = [t for t in trials("tiny_sweep", storage) if t.state == TrialState.FAIL]
    assert len(lost) == 1 and "worker lost" in lost[0].user_attrs["failure_reason"]






def _kill_the_worker_mid_trial(proc, tmp_path: Path, sig: int = signal.SIGKILL) -> None:
    """Waits for a trial's first checkpoint, then sends `sig` to the sweep's one worker."""
    wait_for_checkpoint(tmp_path, proc)  # a trial is mid-way
    workers = worker_pids(proc)
    assert len(workers) == 1
    os.kill(workers[0], sig)  # SIGKILL: out of memory, a preempted node: the worker alone vanishes




@pytest.mark.slow
@pytest.mark.parametrize("sig, options, notice, storage_kind", [
    (signal.SIGKILL, [], "worker 0 lost (exit code -9)", "journal"),  # out of memory, a preempted node
    pytest.param(signal.SIGKILL, [], "worker 0 lost (exit code -9)", "postgresql",  # its heartbeat still fresh
                 marks=pytest.mark.postgres),
    # stopped: heartbeats and progress stop but the process stays; the watchdog kills it
    # (beats every 0.5 s; the limit outlasts a worker's imports on a busy machine)
    (signal.SIGSTOP, ["--hang-minutes", "0.25"], "worker 0 made no progress for 15 s", "journal"),
])
def test_a_lost_or_hung_worker_is_replaced_and_its_trial_resumes_in_the_same_launch(tmp_path, corpus_cache, sig,
                                                                                      options, notice, storage_kind, request):
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE.split("[[sweep.arms]]\nname = \"impossible\"")[0]
                           .replace('grid = { "train.seed" = [0, 1] }', ""), epochs=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = sweep_storage(storage_kind, tmp_path, request)
    if storage_kind == "postgresql":
        options = [*options, "--storage", storage]
    log = tmp_path / "launch.log"
    proc = start_sweep(sweep_command(exp, uri, *options), tmp_path, log,
                       env={**os.environ, "SWEEP_PROGRESS_BEAT_SECONDS": "0.5"})
    _kill_the_worker_mid_trial(proc, tmp_path, sig)
    proc.wait(timeout=600)
    output = log.read_text()
    assert proc.returncode == 0, output[-2000:]
    assert notice in output and "worker 0 lost (exit code -9)" in output and "a fresh worker resumes it" in output
    done = [t for t in trials("tiny_sweep", storage) if t.state == TrialState.COMPLETE]
    assert len(done) == len({point_of(t) for t in done}) == 2
    lost = [t for t in trials("tiny_sweep", storage) if t.state == TrialState.FAIL]
    assert len(lost) == 1 and "worker lost" in lost[0].user_attrs["failure_reason"]
    children, parents = child_runs(uri)
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]  # resumed, not duplicated
    assert len([r for r in children if r.data.tags.get("resumed_from_epoch", "0") != "0"]) == 1
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].data.metrics["sweep/worker_restarts"] == 1


@pytest.mark.slow
def test_a_launch_whose_workers_are_all_lost_ends_its_parent_run_failed(tmp_path, corpus_cache):
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE.split("[[sweep.arms]]\nname = \"impossible\"")[0],
                           epochs=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "launch.log"
    proc = start_sweep(sweep_command(exp, uri, "--max-restarts", "0"), tmp_path, log)
    _kill_the_worker_mid_trial(proc, tmp_path)
    proc.wait(timeout=300)
    output = log.read_text()
    assert proc.returncode == 2 and "waits for the next launch" in output, output[-2000:]
    children, parents = child_runs(uri)
    assert [p.info.status for p in parents] == ["FAILED"] and "1 worker(s)" in parents[0].data.tags["failure_reason"]
    assert [r.info.status for r in children] == ["FAILED"]  # marked lost now, not left RUNNING
    assert "worker lost" in children[0].data.tags["failure_reason"]


@pytest.mark.slow
def test_the_grid_on_postgresql_and_a_tracking_server(tmp_path, corpus_cache, monkeypatch, postgres_storage, mlflow_server):
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE)
    assert sweep.main([str(exp), "--workers", "2", "--storage", postgres_storage,
                       "--tracking-uri", mlflow_server, "--no-analysis"]) == 1
    check_grid_ran_once(mlflow_server, postgres_storage)
    workers = {t.user_attrs["worker"] for t in trials("tiny_sweep", postgres_storage) if "worker" in t.user_attrs}
    assert len(workers) == 2  # both workers took points


def test_bad_experiment_files_are_rejected_before_any_trial(tmp_path, corpus_cache, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {
        '[sweep]\ngrid = { "train.epoch" = [1] }\n': "train.epoch",
        '[sweep]\ngrid = { "adl.tau" = [] }\n': "sweep.grid.adl.tau",
        '[sweep]\ngrid = { "model.dropout" = [0.1, 2.0] }\n': "model.dropout",
        '[[sweep.arms]]\nset = { method = "lottery" }\n': "method",
        '[sweep]\nmode = "grid"\nworker = 2\n': "sweep.worker",
        '[[sweep.arms]]\nset = { method = "small_dense" }\nmatch = "nothing"\n': "sweep.arms[0].match",
        '[[sweep.arms]]\nset = { method = "retrain_pruned" }\nmatch = "dense"\nmatch_where = { "adl.taus" = 1 }\n':
            "sweep.arms[0].match_where: unknown key 'adl.taus'",
        '[[sweep.arms]]\nset = { method = "retrain_pruned" }\n': "prune.source_run",
    }
    for text, key in cases.items():
        exp = write_experiment(tmp_path, corpus_cache, text)
        assert sweep.main([str(exp), "--no-analysis"]) == 2
        err = capsys.readouterr().err
        assert "tiny_sweep.toml" in err and key in err, (text, err)
    assert not (tmp_path / "runs" / "optuna").exists()  # nothing started


@pytest.mark.slow
def test_a_real_search_sweep_ranks_its_searched_settings_by_importance(tmp_path, corpus_cache, monkeypatch, capsys):
    """Eight adaptive-dropout trials (the fewest importances take) whose penalty weight, temperature and FFN
    width Optuna samples, run with the analysis step: the launch prints its Pareto front, each trial's
    settings lie in their ranges (a float on a log scale, a float, an integer in steps), and the importance
    table ranks the searched settings for each target, each column summing to 1. Which one ranks first is
    not asserted: the sampler is unseeded, and with eight trials PED-ANOVA's top 10% is one trial, so even
    a size set by alpha alone is ranked behind tau in about a quarter of draws (simulated from this model's
    measured sizes). tests/test_analysis_factors.py checks the ranking on fixed data."""
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path, corpus_cache, """
[sweep]
mode = "search"
trials = 8
workers = 2
[sweep.search]
"method" = { choices = ["adaptive_dropout"] }
"adl.lr" = { choices = [0.5] }
"adl.alpha" = { low = 0.00003, high = 0.003, log = true }  # 12-66% pruned at 8 epochs: above it every size is the floor
"adl.tau" = { low = 0.3, high = 1.0 }
"model.ffn_dim" = { low = 32, high = 64, step = 32 }
""", epochs=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main([str(exp), "--tracking-uri", uri]) == 0
    assert "Pareto front" in capsys.readouterr().out
    children, _ = child_runs(uri)
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    points = [json.loads(r.data.tags["grid_point"]) for r in children]
    for point in points:
        assert 3e-5 <= point["adl.alpha"] <= 3e-3 and 0.3 <= point["adl.tau"] <= 1.0, point
        assert point["model.ffn_dim"] in (32, 64) and point["method"] == "adaptive_dropout", point
    with open(tmp_path / "figures" / "tiny_sweep" / "importances.csv") as table:
        rows = list(csv.DictReader(table))
    # every setting the trials varied, not the fixed choices; the FFN width is one of two values, the same in
    # all eight trials in about 1 draw in 128 (random sampling before TPE's tenth trial): then it is not ranked
    varied = [key for key in ("adl.alpha", "adl.tau", "model.ffn_dim") if len({p[key] for p in points}) > 1]
    assert "adl.alpha" in varied and "adl.tau" in varied
    assert sorted(row["parameter"] for row in rows) == varied
    for column in ("importance_dev_wer", "importance_reduction"):
        values = [float(row[column]) for row in rows]
        assert all(0 <= v <= 1 for v in values) and sum(values) == pytest.approx(1.0, abs=0.002), (column, rows)


MAGNITUDE_POINT = """
[[sweep.arms]]
name = "magnitude"
set = { method = "magnitude_unstructured", "prune.target_reduction" = 0.5 }
"""


def test_a_dense_run_trained_first_as_another_trials_source_is_the_dense_points_run(tmp_path, corpus_cache,
                                                                                    monkeypatch, capsys):
    """A pruning trial that finds no finished dense run trains it (a run tagged with its parent alone); the
    dense point, reached later, takes that run from its folder. It must then carry the point's study and
    key, or the launch's check counts no finished run for the dense point and fails the launch (seen with
    two workers, when the pruning trial reached the dense model first)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = write_experiment(tmp_path, corpus_cache, MAGNITUDE_POINT)
    assert sweep.main([str(exp), "--tracking-uri", uri, "--no-analysis"]) == 0  # trains the dense source first
    write_experiment(tmp_path, corpus_cache, '[[sweep.arms]]\nname = "dense"\nset = { method = "dense" }\n'
                     + MAGNITUDE_POINT)
    assert sweep.main([str(exp), "--tracking-uri", uri, "--no-analysis"]) == 0, capsys.readouterr().err
    children, _ = child_runs(uri)
    (dense,) = [r for r in children if r.data.tags["method"] == "dense"]  # trained once, for both
    (pruned,) = [r for r in children if r.data.tags["method"] == "magnitude_unstructured"]
    assert pruned.data.tags["source_dense_run_id"] == dense.info.run_id
    (dense_trial,) = [t for t in trials("tiny_sweep", sweep_storage("journal", tmp_path, None))
                      if t.user_attrs.get("method") == "dense"]
    assert dense.data.tags["optuna.study_name"] == "tiny_sweep" and dense.data.tags["grid_point"] == point_of(dense_trial)
    assert dense.data.tags["optuna.trial_number"] == str(dense_trial.number)


@pytest.mark.slow
def test_matched_arm_prunes_the_swept_dense_model_to_each_adaptive_runs_size(tmp_path, corpus_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path, corpus_cache, """
[sweep]
workers = 2
[[sweep.arms]]
name = "dense"
set = { method = "dense" }
[[sweep.arms]]
name = "adl"
set = { method = "adaptive_dropout", "adl.alpha" = 5.0, "adl.lr" = 0.5, "adl.c1" = -8.0, "adl.t0" = 0.0, "adl.t1" = 0.5 }
grid = { "adl.locations" = [["ffn"], ["ffn", "mhsa", "conv"]] }
[[sweep.arms]]
name = "magnitude"
set = { method = "magnitude_structured" }
match = "adaptive_dropout"
[[sweep.arms]]
name = "retrain"
set = { method = "retrain_pruned" }
match = "adaptive_dropout"
match_where = { "adl.locations" = ["ffn", "mhsa", "conv"] }
""", epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main([str(exp), "--tracking-uri", uri, "--no-analysis"]) == 0
    children, _ = child_runs(uri)
    by_method: dict[str, list] = {}
    for run in children:
        by_method.setdefault(run.data.tags["method"], []).append(run)
    adl_sizes = sorted(int(r.data.metrics["params/total"]) for r in by_method["adaptive_dropout"])
    matched = by_method["magnitude_structured"]
    assert sorted(int(r.data.tags["budget.target_params"]) for r in matched) == sorted(set(adl_sizes))
    assert {r.data.tags["source_dense_run_id"] for r in matched} == {by_method["dense"][0].info.run_id}
    assert all(r.data.tags["optuna.study_name"] == "tiny_sweep.matched" for r in matched)
    for run in matched:  # at or just under its adaptive run's size
        target = int(run.data.tags["budget.target_params"])
        assert 0.99 * target <= run.data.metrics["params/total"] <= target
    # the architecture of the one adaptive run match_where names, trained from scratch for train.epochs
    (source,) = [r for r in by_method["adaptive_dropout"] if "conv" in r.data.params["adl.locations"]]
    (retrained,) = by_method["retrain_pruned"]
    assert retrained.data.tags["source_pruned_run_id"] == source.info.run_id
    assert retrained.data.params["prune.source_run"] == source.info.run_id
    assert retrained.data.metrics["params/total"] == source.data.metrics["params/total"]
    assert retrained.data.metrics["train/epochs_total"] == 2


def test_dense_points_are_handed_out_first():
    """Magnitude trials start from the dense model of their recipe: with the dense points first, two
    workers train the dense models at once instead of one waiting for the other."""
    from study.sweep.experiment_file import load_experiment
    from study.sweep.worker import grid_sampler, point_param
    points = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "pareto.toml").points()
    keys = [p.key for p in points]
    study = optuna.create_study(sampler=grid_sampler(points))
    drawn = []
    study.optimize(lambda trial: drawn.append(json.loads(trial.suggest_categorical(point_param(keys), keys))) or 0.0)
    assert [d["method"] for d in drawn[:2]] == ["dense", "dense"] and {d["train.seed"] for d in drawn[:2]} == {0, 1}
    assert sorted(json.dumps(d, sort_keys=True) for d in drawn) == sorted(keys)  # every point once


def test_a_worker_takes_no_trial_before_its_launch_and_leaves_when_its_driver_is_gone(tmp_path, corpus_cache):
    """The driver starts its workers before its MLflow set-up; they begin when the first study carries
    their launch's token (not an earlier launch's), and give up if the driver exits first."""
    import threading

    from study.sweep.optuna_storage import create_studies
    from study.sweep.worker import LAUNCH_ATTR, Worker, WorkerSettings
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE)
    settings = WorkerSettings(str(exp), {}, None, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "runs"),
                              launch="this-launch")
    worker = Worker(settings)
    first = create_studies(worker.storage, "tiny_sweep")[0]
    first.set_user_attr(LAUNCH_ATTR, "an-earlier-launch")
    waiter = threading.Thread(target=worker.wait_for_launch, args=("tiny_sweep",))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive()  # an earlier launch's token does not let it begin
    first.set_user_attr(LAUNCH_ATTR, "this-launch")
    waiter.join(timeout=10)
    assert not waiter.is_alive()

    orphan = Worker(WorkerSettings(**{**settings.__dict__, "launch": "a-launch-never-marked"}))
    orphan.parent_pid = -1  # as if the driver had exited and this process had been adopted
    with pytest.raises(SystemExit, match="exited before its launch began"):
        orphan.wait_for_launch("tiny_sweep")
    # a worker forked from the driver's forkserver: its parent, the server, still there, the driver gone
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    forked = Worker(WorkerSettings(**{**settings.__dict__, "launch": "a-launch-never-marked",
                                      "driver_pid": int(gone.stdout)}))
    with pytest.raises(SystemExit, match="exited before its launch began"):
        forked.wait_for_launch("tiny_sweep")


def test_a_torn_last_journal_record_is_cut_off_with_a_message_and_the_study_goes_on(tmp_path, capsys):
    """A full disk cut the last write short: without the repair the next append runs into the torn line
    and every later read of the journal fails (JSONDecodeError), --status included."""
    import optuna

    from study.sweep.optuna_storage import open_storage
    study = optuna.create_study(study_name="s", storage=open_storage(None, "exp", tmp_path))
    study.add_trial(optuna.trial.create_trial(value=1.0))
    journal = tmp_path / "optuna" / "exp.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 4, "worker_id": "torn", "study_id": 0, "datetime_st')

    storage = open_storage(None, "exp", tmp_path)
    assert "cut short" in capsys.readouterr().out
    assert journal.read_bytes() == whole and (tmp_path / "optuna" / "exp.journal.torn").read_bytes().startswith(b'{"op')
    again = optuna.load_study(study_name="s", storage=storage)
    again.add_trial(optuna.trial.create_trial(value=2.0))
    reread = optuna.load_study(study_name="s", storage=open_storage(None, "exp", tmp_path))
    assert [t.value for t in reread.trials] == [1.0, 2.0]
    assert capsys.readouterr().out == ""  # an intact journal is left alone


@pytest.mark.parametrize("first", ["lower", "higher"])
def test_two_trials_drawing_one_point_never_both_run_it(first):
    """The interleaving that let both run: the higher-numbered trial checks before the lower one has
    recorded its point, then the lower one records and checks."""
    import optuna

    from study.sweep.worker import _taken_by_another
    study = optuna.create_study()
    lower, higher = study.ask(), study.ask()
    order = [lower, higher] if first == "lower" else [higher, lower]
    proceeds = []
    for trial in order:  # each records its point, then checks, before the other records
        trial.set_user_attr("point", "p")
        proceeds.append(not _taken_by_another(study.get_trials(), trial, "p"))
    assert proceeds == [True, False]
    both_recorded = [not _taken_by_another(study.get_trials(), t, "p") for t in (lower, higher)]
    assert sum(both_recorded) == 0  # both recorded before either checked: both yield, the point stays pending


def test_a_point_that_failed_in_this_launch_is_not_run_again_when_the_sampler_draws_it(tmp_path, corpus_cache):
    """Yielded duplicates count as visited for Optuna's grid sampler; with its grid used up it draws at
    random, and a point that had failed in this launch ran again (two FAILs where a launch allows one,
    seen in CI). A drawn point that failed in this launch is skipped; one failed in an earlier launch runs."""
    from study.sweep.optuna_storage import LAUNCH_FIRST_TRIAL, create_studies
    from study.sweep.worker import TrialFailed, Worker, WorkerSettings, point_param
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE)
    worker = Worker(WorkerSettings(str(exp), {}, None, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "runs")))
    study = create_studies(worker.storage, "tiny_sweep")[0]
    study.set_user_attr("parent_run_id", "")
    points = worker.experiment.points()
    keys = [p.key for p in points]
    (impossible,) = [k for k in keys if "impossible" in k]
    failed = study.ask()
    failed.set_user_attr("point", impossible)
    failed.set_user_attr("failure_reason", "BudgetError: no dense shape comes within 3% of 10 parameters")
    study.tell(failed, state=TrialState.FAIL)
    always = optuna.samplers.PartialFixedSampler({point_param(keys): impossible}, optuna.samplers.RandomSampler())
    drawing = optuna.load_study(study_name=study.study_name, storage=worker.storage, sampler=always)
    for first, expected in ((0, TrialState.PRUNED), (1, TrialState.FAIL)):  # failed in this launch, in an earlier one
        study.set_user_attr(LAUNCH_FIRST_TRIAL, first)
        drawing.optimize(worker.objective(drawing, points), n_trials=1, catch=(TrialFailed,))
        drawn = drawing.get_trials(deepcopy=False)[-1]
        assert drawn.state == expected, drawn.user_attrs
    assert "failed earlier in this launch" in drawing.get_trials(deepcopy=False)[1].user_attrs["skipped"]


def test_a_storage_unreachable_past_its_retries_stops_the_workers_and_closes_the_parent(
        tmp_path, corpus_cache, monkeypatch, capsys):
    """The driver's poll raises once the storage's retries are spent: the launch ends with a clear
    message, its workers stopped and its parent run FAILED (it used to exit leaving both running)."""
    import sweep
    from sqlalchemy.exc import OperationalError

    from study.sweep import driver
    from study.sweep.launchers.local import LocalLauncher
    started = []
    real_start = LocalLauncher._start_one
    monkeypatch.setattr(LocalLauncher, "_start_one", lambda *a: started.append(real_start(*a)) or started[-1])
    def outage(*args):
        raise OperationalError("select", {}, ConnectionRefusedError("connection refused"))
    monkeypatch.setattr(driver, "_monitor", outage)
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS_AND_A_FAILURE, epochs=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert sweep.main([str(exp), "--tracking-uri", uri, "--no-analysis"]) == 2
    assert "stayed unreachable" in capsys.readouterr().err
    assert started and all(proc.poll() is not None for proc in started)  # no worker outlives its driver
    children, parents = child_runs(uri)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert "stayed unreachable" in parents[0].data.tags["failure_reason"]



def test_a_cluster_job_of_a_superseded_or_never_marked_launch_stands_down(tmp_path, corpus_cache, monkeypatch, capsys):
    """A job that starts after the user re-ran the command (a later launch's token), or whose driver was killed
    before it marked its launch, used to poll the storage every 0.1 s forever, and requeue at each time limit."""
    import threading

    from study.sweep import worker as worker_module
    from study.sweep.optuna_storage import LAUNCH_ATTR, LAUNCH_NEXT, create_studies
    from study.sweep.worker import Worker, WorkerSettings
    monkeypatch.setattr(worker_module, "CLUSTER_LAUNCH_POLL_SECONDS", 0.05)
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS)
    settings = WorkerSettings(str(exp), {}, None, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "runs"),
                              launch="an-earlier-launch", cluster_job=True)
    job = Worker(settings)
    first = create_studies(job.storage, "tiny_sweep")[0]
    first.set_user_attr(LAUNCH_NEXT, "an-earlier-launch")  # its driver is still setting up: the job waits
    waiter = threading.Thread(target=job.run)
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive()
    first.set_user_attr(LAUNCH_NEXT, "the-rerun")  # the user re-ran the command
    first.set_user_attr(LAUNCH_ATTR, "the-rerun")
    waiter.join(timeout=10)
    assert not waiter.is_alive() and "stands down" in capsys.readouterr().out
    assert not first.get_trials()  # it took nothing

    monkeypatch.setattr(worker_module, "CLUSTER_LAUNCH_WAIT_SECONDS", 0.3)
    never_marked = Worker(WorkerSettings(**{**settings.__dict__, "launch": "the-rerun-2"}))
    first.set_user_attr(LAUNCH_NEXT, "the-rerun-2")  # submitted, then its driver was killed
    assert never_marked.wait_for_launch("tiny_sweep") is False
    assert "was not marked within" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.postgres
def test_a_second_machine_joins_a_running_sweep_and_shares_its_points(tmp_path, corpus_cache, postgres_storage):
    """`--join` from a second process (a second machine sharing the database, the tracking store and runs/):
    its worker takes points of the same sweep, under the same parent run, and no point runs twice."""
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS, epochs=5)  # paced: about 5 s a trial, the joiner gets some
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(exp, uri, "--storage", postgres_storage, "--workers", "1")
    env = {**os.environ, **PACED}
    first = start_sweep(command, tmp_path, tmp_path / "launch-1.log", env=env)
    deadline = time.time() + 180
    while not [t for t in _trials_once_created(postgres_storage) if t.state == TrialState.RUNNING]:
        assert time.time() < deadline and first.poll() is None, "the first launch never started a trial"
        time.sleep(0.5)
    joined = run_sweep([*command, "--join"], tmp_path, env=env)
    assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
    first.wait(timeout=300)
    assert first.returncode == 0, (tmp_path / "launch-1.log").read_text()[-2000:]
    check_grid_ran_once(uri, postgres_storage, failing=False)
    workers = {t.user_attrs["worker"] for t in trials("tiny_sweep", postgres_storage) if t.state == TrialState.COMPLETE}
    assert len(workers) == 2, joined.stdout[-3000:]  # both launches' workers trained points
    _, parents = child_runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the joiner adds no parent of its own


def _trials_once_created(storage) -> list:
    try:
        return trials("tiny_sweep", storage)
    except KeyError:  # the launch has not created its study yet
        return []


def test_each_worker_gets_a_device_in_turn_and_an_equal_share_of_the_cores(tmp_path, corpus_cache):
    from study.sweep.driver import SweepArgs, placements
    from study.sweep.experiment_file import load_experiment
    exp = load_experiment(write_experiment(tmp_path, corpus_cache, FOUR_POINTS), {"train.threads": 0})
    args = SweepArgs(workers=3, storage=None, tracking_uri="", devices=("cuda:0", "cuda:1"), runs_dir=tmp_path)
    cores = len(os.sched_getaffinity(0))
    assert placements(exp, args) == [{"train.device": d, "train.threads": max(1, cores // 3)}
                                     for d in ("cuda:0", "cuda:1", "cuda:0")]
    fixed = load_experiment(exp.path)  # the tiny recipe fixes train.threads = 1: the seat keeps it
    assert placements(fixed, args) == [{"train.device": d} for d in ("cuda:0", "cuda:1", "cuda:0")]
