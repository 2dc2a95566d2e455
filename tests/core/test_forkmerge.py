import pytest

from ntlab.core.forkmerge import (
    ForkMergeOptions,
    joint_branches,
    parse_branch,
    per_task_branches,
    run_forkmerge,
    validate_forkmerge,
)
from ntlab.core.runner import TrainConfig
from ntlab.errors import NtlabError

TASKS = ["mnist", "optdigits", "syn", "mnistm", "permlo"]


def cfg(steps=12, **kw):
    return TrainConfig(target="optdigits", aux=["mnist", "syn"], steps=steps, batch_size=16, **kw)


def test_two_branch_run_records_every_round(tiny_digits):
    c = cfg()
    out = run_forkmerge(c, joint_branches(c.target, c.aux), ForkMergeOptions(merge_every=5))
    rounds = sorted({m["round"] for m in out.merges})
    assert rounds == [0, 1, 2] and [m["step"] for m in out.merges[::2]] == [
        5,
        10,
        12,
    ]  # last round shorter
    for r in rounds:
        rows = [m for m in out.merges if m["round"] == r]
        assert [m["branch"] for m in rows] == [0, 1]
        assert sum(m["lambda"] for m in rows) == pytest.approx(1.0)
    assert len([s for s in out.search if s["round"] == 0]) == 11  # grid step 0.1
    assert sum(s["chosen"] for s in out.search if s["round"] == 0) == 1
    assert out.results["rounds"] == 3 and 0 <= out.results["test_acc"] <= 100
    assert out.results["lambda_per_round"][0] == [m["lambda"] for m in out.merges[:2]]


def test_pruning_keeps_the_target_branch(tiny_digits):
    c = TrainConfig(target="optdigits", aux=["mnist", "syn", "permlo"], steps=9, batch_size=16)
    out = run_forkmerge(
        c, per_task_branches(c.target, c.aux), ForkMergeOptions(merge_every=3, prune=2)
    )
    first = [m["branch"] for m in out.merges if m["round"] == 0]
    later = [m["branch"] for m in out.merges if m["round"] == 1]
    assert first == [0, 1, 2, 3] and len(later) == 2 and later[0] == 0


def test_an_interrupted_run_resumes_to_identical_numbers(tiny_digits, tmp_path):
    c = cfg(steps=14)
    branches, opts = joint_branches(c.target, c.aux), ForkMergeOptions(merge_every=4)
    whole = run_forkmerge(c, branches, opts)
    ckpt = tmp_path / "fm.pt"

    def die_mid_round(step):
        if step == 10:  # after the merges at steps 4 and 8, inside the third round
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_forkmerge(c, branches, opts, on_step=die_mid_round, checkpoint=ckpt)
    resumed = run_forkmerge(c, branches, opts, checkpoint=ckpt, resume=True)
    assert resumed.results == whole.results
    assert resumed.merges == whole.merges and resumed.search == whole.search
    assert resumed.metrics == whole.metrics


def test_explicit_branches_parse_task_weights():
    spec = parse_branch("optdigits=1,syn=0.5,mnist=0.5", TASKS)
    assert [(t.tasks, t.weight) for t in spec.terms] == [
        (("optdigits",), 1.0),
        (("syn",), 0.5),
        (("mnist",), 0.5),
    ]
    assert spec.describe() == "optdigits=1,syn=0.5,mnist=0.5"


@pytest.mark.parametrize(
    "text, message",
    [
        ("optdigits=1,nope=1", "unknown task 'nope'"),
        ("optdigits=0,syn=0", "gives every task weight 0"),
        ("optdigits", "TASK=WEIGHT"),
        ("optdigits=-1", "must be a finite number ≥ 0"),
        ("optdigits=x", "is not a number"),
    ],
)
def test_bad_branches_are_rejected(text, message):
    with pytest.raises(NtlabError, match=message):
        parse_branch(text, TASKS)


@pytest.mark.parametrize(
    "opts, message",
    [
        (ForkMergeOptions(merge_every=50), "--merge-every must be between 1 and --steps"),
        (ForkMergeOptions(merge_every=0), "--merge-every must be between 1 and --steps"),
        (ForkMergeOptions(merge_every=4, prune=0), "--prune must keep at least 1"),
        (ForkMergeOptions(merge_every=4, search="nope"), "unknown search"),
        (ForkMergeOptions(merge_every=4, merge_margin=-1), "--merge-margin"),
        (ForkMergeOptions(merge_every=4, optimizer_state="merge"), "unknown --optimizer-state"),
    ],
)
def test_bad_options_are_rejected(opts, message):
    c = cfg()
    with pytest.raises(NtlabError, match=message):
        validate_forkmerge(c, joint_branches(c.target, c.aux), opts)


def test_binary_search_needs_two_branches():
    c = TrainConfig(target="optdigits", aux=["mnist", "syn"], steps=10)
    with pytest.raises(NtlabError, match="exactly two branches"):
        validate_forkmerge(
            c, per_task_branches(c.target, c.aux), ForkMergeOptions(merge_every=5, search="binary")
        )


def test_forkmerge_with_a_batchnorm_backbone_and_recalibration(tiny_digits):
    c = TrainConfig(target="optdigits", aux=["mnist"], steps=4, batch_size=8, backbone="resnet18")
    opts = ForkMergeOptions(merge_every=2, bn_recalibrate=True, bn_batches=2)
    out = run_forkmerge(c, joint_branches(c.target, c.aux), opts)
    bn = out.model.backbone.bn1
    assert int(bn.num_batches_tracked) == 2  # recalibrated after the last merge: 2 batches
    assert out.results["rounds"] == 2


def test_optimizer_state_is_kept_or_reset_at_a_merge(tiny_digits):
    import torch

    c = cfg(steps=6)
    runs = {
        mode: run_forkmerge(
            c,
            joint_branches(c.target, c.aux),
            ForkMergeOptions(merge_every=4, optimizer_state=mode),
        )
        for mode in ("keep", "reset")
    }
    # merges at steps 4 and 6: Adam's own step counter shows the moments survived both merges ...
    kept = runs["keep"].branch_states[0].optimizer.state_dict()["state"]
    assert int(next(iter(kept.values()))["step"]) == 6
    # ... or were cleared by them, which changes the second round's updates
    assert runs["reset"].branch_states[0].optimizer.state_dict()["state"] == {}
    a, b = runs["keep"].model.state_dict(), runs["reset"].model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_val_samples_scores_candidates_on_a_fixed_subset(tiny_digits):
    c = cfg(steps=6)
    out = run_forkmerge(
        c, joint_branches(c.target, c.aux), ForkMergeOptions(merge_every=3, val_samples=10)
    )
    scores = [row["val_acc"] for row in out.search]
    assert all(abs(s / 10 - round(s / 10)) < 1e-6 for s in scores)  # 10 images: steps of 10 points
    full = [r for r in out.metrics if r["split"] == "val" and r["metric"] == "loss"]
    assert full  # the final model is evaluated on the whole validation split
