"""The embedded `digits` benchmark: five digit domains, two real and three generated.

Everything is built deterministically from a seed, from files that ship with ntlab's
dependencies (matplotlib's fonts, scikit-learn's digits and photos) and the real MNIST files.
Each domain is built on a 28×28 canvas and then resized to the stored resolution.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntlab.data.benchmark import BENCHMARKS, SPLITS, TaskData
from ntlab.data.digits_config import DEFAULT_TRAIN, DOMAINS, FORMAT_VERSION, DigitsConfig  # noqa: F401
from ntlab.data.mnist import file_digest, load_mnist
from ntlab.data.sampler import seeded_generator
from ntlab.errors import NtlabError, unknown_name
from ntlab.paths import datasets_dir, downloads_dir
from ntlab.storage import building_folder

CANVAS = 28
MNIST_DOMAINS = ("mnist", "mnistm", "permlo")  # disjoint slices of the MNIST files
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
    "cmmi10.ttf",
)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1).contiguous()


def _split_counts(cfg: DigitsConfig, name: str) -> dict[str, int]:
    return {"train": cfg.train.get(name, DEFAULT_TRAIN[name]), "val": cfg.val, "test": cfg.test}


# --- the domains -------------------------------------------------------------------------


def _mnist_slices(
    cfg: DigitsConfig, mnist: tuple[np.ndarray, ...]
) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Disjoint MNIST slices per derived domain: train/val from MNIST-train, test from t10k."""
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(np.array(a)) for a in mnist)
    g = seeded_generator(cfg.seed, "mnist-slices")
    perm_tr, perm_te = (
        torch.randperm(len(y_tr), generator=g),
        torch.randperm(len(y_te), generator=g),
    )
    need_tr = sum(_split_counts(cfg, d)["train"] + cfg.val for d in MNIST_DOMAINS)
    need_te = cfg.test * len(MNIST_DOMAINS)
    if need_tr > len(y_tr) or need_te > len(y_te):
        raise NtlabError(
            f"MNIST has {len(y_tr)} training and {len(y_te)} test images, but the splits of "
            f"{', '.join(MNIST_DOMAINS)} need {need_tr} and {need_te}; lower --train/--val/--test"
        )
    out, a, b = {}, 0, 0
    for name in MNIST_DOMAINS:
        n_tr = _split_counts(cfg, name)["train"]
        idx = {"train": perm_tr[a : a + n_tr], "val": perm_tr[a + n_tr : a + n_tr + cfg.val]}
        a += n_tr + cfg.val
        parts = {s: (x_tr[i], y_tr[i]) for s, i in idx.items()}
        parts["test"] = (x_te[perm_te[b : b + cfg.test]], y_te[perm_te[b : b + cfg.test]])
        b += cfg.test
        out[name] = {s: (x.float().div(255).unsqueeze(1), y) for s, (x, y) in parts.items()}
    return out


def build_mnist(cfg: DigitsConfig, split: dict) -> dict:
    return {s: (_to_uint8(_grey_to_rgb(_resize(x, cfg.size))), y) for s, (x, y) in split.items()}


def build_permlo(cfg: DigitsConfig, split: dict) -> dict:
    """MNIST resized first, then a fixed permutation of pixel positions (keeps the digits)."""
    perm = torch.randperm(cfg.size * cfg.size, generator=seeded_generator(cfg.seed, "permlo"))
    out = {}
    for s, (x, y) in split.items():
        small = _resize(x, cfg.size).flatten(1)[:, perm].view(-1, 1, cfg.size, cfg.size)
        out[s] = (_to_uint8(_grey_to_rgb(small)), y)
    return out


def build_mnistm(cfg: DigitsConfig, split: dict) -> dict:
    """|photo crop − digit| per channel, the MNIST-M recipe, with scikit-learn's photos."""
    from sklearn.datasets import load_sample_images

    photos = torch.stack([torch.from_numpy(np.array(im)) for im in load_sample_images().images])
    photos = photos.float().div(255)  # [P, H, W, 3]
    g = seeded_generator(cfg.seed, "mnistm")
    out = {}
    for s, (x, y) in split.items():
        n, (_, h, w, _) = len(y), photos.shape
        which = torch.randint(len(photos), (n,), generator=g)
        top = torch.randint(h - CANVAS, (n,), generator=g)
        left = torch.randint(w - CANVAS, (n,), generator=g)
        r = torch.arange(CANVAS)
        crops = photos[
            which[:, None, None], (top[:, None] + r)[:, :, None], (left[:, None] + r)[:, None, :]
        ]
        blended = (crops.permute(0, 3, 1, 2) - x).abs()
        out[s] = (_to_uint8(_resize(blended, cfg.size)), y)
    return out


def build_optdigits(cfg: DigitsConfig) -> dict:
    """The 1,797 UCI digits: 8×8 upsampled into a 20×20 box centred in a 28×28 frame."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1)
    y = torch.from_numpy(bunch.target).long()
    x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    perm = torch.randperm(len(y), generator=seeded_generator(cfg.seed, "optdigits"))
    n_tr = _split_counts(cfg, "optdigits")["train"]
    if n_tr > len(y) - 200:
        raise NtlabError(
            f"optdigits has {len(y)} images; its training size must be ≤ {len(y) - 200}"
        )
    rest = len(y) - n_tr
    n_val = min(cfg.val, rest // 2)
    n_te = min(cfg.test, rest - n_val)
    bounds = {
        "train": (0, n_tr),
        "val": (n_tr, n_tr + n_val),
        "test": (n_tr + n_val, n_tr + n_val + n_te),
    }
    out = {}
    for s, (lo, hi) in bounds.items():
        idx = perm[lo:hi]
        out[s] = (_to_uint8(_grey_to_rgb(_resize(x[idx].clamp(0, 1), cfg.size))), y[idx])
    return out


def _glyph_bank(canvas: int = 64, points: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred alpha masks [F, 10, canvas, canvas] of each digit per bundled font, and heights."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    masks, heights = [], []
    for name in FONT_FILES:
        if not (font_dir / name).is_file():
            continue
        font = FT2Font(str(font_dir / name))
        row, row_h = [], []
        for digit in "0123456789":
            font.set_size(points, 72)
            font.set_text(digit, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            img = np.asarray(font.get_image(), dtype=np.float32) / 255
            ys, xs = np.nonzero(img > 0.1)
            img = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            gh, gw = img.shape
            mask = np.zeros((canvas, canvas), np.float32)
            top, left = (canvas - gh) // 2, (canvas - gw) // 2
            mask[top : top + gh, left : left + gw] = img[: canvas - top, : canvas - left]
            row.append(torch.from_numpy(mask))
            row_h.append(float(gh))
        masks.append(torch.stack(row))
        heights.append(torch.tensor(row_h))
    if len(masks) < 3:
        raise NtlabError(
            f"found only {len(masks)} of matplotlib's fonts in {font_dir}; reinstall it"
        )
    return torch.stack(masks), torch.stack(heights)


def _luminance(c: torch.Tensor) -> torch.Tensor:
    return c @ torch.tensor([0.299, 0.587, 0.114])


def build_syn(cfg: DigitsConfig) -> dict:
    """Rendered digits: random font, height, ±15° rotation, shift, colours, noise and blur."""
    bank, heights = _glyph_bank()
    n_fonts, canvas = bank.shape[0], bank.shape[-1]
    g = seeded_generator(cfg.seed, "syn")
    blur_kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).div(16).expand(3, 1, 3, 3)
    out = {}
    for s, n in _split_counts(cfg, "syn").items():
        y = torch.randint(10, (n,), generator=g)
        font = torch.randint(n_fonts, (n,), generator=g)
        frac = 0.55 + 0.3 * torch.rand(n, generator=g)  # glyph height / frame height
        angle = torch.deg2rad(30 * torch.rand(n, generator=g) - 15)
        shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.25
        k = heights[font, y] / canvas / frac  # input units per output unit
        cos, sin = torch.cos(angle) * k, torch.sin(angle) * k
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, [n, 1, CANVAS, CANVAS], align_corners=False)
        alpha = F.grid_sample(bank[font, y].unsqueeze(1), grid, align_corners=False)
        bg, fg = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
        low = (_luminance(fg) - _luminance(bg)).abs() < 0.35
        fg[low] = (_luminance(bg[low]) < 0.5).float()[:, None].expand(-1, 3)
        img = bg[:, :, None, None] * (1 - alpha) + fg[:, :, None, None] * alpha
        img = img + 0.04 * torch.randn(img.shape, generator=g)
        blurred = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), blur_kernel, groups=3)
        use_blur = (torch.rand(n, generator=g) < 0.5)[:, None, None, None]
        img = torch.where(use_blur, blurred, img)
        out[s] = (_to_uint8(_resize(img.clamp(0, 1), cfg.size)), y)
    return out


def build_digits(
    cfg: DigitsConfig, mnist_dir: Path | None = None, verify_mnist: bool = True, progress=None
) -> dict[str, dict]:
    """Every domain's splits as {domain: {split: (uint8 images, labels)}}."""
    cfg.validate()
    mnist = load_mnist(mnist_dir, downloads_dir(), verify=verify_mnist)
    slices = _mnist_slices(cfg, mnist)
    builders = {
        "mnist": lambda: build_mnist(cfg, slices["mnist"]),
        "optdigits": lambda: build_optdigits(cfg),
        "syn": lambda: build_syn(cfg),
        "mnistm": lambda: build_mnistm(cfg, slices["mnistm"]),
        "permlo": lambda: build_permlo(cfg, slices["permlo"]),
    }
    out = {}
    for name, build in builders.items():
        if progress:
            progress(name)
        out[name] = build()
    return out


# --- the cache on disk -----------------------------------------------------------------


def digits_root() -> Path:
    return datasets_dir() / "digits"


REBUILD = "run `ntlab data prepare digits --force` to rebuild the digits data"


def read_manifest(root: Path | None = None) -> dict | None:
    """The build's manifest, or None when there is no build; a damaged one is named."""
    path = (root or digits_root()) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NtlabError(f"{path} is damaged ({exc}); {REBUILD}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise NtlabError(f"{path} is damaged ({problem}); {REBUILD}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    for key, kind in (("fingerprint", str), ("num_classes", int), ("domains", dict)):
        if not isinstance(manifest.get(key), kind):
            return f"no valid {key!r}"
    for name, entry in manifest["domains"].items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("splits"), dict)
        ):
            return f"the entry of domain {name!r} is not valid"
    return None


def check_domain_file(root: Path, entry: dict, digest: bool = False) -> str | None:
    """What is wrong with a domain's file (None when it is as built): missing, another size
    than the manifest records, or (with `digest`) other bytes; builds from before the
    manifest recorded sizes are checked by loading the file."""
    path = root / entry["file"]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if "bytes" in entry:
        if size != entry["bytes"]:
            return f"{size} bytes, the build wrote {entry['bytes']}: truncated or replaced"
        if digest and "sha256" in entry and file_digest(path, "sha256") != entry["sha256"]:
            return "its SHA-256 differs from the build's"
        return None
    if digest:
        return _read_blob(path, "cpu")[0]
    return None


def _read_blob(path: Path, device) -> tuple[str | None, dict | None]:
    """(what is wrong, None) or (None, the domain's splits) for one domain's file."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        for split in SPLITS:
            x, y = blob[split]["x"], blob[split]["y"]
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                raise TypeError(f"split {split} does not hold tensors")
    except Exception as exc:  # noqa: BLE001 - any failure to read it means it is damaged
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0], None
    return None, blob


def _load_blob(path: Path, device) -> dict:
    problem, blob = _read_blob(path, device)
    if problem:
        raise NtlabError(f"{path} is damaged ({problem}); {REBUILD}")
    return blob


def _write_build(folder: Path, cfg: DigitsConfig, data: dict[str, dict]) -> None:
    domains = {}
    for name, splits in data.items():
        file = folder / f"{name}.pt"
        torch.save({s: {"x": x, "y": y} for s, (x, y) in splits.items()}, file)
        kind, desc = DOMAINS[name]
        domains[name] = {
            "kind": kind,
            "description": desc,
            "file": f"{name}.pt",
            "splits": {s: int(len(y)) for s, (_, y) in splits.items()},
            "bytes": file.stat().st_size,  # `data list` and every load check the files
            "sha256": file_digest(file, "sha256"),
        }
    manifest = {
        "benchmark": "digits",
        "format": FORMAT_VERSION,
        "fingerprint": cfg.fingerprint(),
        "config": asdict(cfg),
        "num_classes": 10,
        "shape": [3, cfg.size, cfg.size],
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "domains": domains,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def prepare_digits(
    cfg: DigitsConfig,
    mnist_dir: Path | None = None,
    verify_mnist: bool = True,
    force: bool = False,
    progress=None,
) -> tuple[Path, bool]:
    """Build the cache unless an identical one exists; returns (folder, whether it was built)."""
    cfg.validate()
    root = digits_root()
    if not force:  # --force rebuilds whatever is there, unread
        try:
            manifest = read_manifest(root)
            same = manifest is not None and manifest["fingerprint"] == cfg.fingerprint()
            if same and _intact(root, manifest):
                return root, False
        except NtlabError as exc:  # a damaged build is rebuilt, and said so
            print(f"note: {str(exc).split('; run `', 1)[0]}; rebuilding it", file=sys.stderr)
    data = build_digits(cfg, mnist_dir, verify_mnist, progress)
    with building_folder(root, "digits") as tmp:
        _write_build(tmp, cfg, data)
    return root, True


def _intact(root: Path, manifest: dict) -> bool:
    """Every domain's file as built (sizes; a build that recorded none is trusted)."""
    damaged = [
        (name, problem)
        for name, entry in manifest["domains"].items()
        if (problem := check_domain_file(root, entry))
    ]
    if damaged:
        name, problem = damaged[0]
        raise NtlabError(
            f"{root / manifest['domains'][name]['file']} is damaged ({problem}); {REBUILD}"
        )
    return True


@BENCHMARKS.register("digits")
class DigitsBenchmark:
    """The embedded default benchmark (see module docstring)."""

    options: tuple[str, ...] = ()  # built by `ntlab data prepare`, nothing to choose per run
    name = "digits"
    description = "10-class digits in 5 domains (2 real, 3 generated), built locally"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or digits_root()

    def manifest(self) -> dict:
        manifest = read_manifest(self.root)
        if manifest is None:
            raise NtlabError(
                "the digits benchmark is not prepared; run `ntlab data prepare digits`"
            )
        return manifest

    def tasks(self) -> list[str]:
        return list(DOMAINS)

    def fingerprint(self) -> str:
        return self.manifest()["fingerprint"]

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict[str, TaskData]:
        manifest = self.manifest()
        out = {}
        for name in tasks:
            entry = manifest["domains"].get(name)
            if entry is None:
                raise unknown_name("digits task", name, manifest["domains"])
            problem = check_domain_file(self.root, entry)
            if problem:
                raise NtlabError(f"{self.root / entry['file']} is damaged ({problem}); {REBUILD}")
            blob = _load_blob(self.root / entry["file"], device)
            splits = {s: (blob[s]["x"], blob[s]["y"]) for s in SPLITS}
            out[name] = TaskData(name, manifest["num_classes"], splits)
        return out

    def describe(self) -> list[dict]:
        """One row per domain; `damaged` says what is wrong with its file (None: as built,
        checked against the size and SHA-256 the build recorded)."""
        manifest = read_manifest(self.root)
        rows = []
        for name, (kind, desc) in DOMAINS.items():
            entry = (manifest or {}).get("domains", {}).get(name)
            rows.append(
                {
                    "task": name,
                    "kind": kind,
                    "description": desc,
                    "splits": entry["splits"] if entry else None,
                    "path": str(self.root / entry["file"]) if entry else None,
                    "damaged": check_domain_file(self.root, entry, digest=True) if entry else None,
                }
            )
        return rows
