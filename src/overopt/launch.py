"""Many runs at once: the independent runs (methods × seeds × sweep values) of `overopt run` and `overopt compare`.

The launching process trains or reuses the shared stages first (SFT, labelled data, proxy models and
every ensemble member a run needs), so a run only reads them and writes OUT/runs/<name>/seed<k>/ and
its own checkpoints. Then `run_jobs` sends the runs not finished yet to:

- `--launcher local` (default): `--jobs N` processes (concurrent.futures, spawned, so no torch state is
  forked); `--jobs 1` runs them one after another in this process;
- `--launcher submitit`: one job per run through submitit's AutoExecutor: a Slurm job array (at most
  `--jobs` running at once; 0 = no limit) where Slurm's `sbatch` is found, submitit's local executor
  (every run at once, each in its own process) where it is not. Knobs: the `slurm` section.

Every worker or job builds the Lab from the finished stages (pipeline.build_lab, publish=False) and
runs pipeline.run_job, exactly as `--jobs 1` does. With `batch_runs` (the default) the runs go in groups,
one group at a time per process (or job): its runs are trained together, their sampling one stacked
computation (overopt.batching), the long runs spread over the groups. A run's randomness depends only on
its own seed, so its metrics.jsonl rows (every key but the wall times) are the same whatever the number of jobs or the
launcher, at the same torch threads (tests/test_compare.py). Resuming is unchanged: re-running the
command reuses finished runs and resumes interrupted ones from their checkpoints; a Slurm job that
reaches its time limit is requeued by submitit and resumes the same way.

Threads. `--threads 0` (default) means the usable cores (os.sched_getaffinity: a container's or a Slurm
allocation's, not the machine's) divided by `--jobs`, at least 1: all cores for the shared stages and
for `--jobs 1` (torch's own default there, which OMP_NUM_THREADS can lower); one each for `--jobs 2` on
2 cores; `slurm.cpus_per_task` in a Slurm job. A run's thread count can change the rounding of
reductions split over threads, so it never depends on how many runs are left (on the CPUs measured,
the smoke and default presets give identical results with 1 and 2 threads). The command line also
makes OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`, see cli.main): when other processes
share the cores, the default of spinning for a while after each operation made RL updates tens of
times slower (benchmarks/oversubscription.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from overopt import preempt
from overopt.config import ExperimentConfig
from overopt.progress import StageProgress, console, shared_bar

Named = list[tuple[str, str, ExperimentConfig]]  # (run name, method, its configuration), as resolve_plans takes


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or a Slurm job's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallelism(cfg: ExperimentConfig) -> tuple[int, int]:
    """(runs at once, torch threads per run) of the local launcher: `jobs` 0 = cores ÷ threads;
    `threads` 0 = cores ÷ jobs; both at least 1."""
    cores = usable_cores()
    jobs = cfg.jobs or max(1, cores // max(cfg.threads, 1))
    return jobs, cfg.threads or max(1, cores // jobs)


def train_shared(lab, plans) -> None:
    """Ensemble members beyond the first RM are trained on demand: train them here, before any run, so that
    parallel runs never train (and publish) the same member."""
    ks = [variant.ensemble.k for plan, variant in plans.values() if plan.ensemble]
    if ks and lab.pairs is not None:
        lab.reward_models(max(ks))


def _cost(plan) -> float:
    """Rough relative cost of a run, to start the long ones first and to balance the groups: an OCRM run (two RM
    refits) costs about seven plain runs, GR's second backward pass about one more. Measured on the summarize
    frontier at --jobs 2 (2026-12-06): a group's plain runs took about 17 s each, one OCRM run 120–145 s."""
    return 1.0 + 6.0 * plan.ocrm + 1.0 * ("gr" in plan.parts)


def run_jobs(lab, plans, named: Named, every: list[tuple[str, int]], precision) -> dict:
    """Run every (run name, seed) of `every` not finished yet with lab.cfg's launcher; returns what it did
    (for the timing log)."""
    import torch

    from overopt import distributed
    from overopt.pipeline import is_finished

    cfg = lab.cfg
    todo = [job for job in every if not is_finished(lab, *job)]
    if len(todo) < len(every):
        console.print(f"[dim]reusing {len(every) - len(todo)} finished runs in {Path(cfg.out) / 'runs'}[/dim]")
    if (cfg.jobs != 1 or cfg.launcher != "local") and distributed.world() > 1:
        raise ValueError("--jobs and --launcher submitit start processes of their own: not under accelerate launch")
    jobs, threads = parallelism(cfg)
    if cfg.launcher == "submitit":
        jobs, threads = cfg.jobs or len(todo), cfg.threads or cfg.slurm.cpus_per_task
    in_process = cfg.launcher == "local" and min(jobs, len(todo)) <= 1
    if in_process and not cfg.threads and jobs == 1:
        threads = torch.get_num_threads()  # torch's default: the usable cores, or what OMP_NUM_THREADS says
    groups = run_groups(todo, plans, jobs if not in_process else 1, cfg.batch_runs and distributed.world() == 1)
    record = {"launcher": cfg.launcher, "jobs": jobs, "threads_per_run": threads,
              "groups": [len(group) for group in groups]}  # fmt: skip
    start = time.perf_counter()
    if in_process:
        torch.set_num_threads(threads)
        with precision():
            for group in groups:
                run_group(lab, plans, group)
    elif todo:
        worker_cfg = cfg.model_copy(update={"threads": threads})
        with StageProgress(f"runs ({record['jobs']} at once, {cfg.launcher})") as progress:
            progress.start(len(todo))
            if cfg.launcher == "local":
                _run_pool(worker_cfg, named, groups, min(jobs, len(groups)), progress)
            else:
                _run_submitit(worker_cfg, named, groups, progress)
    return {**record, "runs": len(every), "ran": len(todo), "wall_s": time.perf_counter() - start}


def run_groups(todo: list[tuple[str, int]], plans, jobs: int, together: bool) -> list[list[tuple[str, int]]]:
    """The runs as groups, each trained together in one process: one run each without `together`; else at least
    `jobs` groups of at most batching.MAX_GROUP runs, as many as a multiple of `jobs` (so that no process is left
    alone with the last group while the others wait: 48 runs at --jobs 2 are 4 groups of 12, not 3 of 16), of
    near-equal cost: the long runs (OCRM, GR) first, each to the cheapest group so far (longest processing time
    first), so that a group without an OCRM run takes more runs. Equal costs deal the runs out in turn. Which runs
    share a group changes no run's result (overopt.batching), only when the last group ends."""
    from overopt.batching import MAX_GROUP

    todo = sorted(todo, key=lambda job: -_cost(plans[job[0]][0]))  # the long ones first
    if not together:
        return [[job] for job in todo]
    n = max(min(jobs, len(todo)), -(-len(todo) // MAX_GROUP))
    n = min(len(todo), -(-n // jobs) * jobs)
    groups: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    load = [0.0] * n
    for job in todo:
        i = min((i for i in range(n) if len(groups[i]) < MAX_GROUP), key=lambda i: (load[i], len(groups[i]), i))
        groups[i].append(job)
        load[i] += _cost(plans[job[0]][0])
    return [group for group in groups if group]


def run_group(lab, plans, group: list[tuple[str, int]]) -> None:
    """Train the runs of `group` (lab.cfg.batch_runs: together, overopt.batching; else one after another)."""
    from functools import partial

    from overopt import distributed
    from overopt.batching import RunGroup
    from overopt.pipeline import run_job

    if not lab.cfg.batch_runs or distributed.world() > 1:
        for name, seed in group:
            run_job(lab, plans, name, seed)
        return
    with StageProgress(f"rl: {len(group)} runs together") as bar, shared_bar(bar):
        RunGroup().run([partial(run_job, lab, plans, name, seed) for name, seed in group])


def log_invocation(path: Path, **entry) -> None:
    """Append one invocation (runs, runs it ran, jobs, threads, wall time of the runs) to a JSON log in OUT."""
    from overopt.io import atomic_write_text  # imports torch: not before a submitit job has set OpenMP up

    log = json.loads(path.read_text()) if path.exists() else {"invocations": []}
    log["invocations"].append({"date": time.strftime("%Y-%m-%d %H:%M:%S"), **entry})
    atomic_write_text(path, json.dumps(log, indent=2) + "\n")


# A worker process (local pool) or a submitit job: builds the Lab once from the finished stages, runs jobs.
_WORKER: dict[str, Any] = {}


def _payload(cfg: ExperimentConfig, named: Named) -> tuple[dict, list[tuple[str, str, dict]]]:
    return cfg.model_dump(mode="json"), [(n, m, v.model_dump(mode="json")) for n, m, v in named]


def _init_worker(cfg_data: dict, named: list[tuple[str, str, dict]]) -> None:
    from overopt.pipeline import build_lab, open_testbed, resolve_plans

    console.quiet = True  # the launching process shows one bar for all runs
    preempt.install()  # SIGTERM/SIGUSR1 (sent by the cluster, or passed on by the main process): checkpoint, stop
    cfg = ExperimentConfig.model_validate(cfg_data)
    plans = resolve_plans(cfg, [(n, m, ExperimentConfig.model_validate(v)) for n, m, v in named])
    testbed = open_testbed(cfg, plans)
    _WORKER.update(plans=plans, lab=build_lab(cfg, testbed, plans, publish=False), testbed=testbed)


def _run_in_worker(group: list[tuple[str, int]]) -> int:
    with _WORKER["testbed"].precision():
        run_group(_WORKER["lab"], _WORKER["plans"], group)
    return len(group)


def _run_pool(cfg: ExperimentConfig, named: Named, groups: list[list], workers: int, progress) -> None:
    context = multiprocessing.get_context("spawn")  # no forked torch state: every worker starts clean
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=_payload(cfg, named)) as pool:  # fmt: skip
        pending = {pool.submit(_run_in_worker, group) for group in groups}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    _result(future)  # a failed or preempted run ends the command with its error
                    progress.advance(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # start no other run; those under way end or checkpoint
            raise


def _result(future) -> None:
    """A worker's outcome. A worker still starting up has no signal handlers yet, so a SIGTERM passed on to it
    kills it and breaks the pool: with a stop requested, that is the preemption, not a failure."""
    try:
        future.result()
    except BrokenProcessPool:
        if preempt.requested():
            preempt.stop("the runs under way wrote their checkpoints")
        raise


class _SubmititRun:
    """One group of runs as a submitit job; `checkpoint` lets submitit requeue it at its time limit (its runs
    then resume from their own checkpoints in OUT)."""

    def __init__(self, cfg_data: dict, named: list[tuple[str, str, dict]]):
        self.cfg_data, self.named = cfg_data, named

    def __call__(self, group: list[tuple[str, int]]) -> int:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see cli.main)
        _init_worker(self.cfg_data, self.named)
        return _run_in_worker(group)

    def checkpoint(self, group: list[tuple[str, int]]):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, group)


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError("--launcher submitit needs submitit: pip install 'overopt[cluster]'") from None
    return submitit


def _run_submitit(cfg: ExperimentConfig, named: Named, groups: list[list], progress) -> None:
    submitit = _submitit()
    s = cfg.slurm
    executor = submitit.AutoExecutor(folder=s.folder or Path(cfg.out) / "submitit")
    executor.update_parameters(
        name=f"overopt-{Path(cfg.out).name}", timeout_min=s.timeout_min, cpus_per_task=s.cpus_per_task,
        slurm_array_parallelism=cfg.jobs or len(groups),
        **({"gpus_per_node": s.gpus_per_task} if s.gpus_per_task else {}),
        **({"mem_gb": s.mem_gb} if s.mem_gb else {}),
        **({"slurm_partition": s.partition} if s.partition else {}),
    )  # fmt: skip
    submitted = executor.map_array(_SubmititRun(*_payload(cfg, named)), groups)
    console.print(f"[dim]submitit ({executor.cluster}): {len(submitted)} jobs; logs in {executor.folder}[/dim]")
    pending = list(submitted)
    while pending:
        preempt.check("the submitted jobs go on without this command")  # SIGTERM/SIGUSR1: stop waiting
        for job in [job for job in pending if job.done()]:
            _raise_if_failed(job)
            pending.remove(job)
            progress.advance(job.result())
        time.sleep(1.0 if pending else 0)


def _raise_if_failed(job) -> None:
    """A failed job ends the command: a preempted run, a numerical fault or bad input as in one process
    (one line, the same exit status), anything else with the job's own traceback."""
    from overopt.errors import InUse, NumericalFault, Preempted, StaleArtifactError

    error = job.exception()
    if error is None:
        return
    # submitit's message: a header, then the job's traceback between two dashed lines, then its log paths.
    parts = str(error).split("-" * 22 + "\n")
    trace = parts[1] if len(parts) > 2 else ""
    last = next((line for line in reversed(trace.splitlines()) if line.strip()), "")
    kind, _, message = last.partition(": ")
    known = {cls.__name__: cls for cls in (Preempted, NumericalFault, InUse, StaleArtifactError, ValueError)}
    if kind.rsplit(".", 1)[-1] in known:
        raise known[kind.rsplit(".", 1)[-1]](f"{message} (submitit job {job.job_id}; its log: {job.paths.stderr})")
    raise error
