"""Image-list loading against the model: which one limits a training step?

Measures, in one run on this machine:
1. the loader alone: images/s of `BatchSource` over JPEG files (decode, resize 256,
   random-resized crop 224, flip, normalise) with 0, 1, … loader processes;
2. the model alone: steps/s of resnet18 at 224 px (forward, backward, SGD step) on batches
   already in memory;
3. both together: the real training loop (`ntlab.core.train.train`) on the files.

Without `--root` it writes a DomainNet-like image list first: JPEGs of 400×300 pixels
(DomainNet's photos are mostly a few hundred pixels a side) with smooth colour fields
and edges, so that they compress and decode like photographs rather than like noise.

    python benchmarks/loader_throughput.py [--root DIR --domain real] [--batches 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg

from ntlab.core.state import OptimConfig, TrainState
from ntlab.core.train import LossTerm, attach_sources, train
from ntlab.data import get_benchmark
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.models import BACKBONES, MultiTaskModel


def photo_like(seed: int, height: int = 300, width: int = 400) -> bytes:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=g)
    img = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    img = img + 0.08 * torch.randn(3, height, width, generator=g)
    yy = torch.arange(height).view(-1, 1)
    img[:, (yy // 37 % 5 == 0).expand(height, width)] *= 0.5  # some edges
    return encode_jpeg((img.clamp(0, 1) * 255).to(torch.uint8), quality=90).numpy().tobytes()


def write_list(root: Path, n: int, classes: int = 345) -> Path:
    (root / "image_list").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rel = f"real/c{i % classes:03d}/{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(photo_like(i))
        lines.append(f"{rel} {i % classes}")
    for split in ("train", "test"):
        (root / "image_list" / f"real_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def loader_rate(root: Path, domain: str, workers: int, batches: int, batch: int) -> float:
    bench = get_benchmark("imagelist", root=str(root), domains=[domain], workers=workers)
    data = bench.load([domain])
    src = BatchSource([data[domain]], [0], batch, seeded_generator(0, "bench"))
    src.next()  # start the workers, fill the queue
    start = time.perf_counter()
    for _ in range(batches):
        src.next()
    return batches * batch / (time.perf_counter() - start)


def model_rate(steps: int, batch: int, size: int = 224) -> float:
    torch.manual_seed(0)
    model = MultiTaskModel(BACKBONES.get("resnet18")(), {"t": 345})
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 345, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model.logits(model.features(x), 0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def pipeline_rate(root: Path, domain: str, workers: int, steps: int, batch: int) -> float:
    bench = get_benchmark("imagelist", root=str(root), domains=[domain], workers=workers)
    data = bench.load([domain])
    torch.manual_seed(0)
    model = MultiTaskModel(BACKBONES.get("resnet18")(), {domain: data[domain].num_classes})
    state = TrainState.create(model, OptimConfig("sgd", 0.01, 5e-4, schedule="cosine"), steps + 1)
    terms = [LossTerm(domain, (domain,), 1.0)]
    attach_sources(state, terms, data, batch, 0)
    train(state, terms, 1)  # warm-up: workers started
    start = time.perf_counter()
    train(state, terms, steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an image-list root (default: generate one)")
    parser.add_argument("--domain", default="real")
    parser.add_argument("--images", type=int, default=600, help="images to generate")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--batches", type=int, default=8, help="batches timed per loader")
    parser.add_argument("--steps", type=int, default=4, help="model steps timed")
    parser.add_argument("--workers", default="0,1,2", help="loader processes to try")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or write_list(Path(tmp), args.images)
        cores = torch.get_num_threads()
        report: dict = {"torch_threads": cores, "batch": args.batch, "image_size": 224}
        report["loader_images_per_s"] = {
            w: round(loader_rate(root, args.domain, int(w), args.batches, args.batch), 1)
            for w in args.workers.split(",")
        }
        steps_s = model_rate(args.steps, args.batch)
        report["model_steps_per_s"] = round(steps_s, 3)
        report["model_images_per_s"] = round(steps_s * args.batch, 1)
        best = max(report["loader_images_per_s"], key=report["loader_images_per_s"].get)
        report["pipeline_steps_per_s"] = {
            w: round(pipeline_rate(root, args.domain, int(w), args.steps, args.batch), 3)
            for w in ("0", best)
        }
        loader = report["loader_images_per_s"][best]
        model = report["model_images_per_s"]
        report["limit"] = "loader" if loader < model else "model"
        report["loader_over_model"] = round(loader / model, 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return

    def workers(n: str) -> str:
        return {"0": "0 workers (in the training process)", "1": "1 worker"}.get(n, f"{n} workers")

    rates = "   ".join(f"{workers(w)} {r:.0f}" for w, r in report["loader_images_per_s"].items())
    loop = "   ".join(
        f"{workers(w).split(' (')[0]} {r:.3f} steps/s"
        for w, r in report["pipeline_steps_per_s"].items()
    )
    print(f"loader images/s   {rates}")
    print(
        f"model             resnet18 @ 224, batch {args.batch}: {steps_s:.3f} steps/s = "
        f"{report['model_images_per_s']:.1f} images/s"
    )
    print(f"training loop     {loop}")
    ratio = report["loader_over_model"]
    print(f"limit: the {report['limit']} (loader / model = {ratio:.0f}×)")


if __name__ == "__main__":
    main()
