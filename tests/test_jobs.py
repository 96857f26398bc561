"""Many runs at once (overopt.launch): how `--jobs` and `--threads` split the cores, the OpenMP wait policy
the command line sets before torch loads, and the launcher's one-line refusals. The runs themselves
(`--jobs 2` == `--jobs 1`, the submitit launcher) are checked in tests/test_compare.py, on its smoke lab."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from overopt import launch
from overopt.cli import main
from overopt.config import ExperimentConfig


@pytest.mark.parametrize(
    ("jobs", "threads", "expected"),
    [
        (1, 0, (1, 8)),  # the default: one run at a time on every core
        (2, 0, (2, 4)),  # --jobs 2: the cores split between them
        (3, 0, (3, 2)),
        (16, 0, (16, 1)),  # never fewer than one thread
        (0, 1, (8, 1)),  # compare's default: one process per core, one thread each
        (0, 0, (8, 1)),
        (0, 3, (2, 3)),
        (2, 3, (2, 3)),  # both given: as given
    ],
)
def test_jobs_and_threads_split_the_usable_cores(monkeypatch, jobs, threads, expected):
    monkeypatch.setattr(launch, "usable_cores", lambda: 8)
    assert launch.parallelism(ExperimentConfig.model_construct(jobs=jobs, threads=threads)) == expected


def test_usable_cores_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this platform")
    assert launch.usable_cores() == len(os.sched_getaffinity(0)) >= 1


def test_the_command_line_makes_openmp_wait_passively_before_torch_loads(monkeypatch, tmp_path):
    # torch reads OMP_WAIT_POLICY when it loads: the command line must set it before anything imports torch.
    code = "import sys, overopt.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "missing")])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "")  # the user's choice (here: the library's own default) is kept
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "missing")])
    assert os.environ["OMP_WAIT_POLICY"] == ""


def test_launcher_fields_are_checked_and_submitit_is_optional(monkeypatch, capsys, tmp_path):
    for bad, message in ((["--launcher", "ray"], "launcher"), (["--jobs", "-1"], "jobs")):
        with pytest.raises(SystemExit):
            main(["run", "--preset", "smoke", "--out", str(tmp_path / "never"), *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'overopt\[cluster\]'"):
        launch._submitit()


class _FailedJob:
    """A submitit job whose run failed, as submitit reports it (header, the job's traceback, log paths)."""

    job_id = "42_0"
    paths = type("Paths", (), {"stderr": "OUT/submitit/42_0_0_log.err"})()

    def __init__(self, last_line: str):
        self.last_line = last_line

    def exception(self):
        dashes = "-" * 22
        return RuntimeError(
            f"Job (task=0) failed during processing with trace:\n{dashes}\nTraceback (most recent call last):\n"
            f'  File "x.py", line 1, in <module>\n{self.last_line}\n\n{dashes}\n'
            f"You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - a\n  - b"
        )


def test_a_failed_submitit_job_ends_the_command_as_the_same_failure_in_one_process():
    from overopt.errors import NumericalFault, Preempted

    cases = {
        "overopt.errors.Preempted: SIGTERM received; rerun the same command to resume": Preempted,
        "overopt.errors.NumericalFault: rl step 3: non-finite loss": NumericalFault,
        "ValueError: OUT/artifacts/rm: cannot load it (truncated)": ValueError,
    }
    for line, kind in cases.items():
        with pytest.raises(kind) as caught:
            launch._raise_if_failed(_FailedJob(line))
        where = "(submitit job 42_0; its log: OUT/submitit/42_0_0_log.err)"
        assert str(caught.value) == f"{line.partition(': ')[2]} {where}"
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):  # a bug: the job's own traceback
        launch._raise_if_failed(_FailedJob("ZeroDivisionError: division by zero"))


def test_a_pool_broken_by_the_stop_signal_is_a_preemption(monkeypatch):
    """A SIGTERM passed on to a worker that has not installed its handlers yet kills it: the command then
    ends as preempted (exit 75, resumable), not with a BrokenProcessPool traceback."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from overopt import launch, preempt
    from overopt.errors import Preempted

    broken = Future()
    broken.set_exception(BrokenProcessPool("a worker died"))
    with pytest.raises(BrokenProcessPool):  # no stop asked for: a real failure
        launch._result(broken)
    monkeypatch.setattr(preempt, "_requested", "SIGTERM")
    with pytest.raises(Preempted, match="SIGTERM received; the runs under way wrote their checkpoints"):
        launch._result(broken)


@pytest.mark.parametrize(
    ("runs", "jobs", "sizes"),
    [(48, 2, [12] * 4), (48, 1, [16] * 3), (6, 2, [3, 3]), (3, 2, [2, 1]), (40, 3, [14, 13, 13]),
     (50, 3, [9] * 2 + [8] * 4), (1, 2, [1])],
)  # fmt: skip
def test_run_groups_keep_every_process_busy_to_the_end(runs, jobs, sizes):
    """Groups of at most MAX_GROUP runs, as many as a multiple of --jobs: 48 runs at --jobs 2 are 4 groups of 12
    (2 rounds on each process), not 3 of 16 (the third alone on one process while the other waits)."""
    from types import SimpleNamespace

    plans = {"none": (SimpleNamespace(ocrm=False, parts=("none",)), None)}
    groups = launch.run_groups([("none", s) for s in range(runs)], plans, jobs, together=True)
    assert [len(g) for g in groups] == sizes
    assert sorted(s for g in groups for _, s in g) == list(range(runs))


def test_run_groups_balance_the_groups_cost():
    """The summarize frontier's mix (3 OCRM runs, 5 GR, 29 others at --jobs 2): dealt out in turn, the one group
    without an OCRM run ended 90 s before the others (2026-12-06); balanced by cost, the groups' costs are
    within one plain run of each other and the OCRM runs are spread out."""
    from types import SimpleNamespace

    plans = {"ocrm+kl": (SimpleNamespace(ocrm=True, parts=("ocrm", "kl")), None),
             "gr": (SimpleNamespace(ocrm=False, parts=("gr",)), None),
             "kl": (SimpleNamespace(ocrm=False, parts=("kl",)), None)}  # fmt: skip
    todo = [("ocrm+kl", s) for s in range(3)] + [("gr", s) for s in range(5)] + [("kl", s) for s in range(29)]
    groups = launch.run_groups(todo, plans, 2, together=True)
    costs = [sum(launch._cost(plans[name][0]) for name, _ in g) for g in groups]
    assert len(groups) == 4 and sum(costs) == 3 * 7 + 5 * 2 + 29
    assert max(costs) - min(costs) <= 1.0
    assert sorted(sum(name == "ocrm+kl" for name, _ in g) for g in groups) == [0, 1, 1, 1]
    assert sorted(job for g in groups for job in g) == sorted(todo)
    # round robin (the rule before) left the group without OCRM short of the others
    robin = [todo[i::4] for i in range(4)]
    robin_costs = [sum(launch._cost(plans[name][0]) for name, _ in g) for g in robin]
    assert max(robin_costs) - min(robin_costs) > 1.0
