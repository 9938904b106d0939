"""efcomm.compress_updates: the update exchange (issue 26). The multi-process scenarios run in
ddp_workers' launches (tests/python/update_workers.py; the session fixture ``ddp_launches``);
the checks of arguments and of the sparsity warm-up run in this process."""

import math

import pytest
import torch
from conftest import requires_cuda
from torch import nn

import efcomm
from efcomm.cluster import Cluster
from efcomm.updates import _buckets


def _equal_on_every_rank(tensors: list) -> bool:
    return all(torch.equal(t, tensors[0]) for t in tensors[1:])


def test_one_exchange_per_step_with_identity_equals_ddp_sgd(ddp_launches):
    for rank in ddp_launches["first"]:
        r = rank["updates_dense_equivalence"]
        torch.testing.assert_close(r["every_step"], r["dense"], rtol=0, atol=1e-6)
        assert not torch.equal(r["every_step"], r["averaged"])  # the two references differ: each is a check


def test_an_exchange_every_three_steps_with_identity_is_periodic_model_averaging(ddp_launches):
    for rank in ddp_launches["first"]:
        r = rank["updates_dense_equivalence"]
        torch.testing.assert_close(r["every_3"], r["averaged"], rtol=0, atol=1e-6)
        # 6 steps, 2 exchanges: the dense bytes count every optimizer step's gradient (6 of them)
        assert r["stats"]["steps"] == 2
        params = sum(p.numel() for p in nn.Sequential(nn.Linear(16, 64), nn.Linear(64, 4)).parameters())
        assert r["stats"]["dense_bytes"] == 6 * 4 * params


@pytest.mark.parametrize("outer", ["plain", "nesterov"])
def test_adamw_with_compressed_updates_keeps_ranks_identical_at_a_tenth_of_the_bytes(ddp_launches, outer):
    for rank in ddp_launches["first"]:
        r = rank["updates_adamw_topk"][outer]
        assert _equal_on_every_rank(r["ranks"])
        assert r["steps"] == 30 and r["stats"]["steps"] == 15
        params = 16 * 64 + 64 + 64 * 4 + 4
        k = math.ceil(0.1 * params)
        align4 = lambda n: -(-n // 4) * 4
        # The compact layout (kernels/wire_layout.h): a count per 65536-entry chunk, the bf16 values
        # and the 16-bit offsets, each padded to 4 bytes.
        per_exchange = 4 + align4(2 * k) + align4(2 * k)
        assert r["stats"]["bytes_sent"] == 15 * per_exchange
        assert r["stats"]["dense_bytes"] == 30 * 4 * params
    plain = ddp_launches["first"][0]["updates_adamw_topk"]
    assert not torch.equal(plain["plain"]["ranks"][0], plain["nesterov"]["ranks"][0])  # the outer step matters


def test_a_nonfinite_gradient_skips_that_ranks_inner_step_and_the_ranks_stay_identical(ddp_launches):
    r0, r1 = (rank["updates_nonfinite"] for rank in ddp_launches["first"])
    assert (r0["plain_skipped"], r1["plain_skipped"]) == (0, 1)
    assert (r0["skipped"], r1["skipped"]) == (0, 2)  # the second through GradScaler's found_inf
    assert r0["exchanges"] == r1["exchanges"] == 6  # no rank left an exchange out
    for r in (r0, r1):
        assert _equal_on_every_rank(r["ranks"]) and torch.isfinite(r["ranks"][0]).all()


def test_resume_between_exchanges_continues_bit_for_bit(ddp_launches):
    for saved, resumed in zip(ddp_launches["first"], ddp_launches["second"]):
        assert torch.equal(resumed["updates_resume_load"]["resumed"], saved["updates_resume_save"]["uninterrupted"])


def test_elastic_resume_restarts_every_rank_from_the_last_exchange(ddp_launches):
    for rank in ddp_launches["three"][:3]:
        r = rank["updates_resume_load"]
        assert _equal_on_every_rank(r["at_load"])  # the anchor, not rank r mod 2's local parameters
        assert _equal_on_every_rank(r["ranks"])


def test_ranks_that_disagree_fail_with_a_clear_error(ddp_launches):
    for rank in ddp_launches["first"]:
        error = rank["updates_mismatch"]["error"]
        assert error is not None and "ranks disagree" in error and "'every': 3" in error


def _model_and_optimizer():
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every": 0}, r"every \(0\) must be an int >= 1"),
        ({"every": 2.5}, r"every \(2.5\) must be an int >= 1"),
        ({"outer_lr": 0.0}, r"outer_lr \(0.0\) must be a finite number > 0"),
        ({"outer_lr": -1.0}, r"outer_lr \(-1.0\) must be a finite number > 0"),
        ({"outer_lr": float("nan")}, r"outer_lr \(nan\) must be a finite number > 0"),
        ({"outer_momentum": 1.0}, r"outer_momentum \(1.0\) must be in \[0, 1\)"),
        ({"bucket_cap_mb": 0}, r"bucket_cap_mb \(0\) must be > 0"),
        ({"hierarchy": 2}, r"hierarchy is not supported yet"),
    ],
)
def test_bad_arguments_raise_naming_the_argument_and_value(kwargs, message):
    model, opt = _model_and_optimizer()
    with pytest.raises(ValueError, match=message):
        efcomm.compress_updates(model, opt, **kwargs)


def test_an_optimizer_over_parameters_that_are_not_the_models_is_rejected():
    model, _ = _model_and_optimizer()
    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] \(shape \(3, 3\)\) is not a parameter"):
        efcomm.compress_updates(model, torch.optim.AdamW(other.parameters()))
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        efcomm.compress_updates(model, "adamw")


def test_without_a_process_group_it_says_to_initialise_one():
    model, opt = _model_and_optimizer()
    with pytest.raises(RuntimeError, match="init_process_group"):
        efcomm.compress_updates(model, opt)


def test_buckets_keep_the_optimizer_order_one_dtype_each_within_the_cap():
    a, b, c = torch.zeros(300_000), torch.zeros(10, dtype=torch.bfloat16), torch.zeros(300_000)
    d = torch.zeros(5)
    buckets = _buckets([a, b, c, d], cap_mb=2.0)  # a and c are 1.14 MiB each
    assert [[id(t) for t in bucket] for bucket in buckets] == [[id(a)], [id(b)], [id(c), id(d)]]
    assert [[id(t) for t in bucket] for bucket in _buckets([a, b, c, d], cap_mb=25)] == [[id(a), id(c), id(d)], [id(b)]]


def test_sparsity_warmup_sends_a_falling_fraction_and_counts_its_bytes():
    numel, ratio, warmup = 8192, 0.01, 4
    cluster = Cluster.create(2, "ef", efcomm.TopK(ratio), sparsity_warmup=warmup, warmup_start=0.25)
    plain = Cluster.create(2, "ef", efcomm.TopK(ratio))
    gen = torch.Generator().manual_seed(0)
    sent = []
    for _ in range(warmup + 2):
        grads = [torch.randn(numel, generator=gen) for _ in range(2)]
        before = cluster.bytes_sent()[0]
        cluster.step_bucket([g.clone() for g in grads])
        plain.step_bucket([g.clone() for g in grads])
        sent.append(cluster.bytes_sent()[0] - before)
    expected_k = [math.ceil(0.25 * (ratio / 0.25) ** (t / warmup) * numel) for t in range(warmup)] + [82, 82]
    assert sent == [8 * k for k in expected_k]  # Top-k: k fp32 values and k int32 indices
    assert sent[0] > sent[1] > sent[2] > sent[3] > sent[4] == sent[5] == plain.bytes_sent()[0] // (warmup + 2)


@pytest.mark.parametrize(
    "compressor, options, message",
    [
        (efcomm.TopK(k=5), {"sparsity_warmup": 3}, "needs a compressor with a ratio and no k"),
        (efcomm.Int8(), {"sparsity_warmup": 3}, "needs a compressor with a ratio and no k"),
        (efcomm.TopK(0.1), {"sparsity_warmup": -1}, r"sparsity_warmup \(-1\) must be an int >= 0"),
        (efcomm.TopK(0.1), {"sparsity_warmup": 3, "warmup_start": 0.05}, r"warmup_start \(0.05\) must be in"),
    ],
)
def test_sparsity_warmup_rejects_what_it_cannot_schedule(compressor, options, message):
    with pytest.raises(ValueError, match=message):
        efcomm.EFState("ef", compressor, **options)


# ---- one rank in this process: the rule written out, overflows, the scaler, resume -------------


@pytest.fixture
def one_rank():
    """A gloo group of one rank in this process, for the tests of the step's arithmetic."""
    import torch.distributed as dist
    from ddp_workers import free_init_method

    dist.init_process_group("gloo", init_method=free_init_method(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _regression(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))


def _loss(model, step):
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)
    return nn.functional.mse_loss(model(x), y)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_the_exchange_is_the_written_out_rule(one_rank):
    """AdamW inside, EF + Top-30 % of the change every 2 steps, Nesterov outer step (0.7, 0.9),
    against the rule computed here with torch.topk on a copy of the model."""
    model, reference = _regression(), _regression()
    opt = efcomm.compress_updates(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        "ef",
        efcomm.TopK(0.3),
        every=2,
        outer_lr=0.7,
        outer_momentum=0.9,
        min_compress_numel=8,
    )
    inner = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    anchor, error, momentum = _flat(reference), torch.zeros(opt._anchors[0].numel()), None
    k = math.ceil(0.3 * anchor.numel())
    for step in range(6):
        for m, o in ((model, opt), (reference, inner)):
            o.zero_grad()
            _loss(m, step).backward()
            o.step()
        if (step + 1) % 2 == 0:
            p = anchor - _flat(reference) + error
            c = torch.zeros_like(p)
            kept = torch.topk(p.abs(), k).indices
            c[kept] = p[kept]
            error = p - c
            momentum = c if momentum is None else 0.9 * momentum + c
            anchor = anchor - 0.7 * (c + 0.9 * momentum)
            torch.nn.utils.vector_to_parameters(anchor.clone(), reference.parameters())  # no alias of anchor
        torch.testing.assert_close(_flat(model), _flat(reference), rtol=0, atol=1e-6)
    assert opt.stats.steps == 3 and opt.steps == 6
    with pytest.raises(NotImplementedError, match="add the group to the inner optimizer before"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    assert opt.stats.dense_bytes == 6 * 4 * anchor.numel()  # every optimizer step's gradient, local ones included


def test_an_overflow_skips_the_inner_step_plain_and_through_grad_scaler(one_rank):
    model, reference = _regression(), _regression()
    opt = efcomm.compress_updates(model, torch.optim.SGD(model.parameters(), lr=0.1), "ef", efcomm.Identity(), every=1)
    inner = torch.optim.SGD(reference.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for step in range(6):
        for m, o in ((model, opt), (reference, inner)):
            o.zero_grad()
            loss = _loss(m, step) * (float("inf") if step in (1, 4) else 1.0)
            if m is model and step >= 3:  # the scaler: the scale is removed by the wrapper
                scaler.scale(loss).backward()
                scaler.step(o)
                scaler.update()
                continue
            loss.backward()
            if m is model or torch.isfinite(_flat_grads(m)).all():
                o.step()
        torch.testing.assert_close(_flat(model), _flat(reference), rtol=0, atol=1e-6)
    assert opt.skipped_steps == 2 and torch.isfinite(_flat(model)).all()


def _flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("through", ["state_dict", "dcp"])
def test_a_save_between_exchanges_resumes_bit_for_bit_in_this_process(one_rank, through, tmp_path):
    """Saved after 4 steps (an exchange at step 3, one local step after it) and loaded into a
    fresh model and optimizer: with torch.save's state dict, or with torch.distributed.checkpoint
    through efcomm.checkpoint (whose load reads the checkpoint's keys)."""
    from efcomm import checkpoint

    def make():
        model = _regression()
        opt = efcomm.compress_updates(
            model, torch.optim.AdamW(model.parameters(), lr=1e-2), "ef", efcomm.TopK(0.2), every=3, min_compress_numel=8
        )
        return model, opt

    def train(model, opt, start, stop):
        for step in range(start, stop):
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()

    model, opt = make()
    train(model, opt, 0, 10)
    uninterrupted = _flat(model)
    model, opt = make()
    train(model, opt, 0, 4)
    saved = opt.state_dict()
    if through == "dcp":
        checkpoint.save(opt, tmp_path)
    model, opt = make()  # fresh parameters: the optimizer's load restores this rank's
    if through == "dcp":
        checkpoint.load(opt, tmp_path)
    else:
        opt.load_state_dict(saved)
    train(model, opt, 4, 10)
    assert torch.equal(_flat(model), uninterrupted)
    with pytest.raises(ValueError, match="checkpoint configuration"):
        other_model = _regression()
        other = efcomm.compress_updates(other_model, torch.optim.AdamW(other_model.parameters(), lr=1e-2), every=2)
        other.load_state_dict(saved)


@requires_cuda
def test_cuda_updates_equal_dense_sgd_and_keep_ranks_identical():
    from ddp_workers import spawn
    from update_workers import cuda_updates_worker

    results = spawn(cuda_updates_worker, 2)
    for r in results:
        torch.testing.assert_close(r["every_step"], r["dense"], rtol=0, atol=1e-6)
        assert torch.equal(r["topk"], results[0]["topk"]) and torch.isfinite(r["topk"]).all()
    assert [r["skipped"] for r in results] == [0, 1]
