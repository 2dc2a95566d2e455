# ruff: noqa
"""Run the authors' unmodified equal_weight.py (thuml/ForkMerge, branch develop,
auxiliary_domain_image_recognition/) on ntlab's 32-px digits build: the last row of the
README's "BatchNorm, threads and the authors' choices" table.

Not part of ntlab (it runs someone else's code). Set-up, in a virtual environment of its own:

    git clone -b develop https://github.com/thuml/ForkMerge   # or an archive of the branch
    pip install torch torchvision numpy prettytable timm==0.5.4
    ntlab data prepare --size 32 --force
    FORKMERGE_SRC=ForkMerge/auxiliary_domain_image_recognition \
    DIGITS_DIR=$NTLAB_HOME/datasets/digits \
    python benchmarks/authors_code.py x -d Digits -a resnet18 --scratch --optimizer adamw \
        --lr 1e-3 --wd 0 -b 32 --epochs 8 -i 25 --train-resizing res. --val-resizing res. \
        --resize-size 32 --no-hflip --norm-mean 0.5 0.5 0.5 --norm-std 0.5 0.5 0.5 -j 0 \
        -s syn mnist mnistm optdigits permlo -t syn --seed 0 --log logs/ew_syn_s0
    # STL: -s syn -t syn; seeds 0, 1, 2

Usage: authors_code.py <equal_weight.py arguments...>   (same CLI as theirs)

What this adapter adds, and nothing else:
  * torch threads = 1;
  * torchvision>=0.13 no longer has `torchvision.models.resnet.model_urls`, which their
    utils/models/resnet.py imports; an empty dict is put there (only used for pretrained
    weights, never touched under --scratch);
  * a `Digits` dataset class registered in their `utils.datasets` namespace, serving the
    uint8 tensors of $DIGITS_DIR/<task>.pt as PIL RGB images;
  * their script is run as __main__ (runpy), so their own argparse and main() are used;
  * afterwards, their 'latest' checkpoint (last epoch) is evaluated on the test loader with
    their utils.validate_all, and a JSON summary is written to <log>/summary.json.
"""

import json
import os
import re
import runpy
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import torchvision.models.resnet as _tv_resnet

if not hasattr(_tv_resnet, "model_urls"):
    _tv_resnet.model_urls = {}

SRC = os.environ["FORKMERGE_SRC"]  # their auxiliary_domain_image_recognition folder
DATA = os.environ["DIGITS_DIR"]  # ntlab's digits build at 32 px
sys.path.insert(0, SRC)

import numpy as np
from PIL import Image
import torchvision.datasets as tvd

import utils  # theirs
import utils.datasets


class Digits(tvd.VisionDataset):
    """ntlab's digits domains; (root, task, split, download, transform) like their DomainNet."""

    CLASSES = [str(i) for i in range(10)]
    _cache = {}

    def __init__(
        self, root, task, split="train", download=False, transform=None, target_transform=None
    ):
        super().__init__(root, transform=transform, target_transform=target_transform)
        assert split in ("train", "val", "test")
        if task not in Digits._cache:
            Digits._cache[task] = torch.load(os.path.join(DATA, f"{task}.pt"), weights_only=True)
        part = Digits._cache[task][split]
        x, y = part["x"], part["y"]
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32), (x.dtype, x.shape)
        self.images = x.permute(0, 2, 3, 1).contiguous().numpy()  # N,H,W,C uint8
        self.targets = y.tolist()
        self.classes = Digits.CLASSES
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        print(f"loading digits {task}/{split}: {len(self.targets)} images")

    def __getitem__(self, index):
        img = Image.fromarray(self.images[index], mode="RGB")
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self):
        return len(self.targets)

    @property
    def num_classes(self):
        return len(self.classes)


utils.datasets.Digits = Digits


class _NoClose:
    """Their CompleteLogger.close() closes the stream it wraps (our real stdout); keep it open."""

    def __init__(self, stream):
        self._s = stream

    def write(self, m):
        return self._s.write(m)

    def flush(self):
        return self._s.flush()

    def close(self):
        self._s.flush()

    def __getattr__(self, k):
        return getattr(self._s, k)


def main():
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout = _NoClose(real_out)
    sys.argv = [os.path.join(SRC, "equal_weight.py")] + sys.argv[1:]
    t0 = time.time()
    g = runpy.run_path(os.path.join(SRC, "equal_weight.py"), run_name="__main__")
    train_s = time.time() - t0
    sys.stdout, sys.stderr = real_out, real_err
    args = g["args"]
    if args.phase != "train":
        return

    # ---- evaluate 'latest' (last epoch) and 'best' on the test split, with their code ----
    from torch.utils.data import DataLoader
    import torch.nn as nn
    from utils.classifier import MultiOutputClassifier
    from utils.logger import CompleteLogger

    val_t = utils.get_val_transform(
        args.val_resizing,
        resize_size=args.resize_size,
        norm_mean=args.norm_mean,
        norm_std=args.norm_std,
    )
    test_loaders, val_loaders = (
        {
            d: DataLoader(
                Digits(args.root, d, split, transform=val_t),
                batch_size=args.test_batch_size,
                shuffle=False,
                num_workers=args.workers,
            )
            for d in args.target
        }
        for split in ("test", "val")
    )
    backbone = utils.get_model(args.arch, pretrain=not args.scratch)
    heads = nn.ModuleDict({d: nn.Linear(backbone.out_features, 10) for d in args.source})
    model = MultiOutputClassifier(backbone, heads, finetune=not args.scratch)
    ckdir = os.path.join(args.log, "checkpoints")
    out = {"argv": sys.argv[1:], "train_wall_s": round(train_s, 1)}
    for name in ("latest", "best"):
        model.load_state_dict(torch.load(os.path.join(ckdir, f"{name}.pth"), map_location="cpu"))
        out[f"test_{name}"] = utils.validate_all(test_loaders, model, args, "cpu", verbose=False)
        out[f"val_{name}"] = utils.validate_all(val_loaders, model, args, "cpu", verbose=False)

    # per-epoch validation accuracies, from their log (one ' * Acc@1' line per target per
    # epoch, then the test ones); best epoch = their rule (strict >, first max kept)
    logs = sorted(f for f in os.listdir(args.log) if f.startswith("train-"))
    text = open(os.path.join(args.log, logs[-1])).read()
    accs = [float(a) for a in re.findall(r" \* Acc@1 ([0-9.]+)", text)]
    nt = len(args.target)
    per_epoch = [accs[e * nt : (e + 1) * nt] for e in range(args.epochs)]
    best, best_e = 0.0, None
    for e, a in enumerate(per_epoch):
        if sum(a) > best:
            best, best_e = sum(a), e
    out["val_per_epoch"] = per_epoch
    out["best_epoch"] = best_e  # 0-based
    out["test_best_from_their_log"] = accs[args.epochs * nt :]
    with open(os.path.join(args.log, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
