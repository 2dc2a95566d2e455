"""`scenes`: an embedded dense multi-task data set, built offline in seconds from a seed.

Each image is an RGB canvas (32×32 by default) with one to three real MNIST digits on tilted
planes in front of a textured, tilted background plane (crops of scikit-learn's bundled
sample photos), and three per-pixel targets of the same scene:

- `segment` [N, S, S] int64: the class of the front-most digit covering the pixel, 0..9,
  or 10 (`BACKGROUND`). A digit (its strokes thickened, STROKE) covers a pixel where its
  anti-aliased alpha is ≥ 0.5; there are no ignored pixels (ntlab.dense_metrics still
  supports −1 for NYUv2's).
- `depth` [N, 1, S, S] float32: the distance along the viewing axis, in canvas widths,
  positive everywhere (about 0.6 to 4.4): the digits in three disjoint depth bands, the
  background behind them all. Apparent size falls with depth, the colours are shaded by
  the surface's angle to a fixed light and fade towards a fog colour with each pixel's
  depth, so depth and normals are visible in the image.
- `normal` [N, 3, S, S] float32: the unit normal of that depth surface, exact from the
  planes' parameters. With x to the right and y down in canvas units and z the depth
  (OpenCV's camera frame, orthographic), the plane z = a + b·x + c·y has the normal
  (b, c, −1)/√(b² + c² + 1), facing the camera.

`build_scenes` also returns what was drawn: `owner` [N, S, S] uint8 (the slot whose plane
shows at each pixel, 0..2 front to back, 3 for the background), `labels` [N, 3] (the digit
of each slot, −1 for an empty slot), `boxes` [N, 3, 3] (left, top, side in canvas units)
and `planes` [N, 4, 3] ((a, b, c) of the three slots and the background).

`prepare_scenes` writes train/val/test to NTLAB_HOME/datasets/scenes/ (one `.pt` per split)
with a manifest holding the config and a content fingerprint. A split file keeps the images,
what was drawn and a uint8 map of which plane shows at each pixel, 4 KB an image at 32×32
instead of 28 KB with the targets: `load_scenes_split` recomputes the targets from it,
exactly as built. The `scenes` benchmark (ntlab.data.dense) registers these splits as three
dense tasks on shared inputs, trained with ntlab.dense_metrics' losses and evaluated with its
meters.

Labels are scarce for `segment` only: it trains on the first `segment_labels` (200) training
images, depth and normal on all of them; every task is evaluated on the full val and test
splits. With every label kept, no task helps another beyond seed noise at the default
preset; with 200 `segment` labels, depth helps segment (README, "Calibration of `scenes`").
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntlab.data.mnist import file_digest, load_mnist
from ntlab.data.sampler import seeded_generator
from ntlab.errors import NtlabError
from ntlab.paths import datasets_dir, downloads_dir
from ntlab.storage import building_folder, same_build, sizes_match

FORMAT_VERSION = 3  # 2: the calibrated geometry and the depth cueing; 3: scarce segment labels
SLOTS = 3  # at most three digits per image
BACKGROUND = 10
CLASSES = 11  # digits 0..9 and the background
SPLIT_NAMES = ("train", "val", "test")
# the direction towards a light up-left of the camera, for the shading
LIGHT = F.normalize(torch.tensor([-0.4, -0.5, -0.77]), dim=0)
SUPERSAMPLE = 2  # digits are drawn at twice the resolution and averaged down
CHUNK = 256  # images rendered at once (memory stays below ~100 MB)
PHOTO_SCALES = (2.0, 3.0, 4.0)  # photo pixels per canvas pixel of a 32×32 canvas
# The geometry (calibrated so that each task learns in the default preset, README): slot k's
# box centre sits at depth DIGIT_Z + DIGIT_DZ·k, its apparent side is DIGIT_SIZE / depth
# (at most 0.9 of the canvas), tilted up to DIGIT_TILT degrees; the background at
# BACKGROUND_Z to BACKGROUND_Z + 0.5 at the canvas centre, tilted up to 30°.
DIGIT_Z, DIGIT_DZ, DIGIT_SIZE, DIGIT_TILT, BACKGROUND_Z = 1.0, 0.8, 1.3, 25.0, 3.5
# MNIST's strokes are thickened by a STROKE×STROKE max filter before they are drawn
STROKE = 3
BACKGROUND_WEIGHT = 0.1  # of the background's pixels in `segment_loss`
# Depth cueing: each surface's colour fades towards FOG by FOG_MAX·(1 − exp(−z/FOG_DEPTH))
# at depth z, per pixel, so depth and (through its gradient) tilt show in the image.
FOG = torch.tensor([0.7, 0.75, 0.8])
FOG_MAX, FOG_DEPTH = 0.6, 2.5

STORED = ("image", "owner", "labels", "boxes", "planes")  # the targets follow from them
# `segment` is labelled on this many training images by default (ScenesConfig.segment_labels)
SEGMENT_LABELS = 200


@dataclass
class ScenesConfig:
    """How the splits are built; stored in the manifest and part of the fingerprint."""

    seed: int = 0
    size: int = 32
    train: int = 4000
    val: int = 500
    test: int = 1000
    # `segment` is labelled on the first min(segment_labels, train) training images; depth
    # and normal on all of them (README, "Calibration of `scenes`": scarce labels are what
    # lets an auxiliary task help). Validation and test are labelled in full.
    segment_labels: int = SEGMENT_LABELS

    def validate(self) -> None:
        if not 16 <= self.size <= 64:
            raise NtlabError(f"the scenes' size must be 16 to 64 pixels, got {self.size}")
        for split in SPLIT_NAMES:
            if getattr(self, split) < 1:
                raise NtlabError(f"the scenes' {split} split needs at least 1 image")
        if self.segment_labels < 1:
            raise NtlabError(
                f"--segment-labels must be at least 1 training image, got {self.segment_labels}"
            )

    @property
    def segment_labelled(self) -> int:
        """How many training images carry `segment` labels."""
        return min(self.segment_labels, self.train)


# --- building --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _photo_levels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's photos at a few scales, zero-padded into one [L, 3, H, W] tensor in
    [0, 1], and each level's (height, width)."""
    from sklearn.datasets import load_sample_images

    photos = [
        torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255)
        for im in load_sample_images().images
    ]
    levels, extents = [], []
    for scale in PHOTO_SCALES:
        for photo in photos:
            h, w = (round(d * size / (32 * scale)) for d in photo.shape[1:])
            levels.append(
                F.interpolate(photo[None], size=(h, w), mode="bilinear", antialias=True)[0]
            )
            extents.append((h, w))
    hmax, wmax = max(h for h, _ in extents), max(w for _, w in extents)
    stack = torch.stack(
        [F.pad(lv, (0, wmax - lv.shape[2], 0, hmax - lv.shape[1])) for lv in levels]
    )
    return stack, torch.tensor(extents)


def plane_normals(planes: torch.Tensor) -> torch.Tensor:
    """Unit normals (b, c, −1)/√(b² + c² + 1) of planes z = a + b·x + c·y, [..., 3] → [..., 3]."""
    b, c = planes[..., 1], planes[..., 2]
    return F.normalize(torch.stack([b, c, -torch.ones_like(b)], -1), dim=-1)


def pixel_centres(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) canvas coordinates in [0, 1] of the pixel centres, each [size, size]."""
    r = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return r[None, :].expand(size, size), r[:, None].expand(size, size)


def _tilt(n: int, shape: tuple[int, ...], max_deg: float, g: torch.Generator) -> torch.Tensor:
    """Depth gradients (b, c) [*shape, 2] of planes tilted up to `max_deg` in any direction."""
    tilt = torch.deg2rad(max_deg * torch.rand(n, *shape, generator=g))
    heading = 2 * math.pi * torch.rand(n, *shape, generator=g)
    return torch.stack([torch.cos(heading), torch.sin(heading)], -1) * torch.tan(tilt)[..., None]


def _draw(n: int, pool: int, size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random choice of `n` scenes, drawn at once, before they are rendered in chunks."""
    count = torch.randint(1, SLOTS + 1, (n,), generator=g)
    rank = torch.rand(n, SLOTS, generator=g).argsort(1).argsort(1)
    active = rank < count[:, None]
    which = torch.randint(pool, (n, SLOTS), generator=g)
    # slot k sits at DIGIT_Z + DIGIT_DZ·k ± 0.1 at its box centre, its tilt adds at most
    # ±0.3 over the box: the bands [0.6, 1.4], [1.45, 2.15], [2.3, 2.9] and the background
    # [3.1, 4.4] never meet (tests/data/test_scenes.py checks the order)
    z0 = DIGIT_Z + DIGIT_DZ * torch.arange(SLOTS) + 0.2 * (torch.rand(n, SLOTS, generator=g) - 0.5)
    side = (DIGIT_SIZE / z0 * (0.85 + 0.3 * torch.rand(n, SLOTS, generator=g))).clamp(max=0.9)
    left = torch.rand(n, SLOTS, generator=g) * (1 - side)
    top = torch.rand(n, SLOTS, generator=g) * (1 - side)
    grad = _tilt(n, (SLOTS,), DIGIT_TILT, g)
    cx, cy = left + side / 2, top + side / 2
    a = z0 - grad[..., 0] * cx - grad[..., 1] * cy
    digit_planes = torch.cat([a[..., None], grad], -1)  # [n, SLOTS, 3]
    bg_grad = _tilt(n, (), 30.0, g)
    bg_z0 = BACKGROUND_Z + 0.5 * torch.rand(n, generator=g)
    bg_a = bg_z0 - 0.5 * bg_grad[:, 0] - 0.5 * bg_grad[:, 1]
    bg_plane = torch.cat([bg_a[:, None], bg_grad], -1)
    colour = torch.rand(n, SLOTS, 3, generator=g)
    dark = torch.rand(n, SLOTS, 1, generator=g) < 0.5
    colour = torch.where(dark, 0.25 * colour, 0.75 + 0.25 * colour)
    levels, extents = _photo_levels(size)
    level = torch.randint(len(levels), (n,), generator=g)
    h, w = extents[level, 0], extents[level, 1]
    crop_top = (torch.rand(n, generator=g) * (h - size + 1)).long()
    crop_left = (torch.rand(n, generator=g) * (w - size + 1)).long()
    flip = torch.rand(n, generator=g) < 0.5
    noise_seed = torch.randint(2**62, (1,), generator=g)
    return {
        "active": active,
        "which": which,
        "boxes": torch.stack([left, top, side], -1),
        "planes": torch.cat([digit_planes, bg_plane[:, None]], 1),
        "colour": colour,
        "level": level,
        "crop": torch.stack([crop_top, crop_left], -1),
        "flip": flip,
        "noise_seed": noise_seed,
    }


def _render(
    p: dict[str, torch.Tensor], digits: torch.Tensor, labels: torch.Tensor, size: int
) -> dict[str, torch.Tensor]:
    """The images of a chunk of drawn scenes and which plane shows at each pixel;
    `digits` [m, SLOTS, 28, 28] in [0, 1]."""
    m = len(labels)
    left, top, side = p["boxes"].unbind(-1)  # [m, SLOTS]
    # the canvas point x ↦ the digit's texture coordinate (x − left)/side ∈ [0, 1], given
    # to grid_sample as 2·that − 1 (align_corners=False: −1 and 1 are the texture's edges)
    hi = size * SUPERSAMPLE
    r = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi
    u = (2 * (r - left.reshape(-1, 1)) / side.reshape(-1, 1) - 1)[:, None, :].expand(-1, hi, -1)
    v = (2 * (r - top.reshape(-1, 1)) / side.reshape(-1, 1) - 1)[:, :, None].expand(-1, -1, hi)
    grid = torch.stack([u, v], -1)  # [m·SLOTS, hi, hi, (x, y)]
    alpha = F.grid_sample(digits.view(m * SLOTS, 1, 28, 28), grid, align_corners=False)
    alpha = F.avg_pool2d(alpha, SUPERSAMPLE).view(m, SLOTS, size, size)
    alpha = alpha * p["active"][:, :, None, None]
    covered = alpha >= 0.5

    owner = torch.full((m, size, size), SLOTS)  # SLOTS: the background
    for k in reversed(range(SLOTS)):  # back to front, so the front-most digit wins
        owner = torch.where(covered[:, k], k, owner)
    normals = plane_normals(p["planes"])  # [m, SLOTS + 1, 3]

    levels, _ = _photo_levels(size)
    r = torch.arange(size)
    rows = (p["crop"][:, 0, None] + r)[:, :, None]
    cols = (p["crop"][:, 1, None] + r)[:, None, :]
    cols = torch.where(p["flip"][:, None, None], cols.flip(-1), cols)
    crop = levels[p["level"][:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [m, 3, S, S]
    shade = 0.35 + 0.65 * (normals @ LIGHT).clamp(0, 1)  # [m, SLOTS + 1]
    x, y = pixel_centres(size)
    pa, pb, pc = (p["planes"][..., i, None, None] for i in range(3))  # [m, SLOTS + 1, 1, 1]
    fog = (FOG_MAX * (1 - torch.exp(-(pa + pb * x + pc * y) / FOG_DEPTH)))[:, :, None]
    fog_colour = FOG[None, :, None, None]
    image = (0.3 + 0.4 * crop) * shade[:, SLOTS, None, None, None]
    image = image * (1 - fog[:, SLOTS]) + fog_colour * fog[:, SLOTS]
    for k in reversed(range(SLOTS)):
        a = alpha[:, k, None]
        surface = (p["colour"][:, k] * shade[:, k, None])[:, :, None, None]
        surface = surface * (1 - fog[:, k]) + fog_colour * fog[:, k]
        image = image * (1 - a) + surface * a
    g = torch.Generator().manual_seed(int(p["noise_seed"][0]))
    image = image + 0.02 * torch.randn(image.shape, generator=g)
    return {"image": (image.clamp(0, 1) * 255).round().to(torch.uint8), "owner": owner.byte()}


def scene_targets(
    owner: torch.Tensor, labels: torch.Tensor, planes: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`segment`, `depth` and `normal` of scenes from which plane shows at each pixel.

    `owner` [N, S, S] holds the slot (0..2) or 3 for the background, `labels` [N, 3] the
    slots' digits and `planes` [N, 4, 3] their (a, b, c): every target follows exactly from
    these, which is also how the splits are stored (see `load_scenes_split`).
    """
    n, size = owner.shape[0], owner.shape[-1]
    owner = owner.long()
    x, y = pixel_centres(size)
    a, b, c = (planes[..., i, None, None] for i in range(3))  # [N, 4, 1, 1]
    depth = (a + b * x + c * y).gather(1, owner[:, None])
    normal = plane_normals(planes)[torch.arange(n)[:, None, None], owner]
    slot_class = torch.cat([labels.long(), torch.full((n, 1), BACKGROUND)], 1)
    segment = slot_class.gather(1, owner.view(n, -1)).view(n, size, size)
    return {
        "segment": segment,
        "depth": depth.float(),
        "normal": normal.permute(0, 3, 1, 2).float().contiguous(),
    }


def build_scenes(
    mnist_x: torch.Tensor | np.ndarray,
    mnist_y: torch.Tensor | np.ndarray,
    n: int,
    size: int = 32,
    seed: int = 0,
    stream: str = "scenes",
) -> dict[str, torch.Tensor]:
    """`n` scenes of `size`×`size` pixels whose digits are drawn (with replacement) from
    `mnist_x` [N, 28, 28] uint8 and `mnist_y` [N]; the same (seed, stream) and digits give
    the same tensors. Keys: see the module docstring."""
    mnist_x = torch.from_numpy(np.array(mnist_x)) if isinstance(mnist_x, np.ndarray) else mnist_x
    mnist_y = torch.as_tensor(np.asarray(mnist_y)).long()
    if mnist_x.dim() != 3 or mnist_x.shape[1:] != (28, 28) or len(mnist_x) != len(mnist_y):
        raise NtlabError(
            f"build_scenes needs MNIST images [N, 28, 28] and N labels, got "
            f"{tuple(mnist_x.shape)} and {tuple(mnist_y.shape)}"
        )
    if len(mnist_x) == 0 or n < 1:
        raise NtlabError("build_scenes needs at least one MNIST digit and one scene")
    g = seeded_generator(seed, f"{stream}:{size}")
    drawn = _draw(n, len(mnist_y), size, g)
    labels = torch.where(drawn["active"], mnist_y[drawn["which"]], -1)
    parts = []
    for lo in range(0, n, CHUNK):
        chunk = {k: v[lo : lo + CHUNK] for k, v in drawn.items() if k != "noise_seed"}
        chunk["noise_seed"] = drawn["noise_seed"] + lo
        digits = mnist_x[chunk["which"]].float().div(255)
        if STROKE > 1:
            digits = F.max_pool2d(digits, STROKE, stride=1, padding=STROKE // 2)
        parts.append(_render(chunk, digits, labels[lo : lo + CHUNK], size))
    owner = torch.cat([part["owner"] for part in parts])
    planes = drawn["planes"].float()
    return {
        "image": torch.cat([part["image"] for part in parts]),
        **scene_targets(owner, labels, planes),
        "owner": owner,
        "labels": labels,
        "boxes": drawn["boxes"].float(),
        "planes": planes,
    }


def segment_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The `segment` task's loss: cross-entropy with the background's pixels weighted by
    BACKGROUND_WEIGHT and every digit's by 1, averaged by the weights (F.cross_entropy's
    `weight`); logits [B, CLASSES, H, W], target [B, H, W] (no ignored pixels).

    Most pixels are background: unweighted, a 500-step training learns where digits are
    but not which, and predicts the background everywhere (README, "Calibration of
    `scenes`")."""
    weight = torch.ones(CLASSES, device=logits.device, dtype=logits.dtype)
    weight[BACKGROUND] = BACKGROUND_WEIGHT
    return F.cross_entropy(logits, target.long(), weight=weight)


# --- the splits on disk ----------------------------------------------------------------


def scenes_root() -> Path:
    return datasets_dir() / "scenes"


def _mnist_pools(
    cfg: ScenesConfig, mnist: tuple[np.ndarray, ...]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint digit pools: train and val share MNIST-train in proportion, test uses t10k."""
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(np.array(a)) for a in mnist)
    if len(y_tr) < 2 or len(y_te) < 1:
        raise NtlabError("the scenes need at least 2 MNIST training and 1 test image")
    perm = torch.randperm(len(y_tr), generator=seeded_generator(cfg.seed, "scenes-pools"))
    n_val = min(len(y_tr) - 1, max(1, round(len(y_tr) * cfg.val / (cfg.train + cfg.val))))
    tr, va = perm[n_val:], perm[:n_val]
    return {"train": (x_tr[tr], y_tr[tr]), "val": (x_tr[va], y_tr[va]), "test": (x_te, y_te)}


def _mnist_digest(mnist: tuple[np.ndarray, ...]) -> str:
    digest = hashlib.sha256()
    for a in mnist:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def config_fingerprint(cfg: ScenesConfig, mnist_digest: str) -> str:
    """What the build depends on: format, config and the MNIST digits used."""
    blob = json.dumps({"v": FORMAT_VERSION, "mnist": mnist_digest, **asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_stored(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a split file holds: the images, what was drawn and which plane shows where."""
    return {k: split[k] for k in STORED}


def _tensor_digest(split: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a split's stored tensors (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key in sorted(split):
        t = split[key].contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_scenes_split(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A split written by `prepare_scenes`, with the same keys, dtypes and values as
    `build_scenes` returned (the targets are recomputed exactly from the stored planes)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        targets = scene_targets(blob["owner"], blob["labels"], blob["planes"])
    except Exception as exc:  # noqa: BLE001 - any failure to read it means it is damaged
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NtlabError(
            f"{path} is damaged ({reason}); rebuild the scenes with prepare_scenes(force=True)"
        ) from None
    split = {"image": blob["image"], **targets}
    split |= {k: blob[k] for k in STORED[1:]}  # in build_scenes' order
    return {k: v.to(device) for k, v in split.items()}


def read_scenes_manifest(root: Path | None = None) -> dict | None:
    path = (root or scenes_root()) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("splits"), dict):
            raise ValueError("no splits")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None  # damaged: rebuilt
    return manifest


def _intact(root: Path, manifest: dict) -> bool:
    return sizes_match(
        root, {str(e.get("file")): e.get("bytes") for e in manifest["splits"].values()}
    )


def _write_splits(folder: Path, cfg: ScenesConfig, mnist: tuple, mnist_digest: str) -> None:
    """Build and write one split at a time (only one is in memory), then the manifest."""
    pools = _mnist_pools(cfg, mnist)
    splits, digests = {}, []
    for name in SPLIT_NAMES:
        split = build_scenes(*pools[name], getattr(cfg, name), cfg.size, cfg.seed, f"scenes-{name}")
        stored = _to_stored(split)
        del split
        file = folder / f"{name}.pt"
        torch.save(stored, file)
        digests.append(f"{name}:{_tensor_digest(stored)}")
        splits[name] = {
            "file": file.name,
            "images": len(stored["image"]),
            "bytes": file.stat().st_size,
            "sha256": file_digest(file, "sha256"),
        }
    digests.append(f"segment_labelled:{cfg.segment_labelled}")  # what training sees
    manifest = {
        "benchmark": "scenes",
        "format": FORMAT_VERSION,
        "fingerprint": hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16],
        "config_fingerprint": config_fingerprint(cfg, mnist_digest),
        "config": asdict(cfg),
        "segment_labelled": cfg.segment_labelled,
        "mnist": mnist_digest,
        "classes": CLASSES,
        "background": BACKGROUND,
        "shape": [3, cfg.size, cfg.size],
        "stored": list(STORED),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "splits": splits,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def prepare_scenes(
    cfg: ScenesConfig | None = None,
    mnist_dir: Path | None = None,
    verify_mnist: bool = True,
    force: bool = False,
) -> Path:
    """Build the splits into NTLAB_HOME/datasets/scenes unless an identical, intact build is
    there; returns the folder. The folder is replaced at once: a reader sees the old build or
    the new one, and a failed build leaves no partial file behind."""
    cfg = cfg or ScenesConfig()
    cfg.validate()
    mnist = load_mnist(mnist_dir, downloads_dir(), verify=verify_mnist)
    digest = _mnist_digest(mnist)
    root = scenes_root()
    manifest = read_scenes_manifest(root)
    expected = {
        "format": FORMAT_VERSION,
        "segment_labelled": cfg.segment_labelled,
        "config_fingerprint": config_fingerprint(cfg, digest),
    }
    if not force and same_build(manifest, **expected) and _intact(root, manifest):
        return root
    with building_folder(root, "scenes") as tmp:
        _write_splits(tmp, cfg, mnist, digest)
    return root
