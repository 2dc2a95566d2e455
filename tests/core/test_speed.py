"""Speed options on the CPU: precision (autocast, fp16's scaler), memory format, compiled
backbones, and ForkMerge's concurrent branches (ntlab.core.speed)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from ntlab.core.cache import cache_key, run_config
from ntlab.core.forkmerge import ForkMergeOptions, per_task_branches, run_forkmerge
from ntlab.core.runner import TrainConfig, run_training
from ntlab.core.speed import effective_memory_format, effective_precision, resolved_speed
from ntlab.errors import NtlabError


def cfg(**kw) -> TrainConfig:
    base = {"target": "optdigits", "steps": 10, "batch_size": 16, "eval_every": 10}
    return TrainConfig(**{**base, **kw})


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_settings_resolve_for_the_device_and_the_method():
    assert effective_precision("bf16", "ew") == "bf16"
    assert effective_precision("bf16", "mgda") == "fp32"  # a Jacobian method: fp32
    assert effective_precision("fp16", "gcs") == "fp32"
    assert effective_memory_format("auto", "cpu", "resnet50") == "contiguous"
    assert effective_memory_format("auto", "cuda", "resnet50") == "channels-last"
    assert effective_memory_format("auto", "cuda", "cnn") == "contiguous"
    assert effective_memory_format("channels-last", "cpu", "cnn") == "channels-last"
    c = cfg(precision="bf16", method="upgrad", aux=["mnist"])
    assert resolved_speed(c) == {"precision": "fp32", "memory_format": "contiguous"}
    assert run_config(c)["precision"] == "fp32"


def test_precision_and_compile_are_in_the_cache_key(tiny_digits):
    keys = {
        cache_key(cfg()),
        cache_key(cfg(precision="bf16")),
        cache_key(cfg(compile="default")),
        cache_key(cfg(memory_format="channels-last")),
    }
    assert len(keys) == 4
    # auto resolves to contiguous on the CPU: the same training, the same key
    assert cache_key(cfg(memory_format="auto")) == cache_key(cfg(memory_format="contiguous"))
    # a Jacobian method computes in fp32 whatever --precision says: the same key
    mgda = {"method": "mgda", "aux": ["mnist"]}
    assert cache_key(cfg(precision="bf16", **mgda)) == cache_key(cfg(**mgda))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("precision", "fp8", "--precision"),
        ("memory_format", "nhwc", "--memory-format"),
        ("compile", "max", "--compile"),
    ],
)
def test_unknown_settings_are_refused(tiny_digits, field, value, message):
    with pytest.raises(NtlabError, match=message):
        run_training(cfg(**{field: value}))


def test_fp16_is_refused_where_no_loss_scaling_applies(tiny_digits):
    with pytest.raises(NtlabError, match="needs loss scaling.*use --precision bf16"):
        run_training(cfg(method="uw", aux=["mnist"], precision="fp16"))


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def initial_weights(c: TrainConfig) -> torch.Tensor:
    return flat(run_training(TrainConfig(**{**asdict(c), "steps": 1, "lr": 1e-12})).state.model)


def test_fp32_is_the_default_and_bf16_trains_close_to_it(tiny_digits):
    c = cfg(method="ew", aux=["mnist"])
    fp32 = run_training(c)
    again = run_training(cfg(method="ew", aux=["mnist"], precision="fp32"))
    assert same_state(fp32.state.model, again.state.model)
    bf16 = run_training(cfg(method="ew", aux=["mnist"], precision="bf16"))
    assert bf16.state.model.precision == "bf16"
    for p in bf16.state.model.parameters():  # the weights stay fp32; autocast is transient
        assert p.dtype == torch.float32
    start, w32, w16 = initial_weights(c), flat(fp32.state.model), flat(bf16.state.model)
    moved32, moved16 = (w32 - start).abs(), (w16 - start).abs()
    assert moved16.max() > 5e-3 and moved32.max() > 5e-3  # both trained, Adam at 1e-3 × 10
    assert not torch.equal(w32, w16)  # it did compute in bf16 ...
    # ... and took nearly the same steps: the runs differ by far less than they moved
    assert (w32 - w16).abs().mean() < 0.2 * moved32.mean()
    assert 0 <= bf16.results["test_score"] <= 100


def test_fp16_trains_with_a_loss_scaler_that_is_checkpointed(tiny_digits, tmp_path):
    out = run_training(cfg(precision="fp16"), checkpoint=tmp_path / "ckpt.pt")
    scaler = out.state.scaler
    assert scaler is not None and scaler.get_scale() > 0
    # the steps were taken, not skipped as overflowing: Adam counted them, the weights moved
    steps = [float(s["step"]) for s in out.state.optimizer.state.values()]
    assert steps and min(steps) >= 9
    moved = flat(out.state.model) - initial_weights(cfg(precision="fp16"))
    assert moved.abs().max() > 5e-3
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert saved["scaler"]["scale"] == scaler.get_scale()
    fork = out.state.fork()
    assert fork.scaler is not scaler and fork.scaler.get_scale() == scaler.get_scale()
    assert run_training(cfg()).state.scaler is None  # fp32: no scaler


def test_channels_last_keeps_the_numbers_within_float_tolerance(tiny_digits):
    plain = run_training(cfg())
    nhwc = run_training(cfg(memory_format="channels-last"))
    conv = nhwc.state.model.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    ours = nhwc.state.model.state_dict()
    for name, value in plain.state.model.state_dict().items():
        assert torch.allclose(value, ours[name], atol=1e-4), name


def test_concurrent_branches_give_the_sequential_numbers(tiny_digits, monkeypatch):
    import threading

    import ntlab.core.forkmerge as fm_module

    c = cfg(aux=["mnist", "syn"], steps=9, method="ew")
    branches = per_task_branches(c.target, c.aux)
    seq = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3))
    threads, inner = set(), fm_module.train

    def recorded(*args, **kwargs):
        threads.add(threading.current_thread().name.split("_")[0])
        return inner(*args, **kwargs)

    monkeypatch.setattr(fm_module, "train", recorded)
    con = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3, branch_exec="concurrent"))
    assert threads == {"ntlab-branch"}  # the branches did train in threads of their own
    assert same_state(seq.model, con.model)  # bit for bit on the CPU
    assert seq.search == con.search and seq.merges == con.merges
    assert sorted(map(str, seq.metrics)) == sorted(map(str, con.metrics))
    assert seq.results["test_score"] == con.results["test_score"]
    key = ForkMergeOptions(merge_every=3).key_fields()
    assert key == ForkMergeOptions(merge_every=3, branch_exec="concurrent").key_fields()
    with pytest.raises(NtlabError, match="--branch-exec"):
        run_forkmerge(c, branches, ForkMergeOptions(merge_every=3, branch_exec="threads"))


@pytest.mark.slow
def test_compiled_training_matches_eager_and_forkmerge_compiles_once(tiny_digits):
    """torch.compile (inductor on the CPU, tens of seconds): the trained weights agree with
    eager within float tolerance, and ForkMerge's forks, rounds and merges add no graph
    beyond one per batch shape (the target-alone branch's and the joint branches')."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = run_training(cfg(steps=6))
    fast = run_training(cfg(steps=6, compile="default"))
    assert counters["stats"]["unique_graphs"] == 1
    a = torch.cat([p.flatten() for p in eager.state.model.parameters()])
    b = torch.cat([p.flatten() for p in fast.state.model.parameters()])
    assert torch.allclose(a, b, atol=1e-4)
    c = cfg(aux=["mnist", "syn"], steps=8, method="ew", compile="default")
    opts = ForkMergeOptions(merge_every=2)  # 4 rounds of 3 branches
    run_forkmerge(c, per_task_branches(c.target, c.aux), opts)
    # batch 16 (the target alone) was compiled above; the joint branches' 32 adds one graph
    assert counters["stats"]["unique_graphs"] == 2
    assert asdict(c)["compile"] == "default"


def test_captured_steps_are_refused_where_they_cannot_run(tiny_digits):
    with pytest.raises(NtlabError, match="captured cannot run.*runs on the CPU"):
        run_training(cfg(compile="captured", device="cpu"))
    from ntlab.config import check_capturable

    cuda = {"compile": "captured", "device": "cpu"}
    for extra, reason in (
        ({"method": "mgda", "aux": ["mnist"]}, "not a static weighting"),
        ({"precision": "fp16"}, "fp16's loss scaler"),
        ({"optimizer": "sgd"}, "only Adam"),
        ({"benchmark": "imagelist"}, "image files"),
    ):
        c = cfg(**{**cuda, **extra})
        with pytest.MonkeyPatch.context() as mp:  # as if a GPU were there
            mp.setattr("ntlab.config.resolve_device", lambda _: torch.device("cuda"))
            with pytest.raises(NtlabError, match=reason):
                check_capturable(c)


def test_a_learning_rate_held_as_a_tensor_follows_the_schedule_in_place(tiny_digits):
    """What a captured step reads: the schedule fills the group's rate tensor, and the
    rates equal those of the float path."""
    from ntlab.core.state import OptimConfig, TrainState
    from ntlab.models import BACKBONES, MultiTaskModel

    def state():
        torch.manual_seed(0)
        model = MultiTaskModel(BACKBONES.get("cnn")(), {"t": 10})
        return TrainState.create(model, OptimConfig(schedule="cosine"), 10)

    plain, held = state(), state()
    rate = torch.tensor(float(held.optimizer.param_groups[0]["lr"]))
    held.optimizer.param_groups[0]["lr"] = rate
    for step in range(11):
        plain.step = held.step = step
        plain.apply_schedule()
        held.apply_schedule()
        assert held.optimizer.param_groups[0]["lr"] is rate  # the same tensor, filled
        assert float(rate) == pytest.approx(plain.optimizer.param_groups[0]["lr"], rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_captured_training_matches_eager_on_cuda(tiny_digits):
    eager = run_training(cfg(steps=12, device="cuda"))
    captured = run_training(cfg(steps=12, device="cuda", compile="captured"))
    a, b = eager.state.model.state_dict(), captured.state.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    steps = next(iter(captured.state.captured.values()))
    assert steps.graph is not None  # replayed after its warm-up steps
    c = cfg(aux=["mnist", "syn"], steps=12, method="ew", device="cuda", compile="captured")
    eager_fm = run_forkmerge(replace_compile(c, "off"), per_task_branches(c.target, c.aux),
                             ForkMergeOptions(merge_every=3))  # fmt: skip
    fm = run_forkmerge(c, per_task_branches(c.target, c.aux), ForkMergeOptions(merge_every=3))
    for k, v in eager_fm.model.state_dict().items():
        assert torch.allclose(v, fm.model.state_dict()[k], atol=1e-3), k
    for state in fm.branch_states:  # one graph per branch, captured once for all 4 rounds
        assert [s.captures for s in state.captured.values()] == [1]


def replace_compile(c: TrainConfig, mode: str) -> TrainConfig:
    return TrainConfig(**{**asdict(c), "compile": mode})


def test_the_stl_baseline_trains_in_the_methods_precision(tiny_digits):
    from ntlab.core.runner import stl_config

    assert stl_config(cfg(method="ew", aux=["mnist"], precision="bf16")).precision == "bf16"
    # upgrad reads gradients: it trains in fp32, and its TG is against the fp32 STL run
    assert stl_config(cfg(method="upgrad", aux=["mnist"], precision="bf16")).precision == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need a CUDA device")
def test_concurrent_branches_on_cuda_streams_match_sequential(tiny_digits):
    c = cfg(aux=["mnist", "syn"], steps=9, method="ew", device="cuda")
    branches = per_task_branches(c.target, c.aux)
    seq = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3))
    con = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3, branch_exec="concurrent"))
    a, b = seq.model.state_dict(), con.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert [m["lambda"] for m in seq.merges] == [m["lambda"] for m in con.merges]


def test_concurrent_branches_refuse_torch_compile(tiny_digits):
    c = cfg(aux=["mnist"], steps=4, method="ew", compile="default")
    opts = ForkMergeOptions(merge_every=2, branch_exec="concurrent")
    with pytest.raises(NtlabError, match="torch.compile is not thread-safe"):
        run_forkmerge(c, per_task_branches(c.target, c.aux), opts)


def test_gradient_measurements_compute_in_fp32_under_bf16(tiny_digits):
    """gcs and affinity differentiate term_losses with amp=False: fp32 features even when
    the trained model's precision is bf16 (the training forward is bf16)."""
    from ntlab.core.train import term_losses

    out = run_training(cfg(precision="bf16"))
    model, batch = out.state.model, out.state.sources["optdigits"].next()
    _, trained = term_losses(model, [batch], [[0]])
    _, measured = term_losses(model, [batch], [[0]], amp=False)
    assert trained.dtype == torch.bfloat16 and measured.dtype == torch.float32


def test_decode_cpu_is_the_default_decoder_with_one_cache_key(tiny_digits):
    assert TrainConfig(target="optdigits", decode="cpu").decode is None
    assert cache_key(cfg(decode="cpu")) == cache_key(cfg())


def test_concurrent_trainings_share_the_loader_processes():
    from types import SimpleNamespace

    from ntlab.data.files import ImageFiles
    from ntlab.data.sampler import share_workers

    def source():
        files = object.__new__(ImageFiles)
        files.workers = 6
        return SimpleNamespace(x=files, workers=None, release=lambda: None)

    alone, together = [source(), source()], [source(), source()]
    share_workers(alone)
    share_workers(together, trainings=3)
    assert [s.workers for s in alone] == [3, 3] and [s.workers for s in together] == [1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_concurrent_branches_record_their_graphs_in_turn_on_cuda(tiny_digits):
    c = cfg(aux=["mnist", "syn"], steps=12, method="ew", device="cuda", compile="captured")
    branches = per_task_branches(c.target, c.aux)
    seq = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3))
    con = run_forkmerge(c, branches, ForkMergeOptions(merge_every=3, branch_exec="concurrent"))
    a, b = seq.model.state_dict(), con.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    for state in con.branch_states:
        assert [s.captures for s in state.captured.values()] == [1]
