"""`ntlab affinity`: predict the transfer map from one training, and score the prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ntlab.checks import check_number
from ntlab.cli import options as opt
from ntlab.cli.common import (
    StepProgress,
    complete,
    console,
    default_out,
    guarded,
    metric_fields,
    print_paths,
    resolve_options,
    run_record,
)
from ntlab.runs import RunDir


def _affinity_options(
    domains: opt.Tasks = "all",
    every: Annotated[
        int | None,
        typer.Option(help="Steps between measurements [default: --steps / 20: 20 over the run]."),
    ] = None,
    held_out: Annotated[
        int,
        typer.Option(
            help="Validation images per task in the fixed held-out set the losses, the "
            "lookahead and the shift are measured on."
        ),
    ] = 256,
    against: Annotated[
        Path | None,
        typer.Option(
            help="A finished `ntlab pairwise` run directory (EW, same benchmark and budget): "
            "score each predictor against its measured TG."
        ),
    ] = None,
    select_k: Annotated[
        int | None,
        typer.Option(
            "--select",
            help="Propose for each target the K auxiliary tasks the best predictor ranks "
            "highest, train EW and ForkMerge on them and on all auxiliary tasks (cached), and "
            "compare their TG.",
        ),
    ] = None,
) -> None: ...


@opt.command(_affinity_options, opt.training_options, opt.run_options, exclude=("select",))
def affinity_command(ctx: typer.Context, values: dict) -> None:
    """Predict which auxiliary tasks help which target, from one training of them all.

    Trains EW on every task together (the preset's budget, cached) and every --every steps
    measures, for each ordered pair i → j on the shared parameters: the lookahead affinity
    Z = 1 − L_j(θ − η g_i)/L_j(θ) (TAG), the gradient cosine cos(g_i, g_j), and the feature
    shift between the tasks' inputs; two-level is derived from the cosine (which target) and
    the shift (which auxiliary task). Writes affinity.csv (step, target, aux, predictor,
    value), a heatmap per predictor in pairwise's layout and results.json; with --against a
    pairwise run, each predictor's Spearman correlation with the measured TG (all cells and
    per target), its sign share, each target's top-ranked auxiliary task against the best,
    and the ceiling the map's own seed-to-seed correlation sets.
    """
    from ntlab.analysis import affinity as af
    from ntlab.core.runner import validate

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        tasks = bench.tasks()
        domains = opt.task_list(opts["domains"], bench)
        cfg = opt.train_config(
            {**opts, "target": domains[0], "aux": ",".join(domains[1:])}, tasks, method="ew"
        )
        validate(cfg)
        aopts = af.AffinityOptions(every=opts["every"], held_out=opts["held_out"])
        aopts.check(cfg.steps)
        if opts["select_k"] is not None:
            check_number(
                "--select", opts["select_k"], low=1, high=len(domains) - 1, integer=True,
                why=f"auxiliary tasks per target, of the {len(domains) - 1} others",
            )  # fmt: skip
        cells, about = (None, None)
        if opts["against"] is not None:
            cells, about = af.load_measured(opts["against"], cfg, domains)
        bench.fingerprint()
        record = run_record(
            opts, cfg, bench, tasks=domains, every=aopts.every_for(cfg.steps),
            held_out=aopts.held_out, against=str(opts["against"]) if opts["against"] else None,
            select=opts["select_k"],
        )  # fmt: skip
        run = RunDir(opts["out"] or default_out("affinity"), overwrite=opts["overwrite"])
    with guarded(run):
        run.start("affinity", record)
        with StepProgress(opts["quiet"]) as progress:
            bar = progress.callback(f"ew over {len(domains)} tasks, measuring", cfg.steps)
            table, measured, source = af.cached_affinity(cfg, domains, aopts, bar)
            run.write_table("affinity.csv", table)
            results = {
                **metric_fields(cfg),
                **measured,
                "source": source,
                "predictors": {p: af.matrix_dict(table, p) for p in af.predictors_of(table)},
                "compute_s": round(measured["train_s"] + measured["measure_s"], 1),
            }
            best = "lookahead"
            if cells is not None:
                run.write_table("measured.csv", cells)
                scores = af.score_predictors(table, cells)
                best = af.best_predictor(scores) or best
                results["against"] = {
                    **about,
                    "scores": scores,
                    "best": best,
                    "ceiling": af.seed_ceiling(cells),
                }
                run.write_table("scores.csv", _scores_frame(scores))
            if opts["select_k"] is not None:
                results["selection"] = _evaluate_selection(
                    cfg, table, best, opts["select_k"], domains, progress
                )
        complete(run, results, opts["format"])
    _print(results, run.path, opts["quiet"])


def _scores_frame(scores: dict):
    import pandas as pd

    rows = []
    for predictor, s in scores.items():
        rows.append({"predictor": predictor, "scope": "all cells", "spearman": s["spearman"],
                     "sign_share": s["sign_share"], "regret": s["mean_regret"]})  # fmt: skip
        for target, t in s["targets"].items():
            rows.append({"predictor": predictor, "scope": target, "spearman": t["spearman"],
                         "first": t["first"], "first_tg": t["first_tg"], "best_tg": t["best_tg"],
                         "mean_tg": t["mean_tg"], "regret": t["regret"]})  # fmt: skip
    return pd.DataFrame(rows)


def _evaluate_selection(cfg, table, predictor: str, k: int, domains: list[str], progress) -> dict:
    """For each target: EW and ForkMerge (per-task branches) on the K proposed auxiliary
    tasks and on all of them, each TG against the target's STL run (all cached)."""
    from dataclasses import replace

    from ntlab.analysis import affinity as af
    from ntlab.config import ForkMergeOptions
    from ntlab.core.cache import cached_forkmerge, cached_run
    from ntlab.core.forkmerge import per_task_branches
    from ntlab.core.runner import stl_config
    from ntlab.metrics import gain

    chosen = af.select_auxiliary(table, predictor, k)
    fm = ForkMergeOptions(merge_every=max(1, round(cfg.steps / 4)))
    out = {"predictor": predictor, "k": k, "targets": {}}
    overall = progress.overall("selection", len(domains), "targets")
    for target in domains:
        others = [d for d in domains if d != target]
        row = {"selected": chosen[target]}
        stl, _ = cached_run(
            stl_config(replace(cfg, target=target, aux=others)),
            progress.callback(f"stl → {target}", cfg.steps),
        )
        for label, aux in (("selected", chosen[target]), ("all", others)):
            run_cfg = replace(cfg, target=target, aux=list(aux), method="ew")
            ew, _ = cached_run(run_cfg, progress.callback(f"ew → {target} ({label})", cfg.steps))
            total = cfg.steps * (len(aux) + 1)
            bar = progress.callback(f"forkmerge → {target} ({label})", total, count=True)
            fmr, _ = cached_forkmerge(run_cfg, per_task_branches(target, list(aux)), fm, bar)
            row[f"ew_{label}"] = gain(ew, stl)
            row[f"forkmerge_{label}"] = gain(fmr, stl)
        out["targets"][target] = row
        if overall:
            overall.advance()
    return out


def _print(results: dict, path: Path, quiet: bool) -> None:
    if quiet:
        console.print(str(path))
        return
    tasks = results["tasks"]
    console.print(
        f"affinity over {len(tasks)} tasks: {results['measurements']} measurements in "
        f"{results['steps']} steps ({results['source']}; training {results['train_s']:.1f} s, "
        f"measuring {results['measure_s']:.1f} s)",
        highlight=False,
    )
    for predictor, matrix in results["predictors"].items():
        table = Table(title=f"{predictor}: target \\ aux (mean over measurements)",
                      title_justify="left")  # fmt: skip
        table.add_column("target \\ aux")
        for a in tasks:
            table.add_column(a, justify="right")
        for t in tasks:
            row = matrix.get(t, {})
            table.add_row(t, *("" if a == t else f"{row.get(a, float('nan')):+.3g}" for a in tasks))
        console.print(table)
    against = results.get("against")
    if against:
        table = Table(
            title=f"against {against['path']} ({against['cells']} cells, "
            f"{len(against['seeds'])} seeds; ceiling: seed-to-seed Spearman "
            f"{_num(against['ceiling'])})",
            title_justify="left",
        )
        for col in ("predictor", "Spearman (all)", "Spearman (per target)", "sign share",
                    "mean regret"):  # fmt: skip
            table.add_column(col, justify="left" if col == "predictor" else "right")
        for predictor, s in against["scores"].items():
            table.add_row(
                predictor + (" (best)" if predictor == against["best"] else ""),
                _num(s["spearman"]),
                _num(s["spearman_per_target_mean"]),
                "–" if s["sign_share"] is None else f"{s['sign_share']:.0%}",
                _num(s["mean_regret"]),
            )
        console.print(table)
    selection = results.get("selection")
    if selection:
        table = Table(
            title=f"selection: the {selection['k']} auxiliary tasks {selection['predictor']} "
            "ranks first, TG vs STL",
            title_justify="left",
        )
        for col in ("target", "selected", "EW sel.", "EW all", "ForkMerge sel.", "ForkMerge all"):
            table.add_column(col, justify="left" if col in ("target", "selected") else "right")
        for target, row in selection["targets"].items():
            table.add_row(
                target, ",".join(row["selected"]), *(f"{row[k]:+.2f}" for k in
                ("ew_selected", "ew_all", "forkmerge_selected", "forkmerge_all")),
            )  # fmt: skip
        console.print(table)
    print_paths(path)


def _num(value) -> str:
    return "–" if value is None else f"{value:+.2f}"
