"""`ntlab compare`: every method on one target, one table (the paper's Table 2 on your data)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ntlab import catalog
from ntlab.cli import options as opt
from ntlab.cli.common import (
    CheckpointRows,
    Parallel,
    StepProgress,
    check_resumable,
    complete,
    console,
    default_out,
    guarded,
    metric_fields,
    parse_numbers,
    parse_seeds,
    print_paths,
    resolve_options,
    results_table,
    resume_note,
    run_parallel,
    run_record,
    score_headers,
)
from ntlab.config import SWEEP_LAMS, ForkMergeOptions, lams_text
from ntlab.runs import RunDir

if TYPE_CHECKING:
    pass

ROWS = Path("checkpoints") / "rows.csv"


def _compare_options(
    target: opt.Target = None,
    aux: opt.Aux = "all",
    methods: Annotated[
        str,
        typer.Option(
            help="Methods, comma-separated, or `all` (every method but `fixed`; stl is always "
            f"run as the reference). Known: {', '.join(catalog.method_names())}."
        ),
    ] = "all",
    seeds: opt.Seeds = "0",
    lams: Annotated[
        str, typer.Option(help="λ grid of `grid-search` (the λ is chosen on validation).")
    ] = lams_text(SWEEP_LAMS),
    merge_every: opt.MergeEvery = None,
    merge_heads: opt.MergeHeads = ForkMergeOptions.merge_heads,
    resume: opt.Resume = False,
) -> None: ...


@opt.command(
    _compare_options,
    opt.training_options,
    opt.parallel_options,
    opt.run_options,
    exclude=("seed",),
)
def compare_command(ctx: typer.Context, values: dict) -> None:
    """Run every method on one target with the same model, data, budget and seeds.

    Each (method, seed) is one training of the shared core, cached (STL runs once per seed);
    grid-search trains the λ grid and keeps the λ best on validation; forkmerge uses one
    branch per auxiliary task (Eq. 12). Writes compare.csv (method, seed, metric, value),
    compare.png (TG per method, mean ± seed std), results.json (per method: the target's
    primary score and its other metrics, TG in the primary metric, and Δm over the target's
    metrics, mean ± std; the ranking by Δm) and prints the table sorted by Δm.
    """
    import pandas as pd

    from ntlab.analysis import compare as cmp
    from ntlab.analysis.common import check_lams
    from ntlab.core.forkmerge import ForkMergeOptions, per_task_branches, validate_forkmerge
    from ntlab.core.runner import validate

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        cfg = opt.train_config(opts, bench.tasks(), method="ew", seed=0)
        validate(cfg)
        methods = cmp.parse_methods(opts["methods"])
        seeds = parse_seeds(opts["seeds"])
        lams = check_lams(parse_numbers(opts["lams"], "--lams"))
        fm = ForkMergeOptions(merge_every=opts["merge_every"], merge_heads=opts["merge_heads"])
        settings = opt.parallel_settings(opts)
        if "forkmerge" in methods:
            validate_forkmerge(cfg, per_task_branches(cfg.target, cfg.aux), fm)
        bench.fingerprint()
        record = run_record(
            opts, cfg, bench, methods=methods, seeds=seeds, lams=lams, forkmerge=asdict(fm)
        )
        if opts["resume"]:
            check_resumable(opts["out"], ROWS, record, "compare")
        run = RunDir(
            opts["out"] or default_out("compare", cfg.target),
            overwrite=opts["overwrite"],
            resume=opts["resume"],
        )
    with guarded(run):
        checkpoint = CheckpointRows(run, ROWS, {"method": str, "seed": int}, opts["resume"])
        cells = [(m, s) for m in methods for s in seeds]
        done = {(r["method"], r["seed"]): r for r in checkpoint.rows}
        done = {cell: done[cell] for cell in cells if cell in done}
        run.start("compare", record)
        if opts["resume"]:
            resume_note(len(done), len(cells), opts["quiet"], "runs")
        rows, new_rows = [], []
        with StepProgress(opts["quiet"]) as progress:
            ran, overall = Parallel(), None
            todo = [cell for cell in cells if cell not in done]
            if settings.parallel:  # train everything at once into the cache, then read it
                jobs = [j for m, s in todo for j in cmp.method_jobs(cfg, m, s, fm, lams)]
                ran = run_parallel(jobs, settings, progress)
            else:
                overall = progress.overall(f"compare → {cfg.target}", len(cells), "runs")

            def on_run(label, run_cfg):
                if settings.parallel:
                    return None  # every training is in the cache now
                fm = label == "forkmerge"
                total = run_cfg.steps * (len(run_cfg.aux) + 1 if fm else 1)
                return progress.callback(f"{label} seed {run_cfg.seed}", total, count=fm)

            for method, seed in cells:
                if (method, seed) in done:
                    rows.append(done[(method, seed)])
                elif settings.parallel and ran.blocked(
                    jobs := cmp.method_jobs(cfg, method, seed, fm, lams)
                ):
                    continue  # a training it needs failed: left for --resume
                else:
                    row = cmp.method_row(cfg, method, seed, fm, lams, on_run)
                    if settings.parallel:
                        row["source"] = ran.source(jobs, row["source"])
                    new_rows.append(row)
                    rows.append(new_rows[-1])
                    checkpoint.add(new_rows[-1])
                if overall:
                    overall.advance()
        ran.raise_failed("runs")
        table = pd.DataFrame(rows)
        run.write_table("compare.csv", cmp.tidy(table))
        summary = cmp.compare_summary(table)
        trained = sum(r["source"] == "run" for r in new_rows)  # by this invocation
        results = {
            "target": cfg.target,
            "aux": cfg.aux,
            "steps": cfg.steps,
            "seeds": seeds,
            **metric_fields(cfg),
            **summary,
            "runs_trained": trained,
            "runs_from_cache": len(new_rows) - trained,
            "runs_resumed": len(done),
        }
        complete(run, results, opts["format"])
        _print(results, run.path, opts["quiet"])


def _print(results: dict, path: Path, quiet: bool) -> None:
    from ntlab.metrics import effect_label, rule_caption, stat_view, tg_sentence

    if quiet:
        console.print(str(path))
        return
    several = len(results["seeds"]) > 1

    def pm(stat: dict, signed: bool = False) -> str:
        text = f"{stat['mean']:+.2f}" if signed else f"{stat['mean']:.2f}"
        noise = stat["std"] if several else stat.get("se")  # one seed: TG's test-set SE
        return text + ("" if noise is None else f" ± {noise:.2f}")

    from ntlab.metrics import metric_label

    primary = results.get("metric", "acc")
    others = [m for m in results.get("delta_m_over", {}) if m != primary]
    lower = {m for m, higher in results.get("delta_m_over", {}).items() if not higher}
    table = results_table(
        f"compare → {results['target']} ({results['steps']} steps, "
        f"{len(results['seeds'])} seed{'s' if several else ''}), sorted by Δm",
        [
            "method",
            *score_headers(results, ("test",)),
            *[f"{metric_label(m)}{' ↓' if m in lower else ''}" for m in others],
            "TG vs STL",
            "transfer",
            "Δm (%)",
        ],
        left=("method",),
    )
    table.caption = rule_caption(len(results["seeds"]))
    for method in results["ranking"]:
        stat = results["methods"][method]
        transfer = "reference" if method == "stl" else effect_label(stat["effect"], stat["seeds"])
        extra = stat.get("metrics", {})
        table.add_row(
            method,
            pm(stat["test_score"]),
            *[pm(extra[m]) if m in extra else "" for m in others],
            pm(stat["tg"], True),
            transfer,
            pm(stat["delta_m"], True),
        )
    console.print(table)
    if "forkmerge" in results["methods"]:
        fm = results["methods"]["forkmerge"]
        subject = f"ForkMerge vs STL on {results['target']}"
        console.print(
            tg_sentence(
                subject,
                stat_view({**fm["tg"], "seeds": fm["seeds"]}, fm["effect"]),
                results.get("metric"),
            ),
            highlight=False,
            soft_wrap=True,
        )
    print_paths(path)
