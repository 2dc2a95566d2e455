"""Dense multi-task benchmarks: three per-pixel tasks on the same images.

- `scenes` (embedded, built by `ntlab data prepare scenes`): `segment` (11 classes: the
  digits and the background), `depth` and `normal` on 32×32 canvases of MNIST digits
  (ntlab.data.scenes); `segment` is labelled on the first 200 training canvases only (its
  train split is that prefix of the shared images), the others on all 4,000.
- `nyuv2` (`--root DIR` or NTLAB_NYUV2, MTAN's `.npy` layout): `segmentation` (13 classes,
  −1 ignored), `depth` and `normal` (ntlab.data.nyuv2).

The tasks share their inputs: each task's TaskData holds the same image tensor (no copy),
and its own targets. Each task trains on its own mini-batches, as every task of ntlab does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ntlab.data.benchmark import BENCHMARKS, SPLITS, TaskData
from ntlab.errors import NtlabError, unknown_name
from ntlab.storage import prepared_manifest
from ntlab.tasks import TaskSpec, depth_task, normal_task, segmentation_task


def _tasks(names: dict[str, TaskSpec], wanted: list[str], what: str) -> None:
    for name in wanted:
        if name not in names:
            raise unknown_name(f"{what} task", name, list(names))


def _shared(images: dict[str, torch.Tensor], targets: dict[str, dict], specs, wanted) -> dict:
    """One TaskData per wanted task: the split's images (shared) and the task's targets."""
    return {
        name: TaskData(
            name,
            specs[name].num_classes,
            {split: (images[split], targets[split][name]) for split in SPLITS},
            specs[name],
        )
        for name in wanted
    }


@BENCHMARKS.register("scenes")
class ScenesBenchmark:
    """The embedded dense benchmark (see ntlab.data.scenes)."""

    options: tuple[str, ...] = ()
    name = "scenes"
    description = "dense tasks (segment, depth, normal) on canvases of MNIST digits, built locally"
    default_backbone = "fcn"

    def __init__(self, root: Path | None = None) -> None:
        from ntlab.data.scenes import scenes_root

        self.root = root or scenes_root()

    def specs(self) -> dict[str, TaskSpec]:
        from ntlab.data.scenes import CLASSES, segment_loss

        return {
            "segment": replace(segmentation_task(CLASSES), loss=segment_loss),
            "depth": depth_task(),
            "normal": normal_task(),
        }

    def tasks(self) -> list[str]:
        return ["segment", "depth", "normal"]

    def manifest(self) -> dict:
        from ntlab.data.scenes import FORMAT_VERSION, read_scenes_manifest

        manifest = prepared_manifest(
            read_scenes_manifest(self.root), "scenes", self.root, FORMAT_VERSION
        )
        labelled = manifest.get("segment_labelled")
        if type(labelled) is not int or labelled < 1:
            raise NtlabError(
                f"{self.root / 'manifest.json'} is damaged (no valid segment_labelled); "
                "run `ntlab data prepare scenes --force`"
            )
        return manifest

    def fingerprint(self) -> str:
        return self.manifest()["fingerprint"]

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict[str, TaskData]:
        from ntlab.data.scenes import load_scenes_split

        specs = self.specs()
        _tasks(specs, tasks, "scenes")
        manifest = self.manifest()
        images, targets = {}, {}
        for split in SPLITS:
            entry = manifest["splits"][split]
            path = self.root / entry["file"]
            if not path.is_file() or path.stat().st_size != entry.get("bytes"):
                raise NtlabError(
                    f"{path} is missing or damaged; run `ntlab data prepare scenes --force`"
                )
            data = load_scenes_split(path, device)
            images[split] = data["image"]
            targets[split] = {name: data[name] for name in tasks}
        out = _shared(images, targets, specs, tasks)
        if "segment" in out:  # labelled on the first `segment_labelled` training images only
            n = manifest["segment_labelled"]
            x, y = out["segment"].splits["train"]
            out["segment"].splits["train"] = (x[:n], y[:n])
        return out

    def describe(self) -> list[dict]:
        from ntlab.data.scenes import read_scenes_manifest

        manifest = read_scenes_manifest(self.root)
        splits = {s: e["images"] for s, e in manifest["splits"].items()} if manifest else None

        def task_splits(name: str) -> dict | None:
            if splits is None or name != "segment" or "segment_labelled" not in manifest:
                return splits
            return {**splits, "train": manifest["segment_labelled"]}

        return [
            {
                "task": name,
                "kind": "generated",
                "description": spec.description,
                "splits": task_splits(name),
                "path": str(self.root / manifest["splits"]["train"]["file"]) if manifest else None,
                "damaged": None,
            }
            for name, spec in self.specs().items()
        ]


@BENCHMARKS.register("nyuv2")
class NYUv2Benchmark:
    """NYUv2 as MTAN preprocessed it (see ntlab.data.nyuv2); the files are the user's."""

    options: tuple[str, ...] = ("root", "image_size")
    name = "nyuv2"
    description = "NYUv2: segmentation (13 classes), depth, normals; MTAN's .npy files"
    default_backbone = "fcn"
    setup_hint = "pass --root DIR or set NTLAB_NYUV2 (MTAN's nyuv2 folder: train/, val/)"

    def __init__(self, root: str | None = None, image_size: int | None = None) -> None:
        self._root = root
        self.image_size = image_size

    def root(self) -> Path:
        from ntlab.data.nyuv2 import find_nyuv2

        return find_nyuv2(self._root)

    def specs(self) -> dict[str, TaskSpec]:
        from ntlab.data.nyuv2 import CLASSES

        return {
            "segmentation": segmentation_task(CLASSES),
            "depth": depth_task(),
            "normal": normal_task(),
        }

    def tasks(self) -> list[str]:
        return ["segmentation", "depth", "normal"]

    def size(self) -> tuple[int, int] | None:
        """The (h, w) to downscale to: --image-size is the height, the width keeps the
        native aspect ratio (None: the files' own size)."""
        if self.image_size is None:
            return None
        from ntlab.data.nyuv2 import _native_size, nyuv2_files

        h, w = _native_size(nyuv2_files(self._root))[1]
        return min(self.image_size, h), max(1, round(min(self.image_size, h) * w / h))

    def fingerprint(self) -> dict:
        from ntlab.data.nyuv2 import nyuv2_manifest

        manifest = {k: v for k, v in nyuv2_manifest(self._root).items() if k != "root"}
        return {"manifest": manifest, "size": self.size()}

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict[str, TaskData]:
        from ntlab.data.nyuv2 import load_nyuv2

        specs = self.specs()
        _tasks(specs, tasks, "nyuv2")
        size = self.size()
        images, targets = {}, {}
        key = {"segmentation": "segment", "depth": "depth", "normal": "normal"}
        for split in SPLITS:
            data = load_nyuv2(self._root, split, size)
            images[split] = data["image"].to(device)
            targets[split] = {name: data[key[name]].to(device) for name in tasks}
        return _shared(images, targets, specs, tasks)

    def describe(self) -> list[dict]:
        return []
