"""One SLURM worker job: the sweep's worker loop, made to survive what a cluster does to jobs.

- Preemption, `scontrol requeue`, `scancel --signal=TERM`: SIGTERM. The running trial checkpoints at its
  next step (study/runtime/stop_request.py) and its point is queued again; SLURM requeues the job (`--requeue`),
  and the job, or any other worker of the launch, resumes the trial from that checkpoint in the same
  MLflow run.
- The time limit: SLURM sends SIGUSR2 `signal_seconds` before it (`--signal`). The trial checkpoints the
  same way and the job requeues itself (`scontrol requeue`), so its next run starts with a fresh limit.

submitit installs its own handlers for these signals before it calls the job (it would checkpoint by
pickling the callable and exit wherever the signal lands); this job replaces them with the step-boundary
stop above as the first thing it does, before its imports: submitit's handler ignores SIGTERM, and a
cancelled job would go on importing and then start a trial. A SIGUSR2 that lands earlier meets
submitit's handler: `checkpoint` lets it requeue the job as it is (the worker keeps no state of its own).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from study.runtime import stop_request

_time_limit_near = False


def _on_usr2(signum: int, frame: object) -> None:
    global _time_limit_near
    _time_limit_near = True
    stop_request.on_signal(signum, frame)


def this_job() -> str:
    """The id scontrol knows this job by: "<array job>_<task>" for an array task."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


class WorkerJob:
    """The callable submitit pickles into each array task; its argument is the worker's settings (JSON)."""

    def checkpoint(self, settings_json: str):
        """submitit's hook for a signal before __call__ installed its own handlers: requeue the same job."""
        import submitit
        return submitit.helpers.DelayedSubmission(self, settings_json)

    def __call__(self, settings_json: str) -> None:
        # Our handlers first: submitit's ignores SIGTERM, and the imports below take seconds
        stop_request.install()
        signal.signal(signal.SIGUSR2, _on_usr2)
        print(f"SLURM job {this_job()} on {os.uname().nodename}: worker of {json.loads(settings_json)['experiment']}",
              flush=True)
        try:
            from study.sweep import worker  # imported on the node, after submitit set up the job
            worker.main([settings_json])
            # Done: the time limit's SIGUSR2 may still come while submitit writes the result, and the handler
            # above would raise inside it; the job would end FAILED (exit 140) with its work done.
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        except KeyboardInterrupt:
            if _time_limit_near:
                print(f"time limit near: the trial checkpointed; requeueing job {this_job()}", flush=True)
                subprocess.run(["scontrol", "requeue", this_job()], check=False, timeout=60)
            else:
                print("stopped by SIGTERM (preempted or requeued): the trial checkpointed", flush=True)
            sys.stdout.flush()
            os._exit(143)  # no submitit result file: SLURM's requeue runs this job again
