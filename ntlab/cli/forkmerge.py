"""`ntlab forkmerge train`: ForkMerge on the shared core, with STL and EW for comparison."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ntlab.checks import check_number
from ntlab.cli import options as opt
from ntlab.cli.common import (
    StepProgress,
    check_resumable,
    complete,
    console,
    default_out,
    gain_view,
    guarded,
    metrics_line,
    print_paths,
    resolve_options,
    results_table,
    run_parallel,
    score_headers,
    tg_cells,
    train_record,
    with_delta_m,
)
from ntlab.config import ForkMergeOptions
from ntlab.errors import unknown_name
from ntlab.runs import RunDir, atomic_write_text

if TYPE_CHECKING:
    from ntlab.core.forkmerge import BranchSpec
    from ntlab.core.runner import TrainConfig

app = typer.Typer(
    help="ForkMerge: fork the model into branches with different task weights, "
    "merge them by validation.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
CHECKPOINT = Path("checkpoints") / "forkmerge.pt"


def _forkmerge_options(
    target: opt.Target = None,
    aux: opt.Aux = "all",
    branches: Annotated[
        str,
        typer.Option(
            help="joint: target alone + target with all auxiliary tasks mixed (Algorithm 1); "
            "per-task: target alone + one branch per auxiliary task (Eq. 12). "
            "Ignored with --branch."
        ),
    ] = "joint",
    branch: Annotated[
        list[str],
        typer.Option(
            "--branch",
            help="An explicit branch as task weights, e.g. `mnist=1,syn=0.5` (Eq. 13); repeat it. "
            "The first must be the target alone (`TARGET=1`).",
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    merge_every: opt.MergeEvery = None,
    search: Annotated[
        str,
        typer.Option(
            help="Merge search: grid, greedy (Algorithm 3) or binary; "
            "auto = grid for 2 branches, greedy above."
        ),
    ] = "auto",
    grid_step: Annotated[float, typer.Option(help="Grid step of Λ (must divide 1).")] = 0.1,
    val_samples: Annotated[
        int | None,
        typer.Option(help="Estimate P̂ on a fixed random subset of this many validation images."),
    ] = None,
    merge_margin: Annotated[
        float,
        typer.Option(
            help="Accuracy points a merge must gain to move weight away from the "
            "target-alone branch."
        ),
    ] = 0.0,
    prune: Annotated[
        int | None,
        typer.Option(help="After the first merge keep this many branches (the target's always)."),
    ] = None,
    bn_recalibrate: Annotated[
        bool,
        typer.Option(
            help="Re-estimate BatchNorm statistics on target training batches after a merge."
        ),
    ] = False,
    optimizer_state: Annotated[
        str,
        typer.Option(help="After a merge each branch keeps its optimiser moments, or resets them."),
    ] = "keep",
    merge_heads: opt.MergeHeads = ForkMergeOptions.merge_heads,
    merge_op: opt.MergeOpOption = ForkMergeOptions.merge_op,
    ties_k: opt.TiesK = ForkMergeOptions.ties_k,
    dare_p: opt.DareP = ForkMergeOptions.dare_p,
    branch_exec: Annotated[
        str,
        typer.Option(
            help="How a round's branches share the device: sequential (one after the other) "
            "or concurrent (at once, a thread and on CUDA a stream each; not with --compile "
            "default or reduce-overhead, which are not thread-safe). The numbers are the same "
            "either way (bit for bit on the CPU), and a resumed run may change it."
        ),
    ] = ForkMergeOptions.branch_exec,
    resume: opt.Resume = False,
    dist_timeout: Annotated[
        float,
        typer.Option(
            help="Under torchrun: seconds a rank waits at a merge for the others before it "
            "stops with an error (it must exceed the longest wait: a rank with fewer branches "
            "waits for the others' Δt steps)."
        ),
    ] = 600.0,
    baselines: Annotated[
        bool, typer.Option(help="Also report STL and EW of the same budget and seed (cached).")
    ] = True,
) -> None: ...


@app.command("train")
@opt.command(_forkmerge_options, opt.training_options, opt.parallel_options, opt.run_options)
def forkmerge_train(ctx: typer.Context, values: dict) -> None:
    """Train the target with ForkMerge and compare it with STL and EW.

    Writes merges.csv (round, step, branch, task weights, its val score, its Λ*),
    search.csv (every candidate Λ with its val score: the target's primary metric),
    metrics.csv, stl_metrics.csv (the
    STL baseline's validation curve), lambda.png, model.pt (the merged model), for a dense
    target predictions.pt (a few test images with each dense task's truth and prediction)
    and results.json; a checkpoint after every merge lets --resume
    continue a killed run.

    Under torchrun (`torchrun --nproc-per-node N -m ntlab forkmerge train …`) branch b
    trains on rank b mod N and the branches are exchanged at each merge; rank 0 alone
    writes the run directory.
    """
    from ntlab.core.forkmerge import ForkMergeOptions, run_forkmerge, validate_forkmerge
    from ntlab.core.runner import validate

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        cfg = opt.train_config(opts, bench.tasks(), method="ew")
        validate(cfg)
        specs = _branches(opts, cfg, bench.tasks())
        fm = ForkMergeOptions(
            merge_every=opts["merge_every"],
            search=opts["search"],
            grid_step=opts["grid_step"],
            val_samples=opts["val_samples"],
            merge_margin=opts["merge_margin"],
            prune=opts["prune"],
            bn_recalibrate=opts["bn_recalibrate"],
            optimizer_state=opts["optimizer_state"],
            merge_heads=opts["merge_heads"],
            branch_exec=opts["branch_exec"],
            **opt.merge_op_fields(opts),
        )
        validate_forkmerge(cfg, specs, fm)
        check_number("--dist-timeout", opts["dist_timeout"], low=1)
        bench.fingerprint()
        numbers = {k: v for k, v in asdict(fm).items() if k != "branch_exec"}
        record = {
            "train": train_record(cfg),
            "forkmerge": numbers,  # what decides the numbers: a resume must match it
            "branch_exec": fm.branch_exec,  # how the branches were scheduled: free to change
            "branches": [b.describe() for b in specs],
            "preset": opts["preset"],
            "data": bench.fingerprint(),
        }
        path = opts["out"] or default_out("forkmerge", cfg.target)
        world = _world(cfg.device, opts["dist_timeout"])

        def claim() -> RunDir:
            if opts["resume"]:
                check_resumable(
                    opts["out"], CHECKPOINT, record, "forkmerge train", free=("branch_exec",)
                )
            return RunDir(path, overwrite=opts["overwrite"], resume=opts["resume"])

        try:
            run = claim() if world is None else world.root_decides(claim, share=False)
        except BaseException:
            if world is not None:
                world.close()
            raise
    if world is not None and not world.is_root:  # the others train their branches, quietly
        with guarded():
            try:
                run_forkmerge(
                    cfg, specs, fm, checkpoint=path / CHECKPOINT, resume=opts["resume"], world=world
                )
            finally:
                world.close()
        return
    try:
        _train_and_report(opts, cfg, specs, fm, record, run, world)
    finally:
        if world is not None:
            world.close()


def _baselines_meanwhile(cfg, settings, progress):
    """Start the STL and EW baselines in worker processes (`--jobs`, `--executor ray`) while
    ForkMerge trains here; the future gives (what ran, the STL job, the EW job). A baseline
    that fails there is named and then trained here by its `cached_run`."""
    import concurrent.futures

    from ntlab.core.executor import Job
    from ntlab.core.runner import stl_config

    stl_job = Job(stl_config(cfg), label=f"stl → {cfg.target}")
    ew_job = Job(cfg, label=f"ew → {cfg.target}")

    def run():
        return run_parallel([stl_job, ew_job], settings, progress), stl_job, ew_job

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ntlab-baselines")
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


def _world(device: str, timeout: float):
    """The torchrun process group (ntlab.core.distributed), or None outside torchrun."""
    from ntlab.core.distributed import World, torchrun_env

    return World.from_env(device, timeout) if torchrun_env() else None


def _train_and_report(opts: dict, cfg, specs, fm, record: dict, run: RunDir, world) -> None:
    import pandas as pd

    from ntlab.core.forkmerge import run_forkmerge
    from ntlab.core.runner import (
        MODEL_FILE,
        STL_METRICS_FILE,
        cached_run,
        save_model,
        stl_config,
        stl_curve_csv,
        tg_fields,
        with_transfer_gain,
    )

    with guarded(run):
        run.start("forkmerge train", record)
        checkpoint = run.path / CHECKPOINT
        if not opts["resume"]:
            checkpoint.unlink(missing_ok=True)
        with StepProgress(opts["quiet"]) as progress:
            settings = opt.parallel_settings(opts)
            meanwhile = None
            if opts["baselines"] and settings.parallel:  # STL and EW in workers meanwhile
                meanwhile = _baselines_meanwhile(cfg, settings, progress)
            mine = len(specs) if world is None else sum(world.owns(b) for b in range(len(specs)))
            on_step = progress.callback(
                f"forkmerge → {cfg.target} ({len(specs)} branches"
                + ("" if world is None else f", {mine} on this rank of {world.size}")
                + ")",
                cfg.steps * mine,
                count=True,
            )
            outcome = run_forkmerge(
                cfg,
                specs,
                fm,
                on_step=on_step,
                checkpoint=checkpoint,
                resume=opts["resume"],
                world=world,
            )
            results = outcome.results
            if opts["baselines"]:
                ran, stl_job, ew_job = meanwhile.result() if meanwhile else (None, None, None)

                def bar(name: str):  # none where a worker trained it: it is in the cache now
                    return None if ran else progress.callback(f"{name} → {cfg.target}", cfg.steps)

                stl, source = cached_run(stl_config(cfg), bar("stl"))
                source = ran.source([stl_job], source) if ran else source
                results = with_delta_m(with_transfer_gain(results, stl, source), stl)
                stl_curve = stl_curve_csv(cfg)
                if stl_curve:
                    atomic_write_text(run.path / STL_METRICS_FILE, stl_curve)
                ew, ew_source = cached_run(cfg, bar("ew"))
                ew_source = ran.source([ew_job], ew_source) if ran else ew_source
                fields = tg_fields(ew, stl)
                results["ew"] = {
                    "val_score": ew["val_score"],
                    "test_score": ew["test_score"],
                    "source": ew_source,
                    "transfer_gain": fields["tg"],
                    "tg_se": fields["tg_se"],
                    "tg_se_kind": fields["tg_se_kind"],
                    "effect": fields["effect"],
                    "delta_m": with_delta_m(ew, stl)["delta_m"],
                    **{k: ew[k] for k in ("test_n", "test_correct") if k in ew},
                }
        merges = pd.DataFrame(outcome.merges)
        run.write_table("merges.csv", merges)
        run.write_table("search.csv", pd.DataFrame(outcome.search))
        run.write_table("metrics.csv", pd.DataFrame(outcome.metrics))
        save_model(run.path / MODEL_FILE, outcome.model, cfg)
        _write_predictions(run.path, outcome.model, cfg)
        complete(run, results, opts["format"])
        labels = [branch_label(b, cfg.target) for b in specs]
        _print_summary(results, outcome.merges, labels, run.path, opts["quiet"])


def _write_predictions(path, model, cfg) -> None:
    """predictions.pt of a dense target (a few test images, each dense task's truth and the
    merged model's prediction) for the report; nothing for any other target."""
    from ntlab.core.runner import benchmark_of, target_spec, trained_tasks
    from ntlab.report.predictions import write_predictions
    from ntlab.tasks import DENSE

    if target_spec(cfg).kind != DENSE:
        return
    device = next(model.parameters()).device
    write_predictions(path, model, benchmark_of(cfg).load(trained_tasks(cfg), device), cfg.target)


def branch_label(spec: BranchSpec, target: str) -> str:
    """A branch named by what it adds to the target: `target` (the target alone), `+mnist`
    (Eq. 12), `+mnist,syn` (Algorithm 1: mixed into one term), `+syn×0.5+mnist×0.5`
    (explicit weights); a target weight other than 1 is shown (`target×0.5+mnist`)."""
    parts = []
    for term in spec.terms:
        weight = "" if term.weight == 1 else f"×{term.weight:g}"
        if term.tasks == (target,):
            parts.insert(0, f"target{weight}" if weight or len(spec.terms) == 1 else "")
        else:
            parts.append(f"+{','.join(term.tasks)}{weight}")
    if all(t.tasks != (target,) for t in spec.terms):  # no target term: the tasks alone
        parts[0] = parts[0].lstrip("+")
    return "".join(parts)


def round_lines(merges: list[dict], labels: list[str]) -> list[str]:
    """`round 1 (step 75): target 0.7 · +mnist 0.3`, one line per merge."""
    rounds: dict[int, dict] = {}
    for row in merges:
        rounds.setdefault(row["round"], {"step": row["step"], "weights": {}})
        rounds[row["round"]]["weights"][row["branch"]] = row["lambda"]
    lines = []
    for r in sorted(rounds):
        weights = rounds[r]["weights"]
        text = " · ".join(f"{labels[b]} {round(weights[b], 3):g}" for b in sorted(weights))
        lines.append(f"round {r + 1} (step {rounds[r]['step']}): {text}")
    return lines


def _branches(opts: dict, cfg: TrainConfig, tasks: list[str]):
    from ntlab.core.forkmerge import BRANCH_MODES, joint_branches, parse_branch, per_task_branches

    if opts["branch"]:
        return [parse_branch(text, tasks) for text in opts["branch"]]
    if opts["branches"] not in BRANCH_MODES:
        raise unknown_name("--branches", opts["branches"], BRANCH_MODES)
    build = joint_branches if opts["branches"] == "joint" else per_task_branches
    return build(cfg.target, cfg.aux)


def _print_summary(
    results: dict, merges: list[dict], labels: list[str], path: Path, quiet: bool
) -> None:
    from ntlab.metrics import rule_caption, tg_sentence

    if quiet:
        console.print(str(path))
        return
    table = results_table(
        f"forkmerge → {results['target']} ({results['steps']} steps, {results['rounds']} merges)",
        ["model", *score_headers(results), "TG (test)", "transfer"],
        left=("model", "transfer"),
    )
    if "stl" in results:
        stl, ew = results["stl"], results["ew"]
        table.add_row(
            f"stl ({stl['source']})",
            f"{stl['val_score']:.2f}",
            f"{stl['test_score']:.2f}",
            "0",
            "reference",
        )
        table.add_row(
            f"ew ({ew['source']})",
            f"{ew['val_score']:.2f}",
            f"{ew['test_score']:.2f}",
            *tg_cells(ew),
        )
    table.add_row(
        "forkmerge",
        f"{results['val_score']:.2f}",
        f"{results['test_score']:.2f}",
        *tg_cells(results),
    )
    if "stl" in results:
        table.caption = rule_caption(1)
    console.print(table)
    if "stl" in results:
        target = results["target"]
        for name, r in (("ForkMerge", results), ("EW", results["ew"])):
            console.print(
                tg_sentence(f"{name} vs STL on {target}", gain_view(r), results.get("metric")),
                highlight=False,
                soft_wrap=True,
            )
    line = metrics_line(results)
    if line:
        console.print(line, highlight=False, soft_wrap=True)
    for line in round_lines(merges, labels):
        console.print(f"Λ* {line}", highlight=False)
    for row in results.get("excluded_branches", []):
        console.print(
            f"[yellow]branch {row['branch']} left out of merge {row['round']}[/]: {row['reason']}"
        )
    print_paths(path)
