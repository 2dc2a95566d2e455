"""Many independent trainings at once: worker processes on this machine, or Ray tasks.

A job is one run-cache entry: a training of `cached_run` or a ForkMerge run of
`cached_forkmerge`. The executor fills the cache; the command then reads every entry in its
own order, as if it had trained them itself. So the numbers never depend on which worker
trained what, or when: each training is seeded by its own config, and its thread count is
part of that config (and of its cache key).

Engines, never a scheduler of our own:

- `local`: a thread pool of `jobs` threads (`concurrent.futures`), each training in a
  process of its own started by `multiprocessing`'s forkserver, which has imported torch and
  ntlab once, so a process starts in milliseconds instead of seconds. A process that dies
  (killed, out of memory) fails its own training only; the others go on.
- `ray`: one Ray task per training (`num_cpus` = its threads, `num_gpus` = `--gpus-per-job`
  where GPUs are used), retried by Ray itself (`max_retries`) when a worker or a node is lost.
  The task returns the entry's files and the driver stores them where its own cache lacks
  the entry, so the workers need no file system shared with the driver — only the data
  under their own `NTLAB_HOME` and the same ntlab code (checked: a worker with other code
  fails its job).

Every job's training is deduplicated by cache entry before anything starts, and STL
trainings are submitted first (the cells' baselines), so no two workers train the same
entry in one command; across processes the cache's own rules apply.

From Python, a script that calls `run_jobs` with local workers must guard its entry point
with `if __name__ == "__main__":` — multiprocessing's rule for every start method but fork:
each worker imports the script's main module, and an unguarded call would start workers
again from there (`python -m ntlab` is guarded; a notebook has no main file to import).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ntlab.catalog import EXECUTORS
from ntlab.config import ForkMergeOptions, TrainConfig
from ntlab.errors import NtlabError

RAY_RETRIES = 2  # Ray re-runs a task whose worker or node was lost this many times


@dataclass(frozen=True)
class Job:
    """One training for the cache: `cfg` alone (`cached_run`) or with ForkMerge's branches
    and options (`cached_forkmerge`); `label` is how progress names it."""

    cfg: TrainConfig
    branches: tuple[Any, ...] | None = None  # BranchSpec, for a ForkMerge run
    fm: ForkMergeOptions | None = None
    label: str = ""

    @property
    def is_forkmerge(self) -> bool:
        return self.branches is not None

    def folder(self) -> Path:
        """The job's cache entry."""
        if self.is_forkmerge:
            from ntlab.core.forkmerge import forkmerge_cache_dir

            return forkmerge_cache_dir(self.cfg, list(self.branches), self.fm)
        from ntlab.core.runner import run_cache_dir

        return run_cache_dir(self.cfg)

    def total(self) -> int:
        """Progress units of the job: steps, or ForkMerge's branch steps."""
        return self.cfg.steps * (len(self.branches) if self.is_forkmerge else 1)

    def run(self, on_step: Callable[[int], None] | None = None) -> tuple[dict, str]:
        """(results, "cache" | "run") through the cache, in this process."""
        if self.is_forkmerge:
            from ntlab.core.forkmerge import cached_forkmerge

            return cached_forkmerge(self.cfg, list(self.branches), self.fm, on_step)
        from ntlab.core.runner import cached_run

        return cached_run(self.cfg, on_step)


@dataclass
class Outcome:
    job: Job
    source: str | None = None  # "run" or "cache" when it succeeded
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Settings:
    """How to run many trainings: `executor` local or ray, `jobs` at once (local), the GPU
    share of each (`gpus_per_job`), the Ray cluster (`ray_address`; None starts a local one
    with this machine's cores)."""

    executor: str = "local"
    jobs: int = 1
    gpus_per_job: float = 1.0
    ray_address: str | None = None

    @property
    def parallel(self) -> bool:
        return self.executor == "ray" or self.jobs > 1


class Display(Protocol):
    """What the command shows while jobs run (called from several threads)."""

    def cached(self, job: Job) -> None: ...
    def started(self, job: Job, pid: int | None = None) -> None: ...
    def step(self, job: Job, done: int) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


class Silent:
    def cached(self, job: Job) -> None:
        pass

    def started(self, job: Job, pid: int | None = None) -> None:
        pass

    def step(self, job: Job, done: int) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        pass


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(jobs: int) -> int:
    """Each of `jobs` parallel trainings gets an equal share of the cores, at least one."""
    return max(1, cores() // max(1, jobs))


def check_settings(settings: Settings) -> Settings:
    from ntlab.checks import check_number
    from ntlab.errors import unknown_name

    if settings.executor not in EXECUTORS:
        raise unknown_name("--executor", settings.executor, EXECUTORS)
    check_number("--jobs", settings.jobs, low=1, high=1024, integer=True)
    check_number("--gpus-per-job", settings.gpus_per_job, low=0, low_open=True, high=64)
    if settings.ray_address is not None and settings.executor != "ray":
        raise NtlabError("--ray-address is for --executor ray; add --executor ray")
    if settings.executor == "ray":
        _import_ray()  # before any work: say how to install it
    return settings


def plan(jobs: Iterable[Job]) -> list[Job]:
    """Each cache entry once, STL trainings first (they are every cell's baseline)."""
    seen: dict[Path, Job] = {}
    for job in jobs:
        seen.setdefault(job.folder(), job)
    unique = list(seen.values())
    return sorted(unique, key=lambda j: 0 if (not j.is_forkmerge and j.cfg.method == "stl") else 1)


def run_jobs(
    jobs: Iterable[Job], settings: Settings, display: Display | None = None
) -> list[Outcome]:
    """Run every job not in the cache yet with `settings`; one outcome per planned job (a
    failed job has its `error`; nothing is raised for it)."""
    from ntlab.cache import entry_results

    display = display or Silent()
    todo, outcomes = [], []
    for job in plan(jobs):
        if entry_results(job.folder()) is not None:
            display.cached(job)
            outcomes.append(Outcome(job, source="cache"))
        else:
            todo.append(job)
    if not todo:
        return outcomes
    if settings.executor == "ray":
        return outcomes + _run_ray(todo, settings, display)
    return outcomes + _run_local(todo, settings, display)


def failures_message(failed: list[Outcome], retry: str) -> str:
    """One line naming what failed (the first few) and how to retry."""
    names = "; ".join(f"{o.job.label or o.job.cfg.method}: {o.error}" for o in failed[:3])
    more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
    count = f"{len(failed)} training{'s' if len(failed) > 1 else ''} failed"
    return f"{count}: {names}{more}; {retry}"


# --- local worker processes ---------------------------------------------------------------

_PRELOAD = ["ntlab.core.runner", "ntlab.core.forkmerge"]


def _context():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _devices(settings: Settings, slot: int) -> str | None:
    """The CUDA device of worker slot `slot` where GPUs are visible (None: the config's)."""
    import torch

    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    return f"cuda:{int(slot * settings.gpus_per_job) % count}"


def _on_device(job: Job, device: str | None) -> Job:
    if device is None or job.cfg.device == "cpu":
        return job
    return replace(job, cfg=TrainConfig(**{**asdict(job.cfg), "device": device}))


def _run_local(todo: list[Job], settings: Settings, display: Display) -> list[Outcome]:
    ctx = _context()
    slots: list[int] = list(range(settings.jobs))
    lock = threading.Lock()
    live: set[Any] = set()

    def one(job: Job) -> Outcome:
        with lock:
            slot = slots.pop(0)
        try:
            return _in_process(ctx, _on_device(job, _devices(settings, slot)), job, display, live)
        finally:
            with lock:
                slots.append(slot)

    outcomes: list[Outcome] = []
    pool = concurrent.futures.ThreadPoolExecutor(settings.jobs, thread_name_prefix="ntlab-job")
    try:
        futures = [pool.submit(one, job) for job in todo]  # submitted in plan order
        for future in concurrent.futures.as_completed(futures):
            outcomes.append(future.result())
    except BaseException:  # Ctrl-C: stop every training under way, then say so
        for process in list(live):
            with contextlib.suppress(Exception):
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    order = {job.folder(): i for i, job in enumerate(todo)}
    return sorted(outcomes, key=lambda o: order[o.job.folder()])


def _in_process(ctx, job: Job, shown: Job, display: Display, live: set) -> Outcome:
    """Train `job` in a forked worker process; `shown` is the job as the command knows it."""
    start = time.monotonic()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(job, send, _ntlab_env()), daemon=True)
    process.start()
    display.started(shown, process.pid)
    live.add(process)
    send.close()
    status: tuple[str, str] | None = None
    try:
        while True:
            try:
                kind, value = receive.recv()
            except (EOFError, OSError):
                break
            if kind == "step":
                display.step(shown, value)
            else:
                status = (kind, value)
        process.join()
    finally:
        live.discard(process)
        receive.close()
    if status is not None and status[0] == "done":
        outcome = Outcome(shown, source=status[1])
    elif status is not None:
        outcome = Outcome(shown, error=status[1])
    else:
        outcome = Outcome(shown, error=_death(process.exitcode))
    outcome.seconds = time.monotonic() - start
    display.finished(outcome)
    return outcome


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"its worker process was killed ({name})"
    return f"its worker process exited with code {exitcode} before finishing"


def _ntlab_env() -> dict[str, str]:
    """The parent's ntlab settings for a worker (the forkserver kept the environment of its
    own start)."""
    return {k: v for k, v in os.environ.items() if k.startswith("NTLAB_")}


def _child(job: Job, send, env: dict[str, str]) -> None:
    """A worker process: one training through the cache, its steps sent to the parent."""
    _die_with_parent()
    for key in [k for k in os.environ if k.startswith("NTLAB_")]:
        del os.environ[key]
    os.environ.update(env)
    try:
        import torch

        if job.cfg.threads:
            torch.set_num_threads(job.cfg.threads)
        every = max(1, job.total() // 50)
        calls = 0

        def on_step(_step: int) -> None:
            nonlocal calls
            calls += 1  # counted: ForkMerge's branches each restart their step
            if calls % every == 0:
                send.send(("step", calls))

        _, source = job.run(on_step)
        send.send(("done", source))
    except NtlabError as exc:
        send.send(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which names the job
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


def _die_with_parent() -> None:
    """Linux: the worker is killed when the process that started it goes (a killed command
    leaves no orphan training; the cache's lock of its entry is then stale)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --- Ray ------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise NtlabError(
            "--executor ray needs Ray, which is not installed; pip install 'ntlab[ray]' "
            "(or use --jobs N for worker processes on this machine)"
        ) from None
    return ray


def _run_ray(todo: list[Job], settings: Settings, display: Display) -> list[Outcome]:
    ray = _import_ray()
    from ntlab.cache import code_digest

    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if settings.ray_address is None:
            init["num_cpus"] = cores()
        else:
            init["address"] = settings.ray_address
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise NtlabError(
                f"could not reach the Ray cluster at {settings.ray_address or 'a new local one'}"
                f" ({exc}); start one with `ray start --head`, or leave out --ray-address"
            ) from None
    gpus = settings.gpus_per_job if _uses_gpus() else 0
    task = ray.remote(_ray_task)
    refs = {}
    for job in todo:
        options = {"num_cpus": job.cfg.threads or 1, "num_gpus": gpus, "max_retries": RAY_RETRIES}
        home = os.environ.get("NTLAB_HOME") if settings.ray_address is None else None
        refs[task.options(**options).remote(job, home)] = (job, time.monotonic())
        display.started(job)
    outcomes = []
    digest = code_digest()
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            job, start = refs.pop(ref)
            try:
                reply = ray.get(ref)
                if reply["code"] != digest:
                    raise NtlabError(
                        "the Ray worker runs other ntlab code than this command; install the "
                        "same ntlab on every node"
                    )
                store_files(job.folder(), reply["files"])
                outcome = Outcome(job, source=reply["source"])
            except NtlabError as exc:
                outcome = Outcome(job, error=str(exc))
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None)
                message = str(cause) if isinstance(cause, NtlabError) else _first_line(exc)
                outcome = Outcome(job, error=message)
            outcome.seconds = time.monotonic() - start
            display.finished(outcome)
            outcomes.append(outcome)
    order = {job.folder(): i for i, job in enumerate(todo)}
    return sorted(outcomes, key=lambda o: order[o.job.folder()])


def _uses_gpus() -> bool:
    import torch

    return torch.cuda.is_available()


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _ray_task(job: Job, home: str | None) -> dict:
    """In a Ray worker: the training through the worker's own cache (the driver's NTLAB_HOME
    on a local Ray: `home`); its entry's files back to the driver (which may not share this
    file system)."""
    import torch

    if home is not None:
        os.environ["NTLAB_HOME"] = home
    from ntlab.cache import code_digest

    if job.cfg.threads:
        torch.set_num_threads(job.cfg.threads)
    _, source = job.run()
    folder = job.folder()
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return {"files": files, "source": source, "code": code_digest()}


def store_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write a cache entry from its files, as the cache stores any entry (atomically), unless
    the entry is there already (a shared file system: the worker stored it itself)."""
    from ntlab.core.cache import store_folder

    def fill(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    store_folder(folder, fill)
