"""`ntlab train`: one training with a weighting method, its STL baseline and transfer gain."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ntlab.analysis.compare import PROCEDURES, check_method, method_names, method_row
from ntlab.cli import options as opt
from ntlab.cli.common import (
    StepProgress,
    complete,
    console,
    default_out,
    guarded,
    print_paths,
    resolve_options,
    results_table,
)
from ntlab.core.forkmerge import ForkMergeOptions, per_task_branches, validate_forkmerge
from ntlab.core.runner import (
    MODEL_FILE,
    run_training,
    save_model,
    stl_baseline,
    store_run,
    validate,
    with_transfer_gain,
)
from ntlab.methods import METHODS
from ntlab.runs import RunDir

METHOD_HELP = "; ".join(
    f"{m}: {METHODS.get(m).summary}" for m in method_names() if m in METHODS
) + (
    "; grid-search: the fixed-λ grid (--lams of sweep's default), λ chosen on validation; "
    "forkmerge: ForkMerge with one branch per auxiliary task (defaults of forkmerge train)"
)


def _train_options(
    target: opt.Target = None,
    method: Annotated[
        str, typer.Option("--method", "-m", help=f"Weighting method. {METHOD_HELP}.")
    ] = "stl",
    aux: opt.Aux = "all",
    lam: Annotated[
        float,
        typer.Option("--lam", help="λ of `fixed`: the weight of the mixed auxiliary loss (≥ 0)."),
    ] = 1.0,
    baseline: Annotated[
        bool,
        typer.Option(help="Compute transfer gain against the STL run (cached) of the same budget."),
    ] = True,
    merge_every: opt.MergeEvery = None,
    merge_heads: opt.MergeHeads = ForkMergeOptions.merge_heads,
) -> None: ...


@opt.command(_train_options, opt.training_options, opt.run_options)
def train_command(ctx: typer.Context, values: dict) -> None:
    """Train the target with a weighting method and report its transfer gain over STL.

    Writes config.json, status.json, metrics.csv (step, task, split, metric, value),
    model.pt (the final model) and results.json (target accuracy; for methods other than
    stl, `transfer_gain` = test accuracy minus that of the STL run with the same budget and
    seed, reused from the cache).
    """
    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        check_method(opts["method"])
        if opts["method"] in PROCEDURES:
            return _train_procedure(opts, bench)
        cfg = opt.train_config(opts, bench.tasks())
        validate(cfg)
        bench.fingerprint()  # fails early, with the fix, when the data is not prepared
        run = RunDir(
            opts["out"] or default_out("train", cfg.method, cfg.target), overwrite=opts["overwrite"]
        )
    with guarded(run):
        run.start(
            "train", {"train": asdict(cfg), "preset": opts["preset"], "data": bench.fingerprint()}
        )
        with StepProgress(opts["quiet"]) as progress:
            outcome = run_training(
                cfg, on_step=progress.callback(f"{cfg.method} → {cfg.target}", cfg.steps)
            )
            results = outcome.results
            store_run(cfg, outcome)
            if cfg.method != "stl" and opts["baseline"]:
                stl, source = stl_baseline(
                    cfg, on_step=progress.callback(f"stl → {cfg.target}", cfg.steps)
                )
                results = with_transfer_gain(results, stl, source)
        run.write_table("metrics.csv", pd.DataFrame(outcome.metrics))
        save_model(run.path / MODEL_FILE, outcome.state.model, cfg)
        complete(run, results, opts["format"])
        print_summary(results, run.path, opts["quiet"])


def print_summary(results: dict, path: Path, quiet: bool) -> None:
    if quiet:
        console.print(str(path))
        return
    table = results_table(
        f"{results['method']} → {results['target']} ({results['steps']} steps)",
        ["model", "val acc", "test acc", "TG (test)"],
        left=("model",),
    )
    table.add_row(
        results["method"],
        f"{results['val_acc']:.2f}",
        f"{results['test_acc']:.2f}",
        f"{results['transfer_gain']:+.2f}" if "transfer_gain" in results else "",
    )
    if "stl" in results:
        stl = results["stl"]
        table.add_row(
            f"stl ({stl['source']})", f"{stl['val_acc']:.2f}", f"{stl['test_acc']:.2f}", "0"
        )
    console.print(table)
    print_paths(path)


def _train_procedure(opts: dict, bench) -> None:
    """`--method grid-search|forkmerge`: several trainings (cached), reported as one."""
    method = opts["method"]
    cfg = opt.train_config(opts, bench.tasks(), method="ew")
    validate(cfg)
    fm = ForkMergeOptions(merge_every=opts["merge_every"], merge_heads=opts["merge_heads"])
    if method == "forkmerge":
        validate_forkmerge(cfg, per_task_branches(cfg.target, cfg.aux), fm)
    bench.fingerprint()
    run = RunDir(
        opts["out"] or default_out("train", method, cfg.target), overwrite=opts["overwrite"]
    )
    with guarded(run):
        run.start(
            "train",
            {
                "train": {**asdict(cfg), "method": method},
                "preset": opts["preset"],
                "data": bench.fingerprint(),
            },
        )  # noqa: E501
        with StepProgress(opts["quiet"]) as progress:

            def on_run(label, run_cfg):
                fm = label == "forkmerge"
                total = run_cfg.steps * (len(run_cfg.aux) + 1 if fm else 1)
                return progress.callback(f"{label} → {run_cfg.target}", total, count=fm)

            row = method_row(cfg, method, cfg.seed, fm, on_run=on_run)
        results = {
            "target": cfg.target,
            "method": method,
            "aux": cfg.aux,
            "steps": cfg.steps,
            "val_acc": row["val_acc"],
            "test_acc": row["test_acc"],
            "stl": {
                "val_acc": row["stl_val_acc"],
                "test_acc": row["stl_test_acc"],
                "source": "cache",
            },
            "transfer_gain": row["tg"],
            "transfer_gain_val": row["tg_val"],
            **({"lam": row["lam"]} if "lam" in row else {}),
        }
        complete(run, results, opts["format"])
        print_summary(results, run.path, opts["quiet"])
