import pytest
import torch

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
    assert out.results["rounds"] == 3 and 0 <= out.results["test_score"] <= 100
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
        (ForkMergeOptions(merge_every=4, merge_op="mean"), "unknown --merge-op"),
        (ForkMergeOptions(merge_every=4, merge_op="ties", ties_k=1.5), "--ties-k must be"),
        (ForkMergeOptions(merge_every=4, merge_op="dare", dare_p=-0.1), "--dare-p must be"),
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
    scores = [row["val_score"] for row in out.search]
    assert all(abs(s / 10 - round(s / 10)) < 1e-6 for s in scores)  # 10 images: steps of 10 points
    full = [r for r in out.metrics if r["split"] == "val" and r["metric"] == "loss"]
    assert full  # the final model is evaluated on the whole validation split


# --- the target-alone branch is protected; diverging branches are left out ----------------


def _stl_model(c):
    from ntlab.core.runner import run_training, stl_config

    return run_training(stl_config(c)).state.model


def _same_target_model(a, b, target="optdigits"):
    """Backbone and target head bitwise equal (the auxiliary heads do not predict the target)."""
    head_a, head_b = f"heads.{a.head_index(target)}.", f"heads.{b.head_index(target)}."
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if k.startswith("backbone."):
            assert torch.equal(v, sb[k]), k
        elif k.startswith(head_a):
            assert torch.equal(v, sb[head_b + k.removeprefix(head_a)]), k
    return True


@pytest.mark.parametrize("kind", ["joint", "per-task", "explicit"])
@pytest.mark.parametrize("search", ["grid", "greedy", "binary"])
def test_a_margin_larger_than_any_gain_gives_the_stl_model_bitwise(tiny_digits, kind, search):
    c = TrainConfig(
        target="optdigits", method="ew", aux=["mnist", "syn"], steps=8, batch_size=16, lr=3e-3
    )
    branches = {
        "joint": joint_branches(c.target, c.aux),
        "per-task": per_task_branches(c.target, c.aux),
        "explicit": [parse_branch("optdigits=1", TASKS), parse_branch("optdigits=1,syn=2", TASKS)],
    }[kind]
    if search == "binary" and len(branches) != 2:
        pytest.skip("binary search merges two branches")
    opts = ForkMergeOptions(merge_every=3, search=search, merge_margin=1000.0)
    out = run_forkmerge(c, branches, opts)
    assert all(r[0] == 1.0 for r in out.results["lambda_per_round"])
    assert _same_target_model(out.model, _stl_model(c))


def test_the_auxiliary_heads_are_kept_per_branch_with_merge_heads_shared(tiny_digits):
    c = cfg(steps=6)
    branches = per_task_branches(c.target, c.aux)
    out = run_forkmerge(
        c, branches, ForkMergeOptions(merge_every=3, merge_margin=1000.0, merge_heads="shared")
    )
    states = [s.model.state_dict() for s in out.branch_states]
    syn = f"heads.{out.model.head_index('syn')}.weight"
    tgt = f"heads.{out.model.head_index('optdigits')}.weight"
    assert torch.equal(states[0][tgt], states[2][tgt])  # the target head is merged …
    assert not torch.equal(states[0][syn], states[2][syn])  # … the syn branch keeps its head
    everything = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3, merge_margin=1000.0))
    merged = [s.model.state_dict() for s in everything.branch_states]
    assert torch.equal(merged[0][syn], merged[2][syn])  # merge_heads="all": Λ = e_0 everywhere


def test_a_diverging_branch_is_left_out_of_the_merge(tiny_digits):
    from ntlab.core.forkmerge import BranchSpec
    from ntlab.core.train import LossTerm

    c = cfg(steps=6, optimizer="sgd", lr=0.01)
    ok = parse_branch("optdigits=1", TASKS)
    wild = BranchSpec((LossTerm("optdigits", ("optdigits",), 1.0),
                       LossTerm("mnist", ("mnist",), 1e30)))  # fmt: skip  # SGD steps of 1e28
    out = run_forkmerge(c, [ok, wild], ForkMergeOptions(merge_every=3))
    assert [r["branch"] for r in out.results["excluded_branches"]] == [1, 1]
    assert all(r[1] == 0.0 for r in out.results["lambda_per_round"])
    assert [m["excluded"] != "" for m in out.merges] == [False, True, False, True]
    assert all(torch.isfinite(p).all() for p in out.model.parameters())
    assert _same_target_model(out.model, _stl_model(c))  # the target-alone branch, untouched


def test_merge_operators_in_forkmerge(tiny_digits, tmp_path):
    """dare with p = 0 is the average bit for bit; ties and dare merge the rounds' deltas
    (other numbers, the same records) and resume to identical numbers."""
    from ntlab.core.cache import forkmerge_key

    c = cfg(steps=14)
    branches = per_task_branches(c.target, c.aux)
    average = run_forkmerge(c, branches, ForkMergeOptions(merge_every=4))
    zero = run_forkmerge(c, branches, ForkMergeOptions(merge_every=4, merge_op="dare", dare_p=0))
    assert zero.results["test_score"] == average.results["test_score"]
    assert zero.search == average.search and zero.results["merge_op"] == "dare (p = 0)"
    for op in (
        ForkMergeOptions(merge_every=4, merge_op="ties", ties_k=0.2),
        ForkMergeOptions(merge_every=4, merge_op="dare", dare_p=0.9),
    ):
        out = run_forkmerge(c, branches, op)
        assert out.search != average.search  # the merged candidates differ
        assert out.results["rounds"] == 4 and 0 <= out.results["test_score"] <= 100
        ckpt = tmp_path / f"{op.merge_op}.pt"

        def die(step):
            if step == 10:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_forkmerge(c, branches, op, on_step=die, checkpoint=ckpt)
        resumed = run_forkmerge(c, branches, op, checkpoint=ckpt, resume=True)
        assert resumed.results == out.results and resumed.search == out.search
    # an operator's parameter is in the cache key only with that operator
    key = lambda **kw: forkmerge_key(c, branches, ForkMergeOptions(merge_every=4, **kw))  # noqa: E731
    assert key(ties_k=0.5) == key() != key(merge_op="ties")
    assert key(merge_op="ties", ties_k=0.5) != key(merge_op="ties")
    assert key(merge_op="dare", ties_k=0.5) == key(merge_op="dare")
