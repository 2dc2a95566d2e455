"""ntlab's speed on one GPU, in one unattended run: every figure of the GPU targets.

1. STL steps/s of the default digits model (cnn, width 16, 16 px, batch 64): eager, with
   `--compile default`, `--compile reduce-overhead` (the backbone's CUDA graphs) and
   `--compile captured` (the whole step as one CUDA graph), the last two CUDA only; and how
   far the captured training's weights are from the eager one's after the same steps;
2. ForkMerge with 3 per-task branches (the target alone + one per auxiliary domain) over
   STL, wall time for the same steps, with `--branch-exec sequential` and `concurrent`;
   and the merge search's share of ForkMerge's wall time;
3. resnet50 at 224 px, images/s of a training step: fp32 against bf16 + channels-last;
4. the image-list loader, images/s with 1, 2, 4, 8 loader processes decoding on the CPU,
   and with the same processes only reading the files while the GPU decodes
   (`--decode gpu`); the fewest processes at which the loader outpaces resnet50's best.

Needs nothing from the network: the digits benchmark is built from stand-in MNIST files
made from scikit-learn's bundled digits (the speed does not depend on the pictures), and
the image list is generated JPEGs of DomainNet's size, in a temporary folder.

    python benchmarks/gpu_speed.py                           # on the GPU (under 5 minutes)
    python benchmarks/gpu_speed.py --device cpu --small      # a reduced run on the CPU
    python benchmarks/gpu_speed.py --json speed.json         # also write the figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loader_throughput's JPEG maker

TARGETS = {
    "stl_speedup": 4.0,  # best compiled or captured / eager, ≥
    "stl_steps_per_s": 800.0,  # ≥, at batch 64
    "forkmerge_over_stl": 1.5,  # ≤
    "search_share": 0.05,  # ≤
    "bf16_speedup": 1.5,  # resnet50 bf16 + channels-last / fp32, ≥
    "loader_workers": 8,  # processes at which the loader stops limiting resnet50, ≤
}


@dataclass(frozen=True)
class Scale:
    """How much each part measures: the full run (GPU) or --small (CPU, under a minute)."""

    stl_steps: int = 400
    fm_steps: int = 400
    resnet: str = "resnet50"
    resnet_px: int = 224
    resnet_batch: int = 64
    resnet_steps: int = 20
    images: int = 768
    loader_batches: int = 6
    workers: tuple[int, ...] = (1, 2, 4, 8)
    compile_modes: tuple[str, ...] = ("default", "reduce-overhead", "captured")


SMALL = Scale(
    stl_steps=30,
    fm_steps=24,
    resnet="resnet18",
    resnet_px=64,
    resnet_batch=8,
    resnet_steps=2,
    images=48,
    loader_batches=2,
    workers=(0, 1),
    compile_modes=(),  # inductor takes ~40 s to compile on a CPU: tests/core/test_speed.py
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build_digits(home: Path) -> None:
    """A digits build from stand-in MNIST files, into `home` (NTLAB_HOME)."""
    from ntlab.data.digits import DigitsConfig, prepare_digits
    from ntlab.data.mnist import write_stand_in_mnist

    os.environ["NTLAB_HOME"] = str(home)
    write_stand_in_mnist(home / "mnist", n_train=1200, n_test=597)  # all 1,797 of them
    train = dict.fromkeys(("mnist", "optdigits", "syn", "mnistm", "permlo"), 300)
    prepare_digits(DigitsConfig(size=16, train=train, val=100, test=100), home / "mnist", False)


def train_rate(cfg, steps: int, warmup: int) -> tuple[float, float]:
    """(steps/s of the training loop after `warmup` steps, seconds the warm-up took)."""
    from ntlab.core.runner import benchmark_of, build_model, resolve_device
    from ntlab.core.state import TrainState
    from ntlab.core.train import active_terms, attach_sources, train

    device = resolve_device(cfg.device)
    terms = active_terms(cfg.terms())
    data = benchmark_of(cfg).load([cfg.target], device)
    state = TrainState.create(build_model(cfg, data, device), cfg.optim(), warmup + steps)
    attach_sources(state, terms, data, cfg.batch_size, cfg.seed)
    warm = timed(lambda: train(state, terms, warmup, log_every=10**9), device)
    return steps / timed(lambda: train(state, terms, steps, log_every=10**9), device), warm


def stl_speed(device: str, scale: Scale) -> dict:
    from ntlab.core.runner import TrainConfig

    base = TrainConfig(target="mnistm", steps=scale.stl_steps, device=device, eval_every=10**6)
    modes = {"eager": "off", **{f"compile {m}": m for m in scale.compile_modes}}
    if not device.startswith("cuda"):  # no CUDA graphs on the CPU
        modes = {k: v for k, v in modes.items() if v not in ("reduce-overhead", "captured")}
    out = {}
    for name, mode in modes.items():
        warmup = 20 if mode != "off" else 5
        timing = attempt(train_rate, replace(base, compile=mode), scale.stl_steps, warmup)
        out[name] = timing if failed(timing) else dict(zip(("steps_per_s", "warmup_s"), timing))
    return out


def captured_agreement(device: str, steps: int = 100) -> float:
    """max |θ_captured − θ_eager| after `steps` steps of the same STL training."""
    from ntlab.core.runner import TrainConfig, run_training

    cfg = TrainConfig(target="mnistm", steps=steps, device=device, eval_every=steps)
    eager = run_training(cfg).state.model.state_dict()
    captured = run_training(replace(cfg, compile="captured")).state.model.state_dict()
    return max(float((eager[k].float() - captured[k].float()).abs().max()) for k in eager)


def forkmerge_speed(device: str, scale: Scale, compile_mode: str) -> dict:
    from ntlab.core.forkmerge import ForkMergeOptions, per_task_branches, run_forkmerge
    from ntlab.core.runner import TrainConfig, resolve_device, run_training

    dev = resolve_device(device)
    steps = scale.fm_steps
    cfg = TrainConfig(
        target="mnistm", method="ew", aux=["syn", "mnist"], steps=steps, device=device,
        eval_every=steps, compile=compile_mode,
    )  # fmt: skip
    stl = replace(cfg, method="stl", aux=[])
    branches = per_task_branches(cfg.target, cfg.aux)
    run_training(replace(stl, steps=max(2, steps // 10)))  # warm-up (and any compiling)
    out = {"stl_s": min(timed(lambda: run_training(stl), dev) for _ in range(2))}
    for mode in ("sequential", "concurrent"):
        if mode == "concurrent" and compile_mode in ("default", "reduce-overhead"):
            out[mode] = {"failed": "torch.compile is not thread-safe: refused by ntlab"}
            continue
        opts = ForkMergeOptions(merge_every=max(1, steps // 4), branch_exec=mode)
        outcomes: list = []

        def run(o=opts, into=outcomes) -> None:
            into.append(run_forkmerge(cfg, branches, o))

        wall = timed(run, dev)
        timings = outcomes[0].timings
        out[mode] = {
            "wall_s": wall,
            "over_stl": wall / out["stl_s"],
            "search_s": timings["search"],
            "search_share": timings["search"] / wall,
        }
    return out


def resnet_speed(device: str, scale: Scale) -> dict:
    """images/s of the training loop on in-memory images (so no loader): fp32 against
    bf16 + channels-last."""
    from ntlab.core.runner import resolve_device
    from ntlab.core.speed import configure
    from ntlab.core.state import OptimConfig, TrainState
    from ntlab.core.train import LossTerm, attach_sources, train
    from ntlab.data.benchmark import TaskData
    from ntlab.models import BACKBONES, MultiTaskModel

    dev = resolve_device(device)
    g = torch.Generator().manual_seed(0)
    n, px = 4 * scale.resnet_batch, scale.resnet_px
    images = torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8, generator=g).to(dev)
    labels = torch.randint(0, 345, (n,), generator=g).to(dev)
    data = {"t": TaskData("t", 345, {"train": (images, labels)})}
    terms = [LossTerm("t", ("t",), 1.0)]
    out = {}
    for name, precision, layout in (
        ("fp32", "fp32", "contiguous"),
        ("bf16 + channels-last", "bf16", "channels-last"),
    ):
        torch.manual_seed(0)
        model = MultiTaskModel(BACKBONES.get(scale.resnet)(), {"t": 345}).to(dev)
        configure(model, precision, layout)
        state = TrainState.create(model, OptimConfig("sgd", 0.01), 10**6)
        attach_sources(state, terms, data, scale.resnet_batch, 0)
        train(state, terms, 2, log_every=10**9)  # warm-up (cuDNN's choices)
        wall = timed(lambda s=state: train(s, terms, scale.resnet_steps, log_every=10**9), dev)
        out[name] = {"images_per_s": scale.resnet_steps * scale.resnet_batch / wall}
    out["speedup"] = out["bf16 + channels-last"]["images_per_s"] / out["fp32"]["images_per_s"]
    return out


def loader_speed(device: str, scale: Scale, folder: Path, model_images_s: float) -> dict:
    from loader_throughput import write_list

    from ntlab.core.runner import resolve_device
    from ntlab.data import get_benchmark
    from ntlab.data.sampler import BatchSource, seeded_generator

    dev = resolve_device(device)
    root = write_list(folder, scale.images)
    decoders = ("cpu", "gpu") if dev.type == "cuda" else ("cpu",)
    out: dict = {"model_images_per_s": model_images_s}
    for decode in decoders:
        rates = {}
        for workers in scale.workers:
            bench = get_benchmark(
                "imagelist", root=str(root), domains=["real"], workers=workers,
                image_size=scale.resnet_px, decode=None if decode == "cpu" else decode,
            )  # fmt: skip
            data = bench.load(["real"], dev)
            src = BatchSource([data["real"]], [0], scale.resnet_batch, seeded_generator(0, "b"))
            src.next()  # start the processes, fill their queue
            wall = timed(lambda s=src: [s.next() for _ in range(scale.loader_batches)], dev)
            src.release()
            rates[workers] = scale.loader_batches * scale.resnet_batch / wall
        enough = [w for w, r in rates.items() if r >= model_images_s]
        out[decode] = {
            "images_per_s": rates,
            "per_worker": {w: r / max(1, w) for w, r in rates.items()},
            "workers_needed": min(enough) if enough else None,
        }
    return out


def verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "not reached in the range tried"
    met = value >= target if at_least else value <= target
    return f"{'meets' if met else 'misses'} {'≥' if at_least else '≤'} {target:g}"


def attempt(fn, *args) -> dict | float:
    """`fn(*args)`, or {"failed": the reason} (its traceback on stderr): one failing part
    must not cost the others' figures."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the table, and in the exit code
        traceback.print_exc()
        return {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def failed(part) -> str | None:
    return part.get("failed") if isinstance(part, dict) else None


def report_stl(figures: dict) -> None:
    stl = figures["stl"]
    rates = {k: v["steps_per_s"] for k, v in stl.items() if not failed(v)}
    eager = rates.get("eager")
    agreement = figures.get("captured_max_diff")
    if agreement is not None:
        value = failed(agreement) or f"{agreement:.2e}"
        print(f"| captured vs eager, 100 STL steps: max abs weight difference | {value} | |")
    for name, v in stl.items():
        if failed(v):
            print(f"| STL steps/s, digits cnn, batch 64, {name} | failed: {failed(v)} | |")
            continue
        extra = f" (warm-up {v['warmup_s']:.1f} s)" if name != "eager" else ""
        ratio = f" ({v['steps_per_s'] / eager:.2f}× eager)" if eager else ""
        rate = f"{v['steps_per_s']:.0f}{ratio}"
        print(f"| STL steps/s, digits cnn, batch 64, {name}{extra} | {rate} | |")
    if eager and rates:
        best = max(rates.values())
        print(
            f"| STL best / eager | {best / eager:.2f}× | {verdict(best / eager, 4, True)}; "
            f"{best:.0f} steps/s {verdict(best, 800, True)} |"
        )


def report_forkmerge(fm: dict, scale: Scale) -> None:
    if failed(fm):
        print(f"| ForkMerge, 3 per-task branches / STL | failed: {failed(fm)} | |")
        return
    print(f"| STL, {scale.fm_steps} steps (with evaluation) | {fm['stl_s']:.2f} s | |")
    shares = []
    for mode in ("sequential", "concurrent"):
        f = fm[mode]
        if failed(f):
            print(f"| ForkMerge, 3 per-task branches, {mode} / STL | failed: {failed(f)} | |")
            continue
        shares.append(f["search_share"])
        print(
            f"| ForkMerge, 3 per-task branches, {mode} / STL | {f['over_stl']:.2f}× "
            f"({f['wall_s']:.2f} s) | {verdict(f['over_stl'], 1.5, False)} |"
        )
    if shares:
        share = min(shares)
        judged = verdict(share, 0.05, False)
        print(f"| merge search / ForkMerge wall time | {share:.1%} | {judged} |")


def report_resnet(rn: dict, scale: Scale) -> None:
    if failed(rn):
        print(f"| {scale.resnet} fp32 vs bf16 + channels-last | failed: {failed(rn)} | |")
        return
    for name in ("fp32", "bf16 + channels-last"):
        print(
            f"| {scale.resnet} @ {scale.resnet_px} px, batch {scale.resnet_batch}, {name} | "
            f"{rn[name]['images_per_s']:.0f} images/s | |"
        )
    speedup = rn["speedup"]
    print(f"| bf16 + channels-last / fp32 | {speedup:.2f}× | {verdict(speedup, 1.5, True)} |")


def report_loader(ld: dict) -> None:
    if failed(ld):
        print(f"| loader images/s | failed: {failed(ld)} | |")
        return
    for decode in ("cpu", "gpu"):
        if decode not in ld:
            print("| loader, GPU decoding | not measured (no CUDA device) | |")
            continue
        if failed(ld[decode]):
            print(f"| loader, {decode} decoding | failed: {failed(ld[decode])} | |")
            continue
        rates = ld[decode]["images_per_s"]
        line = ", ".join(f"{w}: {r:.0f}" for w, r in rates.items())
        needed = ld[decode]["workers_needed"]
        target = "" if needed is None else verdict(needed, 8, False)
        print(
            f"| loader images/s by processes, {decode} decoding | {line} | "
            f"{'never reaches the model' if needed is None else f'{needed} processes'} "
            f"{target} |"
        )


def report(figures: dict, device_name: str, scale: Scale) -> None:
    print(f"# ntlab GPU speed — {device_name}, torch {torch.__version__}")
    print()
    print("| measurement | value | target |")
    print("|---|---:|---|")
    report_stl(figures)
    report_forkmerge(figures["forkmerge"], scale)
    report_resnet(figures["resnet"], scale)
    report_loader(figures["loader"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="a reduced run (CPU, < 1 min)")
    parser.add_argument(
        "--forkmerge-compile", default="off", help="--compile of the ForkMerge/STL runs"
    )
    parser.add_argument("--threads", type=int, help="torch's CPU threads [default: torch's]")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = SMALL if args.small else Scale()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        build_digits(Path(tmp) / "home")
        figures = {"device": name, "small": args.small}
        figures["stl"] = stl_speed(args.device, scale)
        if args.device.startswith("cuda"):
            figures["captured_max_diff"] = attempt(captured_agreement, args.device)
        figures["forkmerge"] = attempt(forkmerge_speed, args.device, scale, args.forkmerge_compile)
        figures["resnet"] = rn = attempt(resnet_speed, args.device, scale)
        best_model = 0.0 if failed(rn) else max(v["images_per_s"] for k, v in rn.items()
                                                 if k != "speedup")  # fmt: skip
        figures["loader"] = attempt(
            loader_speed, args.device, scale, Path(tmp) / "images", best_model
        )
    figures["seconds"] = time.perf_counter() - started
    report(figures, name, scale)
    print(f"\n{figures['seconds']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    broken = json.dumps(figures, default=str).count('"failed"')
    if broken:
        print(f"{broken} part(s) failed; their tracebacks are above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
