"""`ntlab sweep`, `ntlab pairwise`, `ntlab ternary`: transfer maps over λ, pairs and merges."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ntlab.cli import options as opt
from ntlab.cli.common import (
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
    resumed_rows,
    run_parallel,
    run_record,
    score_headers,
)
from ntlab.config import SWEEP_LAMS, ForkMergeOptions, TrainConfig, lams_text
from ntlab.errors import NtlabError, unknown_name
from ntlab.runs import RunDir, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from ntlab.core.runner import TrainConfig

CELLS = Path("checkpoints") / "cells.csv"
SWEEP_ROWS = Path("checkpoints") / "rows.csv"  # one row per finished training of a sweep
NOISE = ["tg_se", "tg_se_kind", "test_n"]  # one seed's test-set SE of TG
SWEEP_FIXED = ["lam", "seed", "val_score", "test_score", "tg", *NOISE, "tg_val", "csd", "source"]
SWEEP_FM = ["seed", "val_score", "test_score", "tg", *NOISE, "tg_val", "source"]


def _forkmerge_options(cfg: TrainConfig, opts: dict) -> ForkMergeOptions:
    from ntlab.core.forkmerge import ForkMergeOptions, joint_branches, validate_forkmerge

    fm = ForkMergeOptions(
        merge_every=opts["merge_every"],
        merge_heads=opts["merge_heads"],
        **opt.merge_op_fields(opts),
    )
    validate_forkmerge(cfg, joint_branches(cfg.target, cfg.aux or [cfg.target]), fm)
    return fm


def _base(opts: dict, tasks: list[str], **overrides: Any) -> TrainConfig:
    from ntlab.core.runner import validate

    cfg = opt.train_config(opts, tasks, **{"seed": 0, **overrides})
    validate(cfg)
    return cfg


# --- sweep --------------------------------------------------------------------------------


def _sweep_options(
    target: opt.Target = None,
    aux: opt.Aux = "all",
    lams: opt.Lams = lams_text(SWEEP_LAMS),
    seeds: opt.Seeds = "0",
    with_forkmerge: Annotated[
        bool, typer.Option(help="Also run ForkMerge with the same budget and seeds.")
    ] = False,
    forkmerge_branches: Annotated[
        str,
        typer.Option(
            help="ForkMerge's branches: per-task (Eq. 12: the target alone + one branch per "
            "auxiliary task) or joint (Algorithm 1: + one branch with them mixed)."
        ),
    ] = "per-task",
    merge_every: opt.MergeEvery = None,
    merge_heads: opt.MergeHeads = ForkMergeOptions.merge_heads,
    merge_op: opt.MergeOpOption = ForkMergeOptions.merge_op,
    ties_k: opt.TiesK = ForkMergeOptions.ties_k,
    dare_p: opt.DareP = ForkMergeOptions.dare_p,
    resume: opt.Resume = False,
) -> None: ...


@opt.command(
    _sweep_options, opt.training_options, opt.parallel_options, opt.run_options, exclude=("seed",)
)
def sweep_command(ctx: typer.Context, values: dict) -> None:
    """Sweep the task weight: fixed-λ joint training for every λ and seed (Eq. 1).

    The auxiliary tasks are mixed into one loss of weight λ (λ = 0 is STL); every training
    is cached. Writes sweep.csv (method, lam, seed, val_score, test_score, tg, …), sweep.png
    and results.json with the regime (each λ helps or hurts only beyond its seed noise), the
    best λ, and the grid-search baseline: per seed the λ with the best validation score
    (the target's primary metric: accuracy, mIoU, an error at its lowest), and its test TG.
    """
    import pandas as pd

    from ntlab.analysis import sweep as sw
    from ntlab.analysis.common import check_lams
    from ntlab.core.forkmerge import BRANCH_MODES

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        cfg = _base(opts, bench.tasks(), method="stl")
        lams = check_lams(parse_numbers(opts["lams"], "--lams"))
        if not any(lam > 0 for lam in lams):
            raise NtlabError("--lams needs at least one λ > 0 to compare with λ = 0")
        seeds = parse_seeds(opts["seeds"])
        if opts["forkmerge_branches"] not in BRANCH_MODES:
            raise unknown_name("--forkmerge-branches", opts["forkmerge_branches"], BRANCH_MODES)
        fm = _forkmerge_options(cfg, opts) if opts["with_forkmerge"] else None
        settings = opt.parallel_settings(opts)
        bench.fingerprint()
        record = run_record(
            opts,
            cfg,
            bench,
            lams=lams,
            seeds=seeds,
            forkmerge=asdict(fm) if fm else None,
            forkmerge_branches=opts["forkmerge_branches"] if fm else None,
        )
        path = Path(opts["out"] or default_out("sweep", cfg.target))
        if opts["resume"]:
            check_resumable(opts["out"], SWEEP_ROWS, record, "sweep")
        run = RunDir(path, overwrite=opts["overwrite"], resume=opts["resume"])
    with guarded(run):
        key = {"method": str, "lam": float, "seed": int}
        done = resumed_rows(run.path, SWEEP_ROWS, key) if opts["resume"] else pd.DataFrame()
        done_fixed, done_fm = {}, {}
        for r in done.to_dict("records"):
            if r["method"] == "fixed" and r["lam"] in {*lams, 0.0} and r["seed"] in seeds:
                done_fixed[(r["lam"], r["seed"])] = {k: r.get(k) for k in SWEEP_FIXED}
            elif r["method"] == "forkmerge" and fm and r["seed"] in seeds:
                done_fm[r["seed"]] = {k: r.get(k) for k in SWEEP_FM}
        run.start("sweep", record)
        parts = len(seeds) * (len({*lams, 0.0}) + (1 if fm else 0))
        if opts["resume"]:
            resume_note(len(done_fixed) + len(done_fm), parts, opts["quiet"], "trainings")
        finished = [{"method": "fixed", **r} for r in done_fixed.values()]
        finished += [{"method": "forkmerge", **r} for r in done_fm.values()]

        with StepProgress(opts["quiet"]) as progress:
            ran, overall = Parallel(), None
            if settings.parallel:  # train everything at once into the cache, then read it
                jobs = sw.grid_jobs(cfg, lams, seeds, done=done_fixed)
                if fm:
                    missing = [s for s in seeds if s not in done_fm]
                    jobs += sw.forkmerge_jobs(cfg, missing, fm, opts["forkmerge_branches"])
                ran = run_parallel(jobs, settings, progress)
            else:
                overall = progress.overall(
                    f"sweep → {cfg.target}", parts, "trainings", len(done_fixed) + len(done_fm)
                )

            def keep(method: str):
                def on_row(row: dict) -> None:
                    if ran.trained:  # the executor trained it for this command
                        row["source"] = ran.source(_row_jobs(method, row), row["source"])
                    finished.append({"method": method, **row})
                    frame = pd.DataFrame(finished).reindex(columns=["method", *SWEEP_FIXED])
                    atomic_write_text(run.path / SWEEP_ROWS, frame.to_csv(index=False))
                    if overall:
                        overall.advance()

                return on_row

            def _row_jobs(method: str, row: dict) -> list:
                if method == "fixed":
                    return [sw.grid_job(cfg, row["lam"], row["seed"])]
                return sw.forkmerge_jobs(cfg, [row["seed"]], fm, opts["forkmerge_branches"])

            def on_run(name: str, c: TrainConfig):
                if settings.parallel:
                    return None  # every training is in the cache now
                n = len(c.aux) + 1 if opts["forkmerge_branches"] == "per-task" else 2
                fm = name == "forkmerge"
                total = c.steps * (n if fm else 1)
                return progress.callback(f"{name} seed {c.seed} → {c.target}", total, count=fm)

            table = sw.lambda_grid_table(
                cfg, lams, seeds, on_run, done_fixed, keep("fixed"), skip=ran.broken
            )
            fm_rows = (
                sw.forkmerge_rows(
                    cfg,
                    seeds,
                    fm,
                    on_run,
                    opts["forkmerge_branches"],
                    done_fm,
                    keep("forkmerge"),
                    ran.broken,
                )  # fmt: skip
                if fm
                else None
            )
        ran.raise_failed("trainings")
        out = table.assign(method="fixed")
        if fm_rows is not None:
            out = pd.concat([out, fm_rows.assign(method="forkmerge", lam=float("nan"))])
        columns = ["method", *SWEEP_FIXED[:-3], "tg_val", "csd", "source"]
        run.write_table("sweep.csv", out.reindex(columns=columns))
        summary = {**metric_fields(cfg), **sw.sweep_summary(table, fm_rows)}
        results = {
            "target": cfg.target,
            "aux": cfg.aux,
            "steps": cfg.steps,
            **summary,
            "runs_resumed": len(done_fixed) + len(done_fm),
        }
        complete(run, results, opts["format"])
        _print_sweep(summary, cfg, run.path, opts["quiet"])


def _print_sweep(summary: dict, cfg: TrainConfig, path: Path, quiet: bool) -> None:
    from ntlab.metrics import effect_label, regime_label, rule_caption, stat_view, tg_sentence

    if quiet:
        console.print(str(path))
        return
    n = len(summary["seeds"])
    several = n > 1
    table = results_table(
        f"sweep: {cfg.target} ← {', '.join(cfg.aux)}: {regime_label(summary['regime'], n)}",
        ["λ", *score_headers(summary), "TG (test)", "transfer"],
    )
    table.caption = rule_caption(n)

    def pm(mean: float, std: float, fmt: str, se: float | None = None) -> str:
        noise = std if several else se
        return format(mean, fmt) + ("" if noise is None else f" ± {noise:.2f}")

    for lam, row in summary["per_lam"].items():
        effect = summary["effect_per_lam"].get(lam)
        table.add_row(
            lam,
            pm(row["val_score_mean"], row["val_score_std"], ".2f"),
            pm(row["test_score_mean"], row["test_score_std"], ".2f"),
            pm(row["tg_mean"], row["tg_std"], "+.2f", None if effect is None else row.get("tg_se")),
            effect_label(effect, n) if effect else "STL",
        )
    gs = summary["grid_search"]
    lam_text = ",".join(f"{v:g}" for v in gs["lam_per_seed"])
    table.add_row(
        f"grid search (λ={lam_text})",
        "",
        "",
        pm(gs["tg"]["mean"], gs["tg"]["std"], "+.2f", gs["tg"].get("se")),
        effect_label(gs["effect"], n),
    )
    if "forkmerge" in summary:
        f = summary["forkmerge"]
        table.add_row(
            "forkmerge",
            "",
            pm(f["test_score"]["mean"], f["test_score"]["std"], ".2f"),
            pm(f["tg"]["mean"], f["tg"]["std"], "+.2f", f["tg"].get("se")),
            effect_label(f["effect"], n),
        )
    console.print(table)
    subject = f"{', '.join(cfg.aux)} → {cfg.target}"
    key = f"{summary['best_lam']:g}"
    row = summary["per_lam"][key]
    best = {"mean": row["tg_mean"], "std": row["tg_std"], "seeds": n}
    best |= {"se": row.get("tg_se"), "se_kind": row.get("tg_se_kind")}
    best_fields = stat_view(best, summary["effect_per_lam"][key])
    console.print(
        tg_sentence(f"best λ={key}, {subject}", best_fields, summary.get("metric")),
        highlight=False,
        soft_wrap=True,
    )
    if "forkmerge" in summary:
        fm_fields = stat_view(summary["forkmerge"]["tg"], summary["forkmerge"]["effect"])
        console.print(
            tg_sentence(f"ForkMerge vs STL on {cfg.target}", fm_fields, summary.get("metric")),
            highlight=False,
            soft_wrap=True,
        )
    print_paths(path)


# --- pairwise -----------------------------------------------------------------------------


def _pairwise_options(
    domains: opt.Tasks = "all",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="ew (equal-weight joint training of the pair), forkmerge (two branches: the "
            "target alone, the target + the auxiliary domain), or both: `ew,forkmerge`.",
        ),
    ] = "ew",
    seeds: opt.Seeds = "0",
    merge_every: opt.MergeEvery = None,
    merge_heads: opt.MergeHeads = ForkMergeOptions.merge_heads,
    merge_op: opt.MergeOpOption = ForkMergeOptions.merge_op,
    ties_k: opt.TiesK = ForkMergeOptions.ties_k,
    dare_p: opt.DareP = ForkMergeOptions.dare_p,
    resume: opt.Resume = False,
) -> None: ...


@opt.command(
    _pairwise_options,
    opt.training_options,
    opt.parallel_options,
    opt.run_options,
    exclude=("seed",),
)
def pairwise_command(ctx: typer.Context, values: dict) -> None:
    """Transfer gain of every ordered (target, auxiliary) pair of domains (Figs. 5, 6a–b).

    Each cell trains the pair (cached; the target's STL run is shared by its row). Writes
    pairwise.csv (target, aux, method, seed, score, stl_score, tg, …), one heatmap per method
    (pairwise_ew.png, pairwise_forkmerge.png) and results.json (negative cells per method,
    each target's regime over its auxiliary domains). A killed run continues with --resume.
    """
    import pandas as pd

    from ntlab.analysis import pairwise as pw

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        tasks = bench.tasks()
        domains = opt.task_list(opts["domains"], bench)
        methods = pw.check_methods([m.strip() for m in opts["method"].split(",") if m.strip()])
        seeds = parse_seeds(opts["seeds"])
        settings = opt.parallel_settings(opts)
        cfg = _base({**opts, "target": domains[0], "aux": domains[1]}, tasks, method="ew")
        fm = _forkmerge_options(cfg, opts) if "forkmerge" in methods else None
        bench.fingerprint()
        record = run_record(
            opts,
            cfg,
            bench,
            domains=domains,
            methods=methods,
            seeds=seeds,
            forkmerge=asdict(fm) if fm else None,
        )
        path = Path(opts["out"] or default_out("pairwise"))
        if opts["resume"]:
            check_resumable(opts["out"], CELLS, record, "pairwise")
        run = RunDir(path, overwrite=opts["overwrite"], resume=opts["resume"])
    with guarded(run):
        cells = pw.pairwise_cells(domains, methods, seeds)
        wanted = {cell.key() for cell in cells}
        done = (
            resumed_rows(run.path, CELLS, {"target": str, "aux": str, "method": str, "seed": int})
            if opts["resume"]
            else pd.DataFrame()
        )
        rows = [
            r for r in done.to_dict("records")
            if (r["target"], r["aux"], r["method"], int(r["seed"])) in wanted
        ]  # fmt: skip
        finished = {(r["target"], r["aux"], r["method"], int(r["seed"])) for r in rows}
        run.start("pairwise", record)
        if opts["resume"]:
            resume_note(len(finished), len(cells), opts["quiet"], "cells")
        new_rows = []
        started = time.time()
        with StepProgress(opts["quiet"]) as progress:
            todo = [cell for cell in cells if cell.key() not in finished]
            ran, overall = Parallel(), None
            if settings.parallel:  # train every cell at once into the cache, then read it
                jobs = [job for cell in todo for job in pw.cell_jobs(cfg, cell, fm)]
                ran = run_parallel(jobs, settings, progress)
            else:
                overall = progress.overall("pairwise", len(cells), "cells", len(finished))
            for cell in todo:
                jobs = pw.cell_jobs(cfg, cell, fm) if settings.parallel else []
                if ran.blocked(jobs):
                    continue  # a training it needs failed: left for --resume

                def on_step(name: str, cell: pw.Cell = cell):
                    if settings.parallel:
                        return None  # every training is in the cache now
                    fm_run = name == "forkmerge"
                    total = cfg.steps * (2 if fm_run else 1)
                    label = f"{name} {cell.target} ← {cell.aux} seed {cell.seed}"
                    return progress.callback(label, total, count=fm_run)

                row = pw.run_cell(cfg, cell, fm, on_step)
                new_rows.append({**row, "source": ran.source(jobs, row["source"])})
                rows.append(new_rows[-1])
                _write_csv(run.path / CELLS, pd.DataFrame(rows))
                if overall:
                    overall.advance()
        ran.raise_failed("cells")
        order = {key: i for i, key in enumerate(c.key() for c in cells)}
        rows.sort(key=lambda r: order[(r["target"], r["aux"], r["method"], int(r["seed"]))])
        table = pd.DataFrame(rows)
        run.write_table("pairwise.csv", table)
        summary = {**metric_fields(cfg), **pw.pairwise_summary(table)}
        trained = sum(r["source"] == "run" for r in new_rows)  # by this invocation
        results = {
            "domains": domains,
            "steps": cfg.steps,
            **summary,
            "cells_trained": trained,
            "cells_from_cache": len(new_rows) - trained,
            "cells_resumed": len(finished),
            "loop_s": round(time.time() - started, 1),
        }
        complete(run, results, opts["format"])
        _print_pairwise(table, summary, methods, run.path, opts["quiet"])


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def _print_pairwise(
    table: pd.DataFrame, summary: dict, methods: list[str], path: Path, quiet: bool
) -> None:

    from ntlab.analysis import pairwise as pw
    from ntlab.metrics import regime_label, rule_caption, stat_view, tg_sentence

    if quiet:
        console.print(str(path))
        return
    n = len(summary["seeds"])
    for m in methods:
        matrix = pw.tg_matrix(table, m)
        noise = pw.tg_noise_matrix(table, m)
        effects = pw.cell_effects(table, m)
        info = summary["methods"][m]
        out = Table(
            title=f"{m}: TG (test, mean over seeds): of {info['cells']} pairs "
            f"{info['hurt_cells']} hurt and {info['helped_cells']} help beyond noise, "
            f"mean {info['mean_tg']:+.2f}",
            title_justify="left",
            caption=f"(in brackets): within noise; regime of each target over its auxiliary "
            f"domains; {rule_caption(n)}",
        )
        out.add_column("target \\ aux")
        for a in matrix.columns:
            out.add_column(a, justify="right")
        out.add_column("regime")
        regimes = info["regime_per_target"]
        for t, row in matrix.iterrows():
            cells = [_cell(v, noise.loc[t, a], effects.loc[t, a]) for a, v in row.items()]
            out.add_row(t, *cells, regime_label(regimes[t], n) if t in regimes else "")
        console.print(out)
        beyond, within = [], 0
        for cell, v in info["cells_tg"].items():
            target, aux = cell.split("<-")
            if v["effect"] == "within_noise":
                within += 1
                continue
            subject = f"{m}: {aux} {v['effect']} {target}"
            beyond.append(tg_sentence(subject, stat_view(v), summary.get("metric")))
        for line in beyond:
            console.print(line, highlight=False, soft_wrap=True)
        console.print(f"{m}: {within} of {info['cells']} pairs within noise", highlight=False)
    print_paths(path)


def _cell(value: float, noise: float, effect: object) -> str:
    """A pairwise cell: `+2.90 ± 0.60`, in brackets when it is within noise."""
    import pandas as pd

    if pd.isna(value):
        return ""
    text = f"{value:+.2f}" + ("" if pd.isna(noise) else f" ± {noise:.2f}")
    return f"({text})" if effect == "within_noise" else text


# --- ternary ------------------------------------------------------------------------------


def _ternary_options(
    target: opt.Target = None,
    aux: Annotated[
        str | None,
        typer.Option(help="Two auxiliary domains A,B: branches target, target+A, target+B."),
    ] = None,
    branch: Annotated[
        list[str],
        typer.Option(
            "--branch",
            help="Three explicit branches as task weights instead of --aux (as in ForkMerge), "
            "e.g. `optdigits=1`; repeat it three times.",
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    resolution: Annotated[
        int, typer.Option(help="Grid of the simplex: steps of 1/R (R=10 → 66 points).")
    ] = 10,
    merge_op: opt.MergeOpOption = ForkMergeOptions.merge_op,
    ties_k: opt.TiesK = ForkMergeOptions.ties_k,
    dare_p: opt.DareP = ForkMergeOptions.dare_p,
) -> None: ...


@opt.command(_ternary_options, opt.training_options, opt.run_options)
def ternary_command(ctx: typer.Context, values: dict) -> None:
    """Merge three branches trained from one start over a simplex grid (Fig. 6, ternary).

    Trains the branches (default: the target alone, target + A, target + B) for --steps each,
    then evaluates Σ_b Λ_b θ_b at every grid point with ForkMerge's grid search. Writes
    ternary.csv (w0, w1, w2, val_score, test_score, tg, best), ternary.png and results.json.
    """
    from ntlab.analysis import ternary as tn
    from ntlab.core.forkmerge import BranchSpec, parse_branch
    from ntlab.core.merge import MergeOp
    from ntlab.core.runner import cached_run, stl_config
    from ntlab.core.train import LossTerm
    from ntlab.metrics import effect_label, tg_sentence, tg_text

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        tasks = bench.tasks()
        resolution = tn.check_resolution(opts["resolution"])
        merge = MergeOp(opts["merge_op"], opts["ties_k"], opts["dare_p"], opts["seed"]).check()
        if opts["branch"]:
            if opts["aux"]:
                raise NtlabError("give either --aux A,B or three --branch, not both")
            specs = [parse_branch(text, tasks) for text in opts["branch"]]
            aux = sorted(
                {t for s in specs for term in s.terms for t in term.tasks} - {opts["target"]}
            )
        else:
            if not opts["aux"]:
                others = [t for t in tasks if t != opts["target"]][:2]
                raise NtlabError(f"--aux needs two auxiliary tasks, e.g. --aux {','.join(others)}")
            aux = [a.strip() for a in opts["aux"].split(",") if a.strip()]
            if len(aux) != 2:
                raise NtlabError(f"--aux needs exactly two auxiliary domains, got {len(aux)}")
            specs = None
        cfg = _base({**opts, "aux": ",".join(aux) or "all"}, tasks, method="ew")
        if specs is None:
            tgt = LossTerm(cfg.target, (cfg.target,), 1.0)
            specs = [BranchSpec((tgt,))] + [
                BranchSpec((tgt, LossTerm(a, (a,), 1.0))) for a in cfg.aux
            ]
        if len(specs) != 3:
            raise NtlabError(f"a ternary map needs exactly three --branch, got {len(specs)}")
        if specs[0].terms != (LossTerm(cfg.target, (cfg.target,), 1.0),):
            raise NtlabError(f"the first --branch must be the target alone ({cfg.target}=1)")
        bench.fingerprint()
        run = RunDir(opts["out"] or default_out("ternary", cfg.target), overwrite=opts["overwrite"])
    with guarded(run):
        labels = [s.describe() for s in specs]
        record = run_record(
            opts, cfg, bench, branches=labels, resolution=resolution, merge_op=merge.describe()
        )
        run.start("ternary", record)
        with StepProgress(opts["quiet"]) as progress:
            stl, source = cached_run(
                stl_config(cfg), progress.callback(f"stl → {cfg.target}", cfg.steps)
            )
            bars: dict = {}  # each branch's bar, made when it starts training

            def on_step(b: int, step: int) -> None:
                if b not in bars:
                    bars[b] = progress.callback(f"branch {b}: {labels[b]}", cfg.steps)
                if bars[b]:
                    bars[b](step)

            table, own = tn.ternary_table(cfg, specs, resolution, stl, on_step, merge)
        run.write_table("ternary.csv", table)
        summary = {**metric_fields(cfg), **tn.ternary_summary(table, own)}
        results = {
            "target": cfg.target,
            "steps": cfg.steps,
            "resolution": resolution,
            "merge_op": merge.describe(),
            "stl": {
                "val_score": stl["val_score"],
                "test_score": stl["test_score"],
                "source": source,
            },
            **summary,
        }
        complete(run, results, opts["format"])
        if opts["quiet"]:
            console.print(str(run.path))
            return
        out = results_table(
            f"ternary: {cfg.target}, {len(table)} merges "
            f"({summary['within_noise_points']} within noise), TG on test",
            ["point", "Λ", *score_headers(summary), "TG ± SE", "verdict"],
            left=("point", "Λ", "verdict"),
        )
        for b, o in enumerate(own):
            corner = summary["corners"][o["task_weights"]]
            out.add_row(f"branch {b}", "/".join("1" if i == b else "0" for i in range(3)),
                        f"{o['val_score']:.2f}", f"{o['test_score']:.2f}", tg_text(corner),
                        effect_label(corner["effect"]))  # fmt: skip
        best = summary["best"]
        out.add_row("best on val", "/".join(f"{w:.1f}" for w in best["weights"]),
                    f"{best['val_score']:.2f}", f"{best['test_score']:.2f}", tg_text(best),
                    effect_label(best["effect"]))  # fmt: skip
        weights = "(" + ", ".join(f"{w:.1f}" for w in best["weights"]) + ")"
        console.print(
            "branches: " + " · ".join(f"{b} {o['task_weights']}" for b, o in enumerate(own)),
            highlight=False,
            soft_wrap=True,
        )
        console.print(out)
        console.print(
            tg_sentence(
                f"the merge chosen on validation {weights} vs STL on {cfg.target}",
                best,
                summary.get("metric"),
            ),
            highlight=False,
            soft_wrap=True,
        )
        print_paths(run.path)
