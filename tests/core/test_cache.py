"""The run cache: keys that follow the code, damaged entries set aside and retrained,
failed writes that leave nothing half-written, damaged checkpoints named."""

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ntlab import cache
from ntlab.core import runner
from ntlab.core.forkmerge import (
    ForkMergeOptions,
    cached_forkmerge,
    forkmerge_cache_dir,
    joint_branches,
    run_forkmerge,
)
from ntlab.core.runner import TrainConfig, cached_run, run_cache_dir, store_cached, trained_model
from ntlab.errors import NtlabError
from ntlab.storage import DamagedFileError
from tests.cache_home import private_home

PACKAGE = Path(cache.__file__).resolve().parent
KEYS = """
import json
from ntlab.cache import code_digest
from ntlab.core.runner import TrainConfig, cache_key
uw = TrainConfig(target="syn", method="uw", aux=["mnist"], steps=5)
print(json.dumps([code_digest(), cache_key(uw)]))
"""


def keys_of_copy(package: Path, cwd: Path) -> list[str]:
    """The code digest and a `uw` cache key computed by a fresh process on `package`."""
    env = {**os.environ, "PYTHONPATH": str(package.parent), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", KEYS], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def edit_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def test_one_line_of_a_method_changes_its_key_and_the_cli_or_report_do_not(tiny_digits, tmp_path):
    copy = tmp_path / "pkg" / "ntlab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    original = keys_of_copy(copy, tmp_path)
    assert original[0] == cache.code_digest()  # from the files' content, not their place
    assert original[1] == runner.cache_key(
        TrainConfig(target="syn", method="uw", aux=["mnist"], steps=5)
    )
    edit_line(copy / "cli" / "train.py", '"""`ntlab train', '"""`ntlab  train')
    (copy / "report" / "page.py").write_text((copy / "report" / "page.py").read_text() + "#\n")
    assert cache.source_digest(copy) == original[0]  # what code_digest() computes on a copy
    edit_line(
        copy / "methods" / "weighting.py",
        "weights = 0.5 * torch.exp(-self.s)",
        "weights = 0.25 * torch.exp(-self.s)",
    )
    edited = keys_of_copy(copy, tmp_path)
    assert edited[0] != original[0] and edited[1] != original[1]


def test_the_options_dataclasses_are_part_of_the_code_digest(tmp_path):
    """TrainConfig, ForkMergeOptions and GcsOptions live in ntlab/config.py (torch-free, for
    the command line): their methods decide what is computed (`search_for`: which merge
    search), so an edit there retires the cache like an edit of the core."""
    copy = tmp_path / "pkg" / "ntlab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = cache.source_digest(copy)
    edit_line(
        copy / "config.py", 'return "grid" if branches <= 2', 'return "grid" if branches <= 3'
    )
    assert cache.source_digest(copy) != before


def test_the_digest_covers_the_training_sources_of_the_installed_package():
    assert cache.source_digest(PACKAGE) == cache.code_digest()
    assert cache.source_digest(PACKAGE, ("core",)) != cache.source_digest(PACKAGE, ("methods",))
    with pytest.raises(NtlabError, match="missing"):
        cache.source_digest(PACKAGE, ("nope",))


def test_every_option_but_evaluation_and_loading_is_in_the_key(tiny_digits):
    base = TrainConfig(target="syn", steps=5)
    for change in ({"backbone_lr_scale": 0.5}, {"schedule": "constant"}, {"width": 8}):
        assert runner.cache_key(base) != runner.cache_key(
            TrainConfig(**{**base.__dict__, **change})
        )
    for change in ({"eval_every": 7},):  # (workers: image lists only)
        assert runner.cache_key(base) == runner.cache_key(
            TrainConfig(**{**base.__dict__, **change})
        )


def test_with_best_val_selection_the_validation_spacing_is_in_the_key(tiny_digits):
    """--select best-val keeps the best of the checks every --eval-every steps: another
    spacing can pick another iterate, so it must not reuse the cached training."""
    base = TrainConfig(target="syn", steps=5, select="best-val")
    other = TrainConfig(**{**base.__dict__, "eval_every": 7})
    assert runner.cache_key(base) != runner.cache_key(other)


def test_an_entry_records_the_code_that_trained_it(tmp_path):
    store_cached(tmp_path / "runs" / "k", {"val_score": 1.0}, torch.nn.Linear(2, 2), {"a": 1})
    config = json.loads((tmp_path / "runs" / "k" / "config.json").read_text())
    assert config == {"a": 1, "code": cache.code_digest(), "torch": torch.__version__}


def one_warning(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("warning: cache entry ")
    for fragment in fragments:
        assert fragment in err[0]
    return err[0]


def broken_entries(home: Path) -> list[Path]:
    return sorted((home / "cache" / cache.BROKEN).glob("*"))


def test_a_truncated_results_json_is_set_aside_and_trained_again(
    tiny_digits, tmp_path, monkeypatch, capsys
):
    home = private_home(monkeypatch, tmp_path)
    cfg = TrainConfig(target="syn", steps=3, batch_size=16)
    first, _ = cached_run(cfg)
    entry = run_cache_dir(cfg)
    text = (entry / "results.json").read_text()
    (entry / "results.json").write_text(text[: len(text) // 2])
    capsys.readouterr()
    again, source = cached_run(cfg)
    line = one_warning(capsys, str(entry), "results.json: not valid JSON", "training it again")
    assert source == "run" and again == first
    [aside] = broken_entries(home)
    assert str(aside) in line and (aside / "model.pt").is_file()
    assert cached_run(cfg) == (first, "cache")  # stored afresh


def test_a_zero_byte_model_is_set_aside_and_trained_again(
    tiny_digits, tmp_path, monkeypatch, capsys
):
    home = private_home(monkeypatch, tmp_path)
    cfg = TrainConfig(target="syn", steps=3, batch_size=16)
    model, _, results, _ = trained_model(cfg)
    (run_cache_dir(cfg) / "model.pt").write_bytes(b"")
    capsys.readouterr()
    again, _, results2, source = trained_model(cfg)
    one_warning(capsys, "model.pt: empty file")
    assert source == "run" and results2 == results and len(broken_entries(home)) == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert trained_model(cfg)[3] == "cache"


def test_a_damaged_forkmerge_entry_is_set_aside_and_run_again(
    tiny_digits, tmp_path, monkeypatch, capsys
):
    home = private_home(monkeypatch, tmp_path)
    cfg = TrainConfig(target="syn", method="ew", aux=["mnist"], steps=4, batch_size=16)
    branches, opts = joint_branches(cfg.target, cfg.aux), ForkMergeOptions(merge_every=2)
    first, _ = cached_forkmerge(cfg, branches, opts)
    (forkmerge_cache_dir(cfg, branches, opts) / "results.json").write_text("[1, 2]")
    capsys.readouterr()
    again, source = cached_forkmerge(cfg, branches, opts)
    one_warning(capsys, "results.json: a JSON list, not an object")
    assert (again, source) == (first, "run") and len(broken_entries(home)) == 1


def test_a_truncated_forkmerge_checkpoint_is_named_on_resume(tiny_digits, tmp_path):
    cfg = TrainConfig(target="syn", method="ew", aux=["mnist"], steps=4, batch_size=16)
    branches, opts = joint_branches(cfg.target, cfg.aux), ForkMergeOptions(merge_every=2)
    ckpt = tmp_path / "checkpoints" / "forkmerge.pt"
    run_forkmerge(cfg, branches, opts, checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(DamagedFileError, match=r"forkmerge\.pt is damaged .*without --resume"):
        run_forkmerge(cfg, branches, opts, checkpoint=ckpt, resume=True)
    torch.save({"round": 1}, ckpt)  # loads, but is not a checkpoint of a run
    with pytest.raises(DamagedFileError, match="it has no 'kept'"):
        run_forkmerge(cfg, branches, opts, checkpoint=ckpt, resume=True)


def test_a_damaged_train_checkpoint_is_named(tiny_digits, tmp_path):
    from tests.core.test_state import make_state

    state = make_state(tiny_digits)
    path = tmp_path / "state.pt"
    state.save(path)
    path.write_bytes(b"")
    with pytest.raises(DamagedFileError, match=r"state\.pt is damaged \(empty file\)"):
        state.load(path)


LIMITED_WRITE = """
import sys, torch
from pathlib import Path
from ntlab.errors import NtlabError
from ntlab.runs import atomic_write_text
from ntlab.core.runner import store_cached
folder = Path(sys.argv[1])
model = torch.nn.Linear(300, 300)
for write in (
    lambda: atomic_write_text(folder / "run" / "results.json", "x" * 100_000),
    lambda: store_cached(folder / "cache" / "runs" / "k", {}, model, {}),
):
    try:
        write()
    except NtlabError as exc:
        print(exc)
"""


def test_a_write_that_fails_names_the_file_and_leaves_nothing_behind(tmp_path):
    """A file-size limit (what a full disk looks like to a writer) in a real process."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITE, str(tmp_path)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines == [
        f"could not write {tmp_path}/run/results.json: File too large; free some space "
        "(or set NTLAB_HOME / --out to another disk) and run again",
        f"could not write {tmp_path}/cache/runs/k/model.pt: File too large; free some space "
        "(or set NTLAB_HOME / --out to another disk) and run again",
    ]
    assert list((tmp_path / "run").iterdir()) == []
    assert list((tmp_path / "cache" / "runs").iterdir()) == []


def test_a_run_whose_status_is_not_an_object_is_named(tmp_path):
    (tmp_path / "status.json").write_text("[]")
    with pytest.raises(DamagedFileError, match=r"status\.json is damaged .*not an object"):
        runner.load_model(tmp_path)


def test_the_code_digest_covers_every_built_in_task_s_loss_head_and_metrics():
    """A change to what trains or scores a task must retire its cached trainings: the
    sources of the built-in tasks' losses, heads and evaluators are all in CODE_PARTS."""
    import inspect
    from pathlib import Path

    import ntlab
    from ntlab.core.cache import CODE_PARTS
    from ntlab.data import BENCHMARKS

    package = Path(ntlab.__file__).parent
    covered = [package / part for part in CODE_PARTS]
    seen = 0
    for name in BENCHMARKS:
        cls = BENCHMARKS.get(name)
        if not hasattr(cls, "specs"):
            continue
        bench = object.__new__(cls)  # specs() reads no data
        for spec in bench.specs().values():
            built = spec.evaluator() if spec.evaluator else None
            for thing in (spec.loss, spec.head, type(built) if built else None):
                source = inspect.getsourcefile(thing) if thing is not None else None
                if source is None or package not in Path(source).parents:
                    continue  # torch's own (cross-entropy) or none
                seen += 1
                assert any(p == Path(source) or p in Path(source).parents for p in covered), (
                    f"{name}: {source} is not in the code digest"
                )
    assert seen >= 5
