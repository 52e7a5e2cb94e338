"""Synchronized batch norm (`--cross_replica`): 2 Gloo ranks against a float64 single-process
reference, the backward against finite differences, and the single-process paths unchanged."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import layers
from helpers import ROOT

TOL = 1e-5


@pytest.fixture
def syncbn_error(monkeypatch):
    """tools/syncbn_error.py, the script that makes docs/scaling.md's error table."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    import syncbn_error
    return syncbn_error


@pytest.mark.slow
def test_two_ranks_match_float64_reference(syncbn_error):
    """ccbn, bn, myBN, a GBlock, BigGAN and BigGANdeep G on 2 ranks (even and uneven batches,
    inputs of mean 0, 10 and 100): outputs, parameter and input gradients and running buffers
    within 1e-5 of one float64 process with the whole batch."""
    table = syncbn_error.measure(syncbn_error.default_cases())
    assert len(table) == 18
    worst = {(row['name'], row['split']): max(row[k] for k in syncbn_error.MEASURES)
             for row in table}
    assert max(worst.values()) < TOL, {k: v for k, v in worst.items() if v >= TOL}
    # The comparison can fail: the float32 floor of one process is not 0.
    assert min(worst.values()) > 1e-9


def test_backward_matches_finite_differences():
    """SyncBN's hand-written backward (the CPU kernels) against gradcheck in float64."""
    x = (torch.randn(3, 2, 3, 3, dtype=torch.float64) * 2 + 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layers.SyncBN.apply(t, 1e-5, False)[0], (x,))
    out, mean, var, n = layers.SyncBN.apply(x, 1e-5, False)
    torch.testing.assert_close(mean, x.detach().mean((0, 2, 3)))
    torch.testing.assert_close(var, x.detach().var((0, 2, 3), unbiased=False))
    assert n.item() == 27


def bn_layers(cross_replica):
    torch.manual_seed(0)
    return {'ccbn': layers.ccbn(6, 4, nn.Linear, cross_replica=cross_replica),
            'bn': layers.bn(6, cross_replica=cross_replica),
            'mybn': layers.ccbn(6, 4, nn.Linear, cross_replica=cross_replica, mybn=True)}


def step(layer, x, y):
    """A training forward and backward; output, input gradient and state."""
    x = x.clone().requires_grad_()
    out = layer(x, y)
    (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
    return out.detach(), x.grad, layer.state_dict()


def test_one_process_is_unchanged_by_cross_replica():
    """Without a process group, --cross_replica changes nothing, bit for bit: ccbn and bn run
    F.batch_norm, myBN the release's manual_bn."""
    x, y = torch.randn(4, 6, 5, 5) * 3 + 10, torch.randn(4, 4)
    plain, cross = bn_layers(False), bn_layers(True)
    for name in plain:
        for a, b in zip(step(plain[name], x, y)[:2], step(cross[name], x, y)[:2]):
            assert torch.equal(a, b), name
        for k, v in plain[name].state_dict().items():
            assert torch.equal(v, cross[name].state_dict()[k]), (name, k)
    # F.batch_norm's unbiased running variance; myBN's biased one (the release's).
    n = 4 * 25
    var = x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(cross['ccbn'].stored_var, 0.9 + 0.1 * var * n / (n - 1))
    torch.testing.assert_close(cross['mybn'].bn.stored_var, 0.9 + 0.1 * var)


@pytest.fixture
def one_rank_group():
    """A Gloo process group of size 1 in this process."""
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_process_group_uses_syncbn_except_for_local_stats(one_rank_group, monkeypatch):
    """Under a process group every cross_replica layer goes through SyncBN (which on one rank
    equals F.batch_norm to float32 rounding); inside local_batch_stats none does, and the result
    is the single-process one bit for bit."""
    calls = []
    apply = layers.SyncBN.apply
    monkeypatch.setattr(layers.SyncBN, 'apply', lambda *a: calls.append(1) or apply(*a))
    x, y = torch.randn(4, 6, 5, 5) * 3 + 10, torch.randn(4, 4)
    plain, cross, local = bn_layers(False), bn_layers(True), bn_layers(True)
    for name in plain:
        ref = step(plain[name], x, y)
        calls.clear()
        synced = step(cross[name], x, y)
        assert calls, name
        for a, b in zip(synced[:2], ref[:2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for k, v in ref[2].items():
            torch.testing.assert_close(synced[2][k], v, rtol=1e-6, atol=1e-6)
        calls.clear()
        with layers.local_batch_stats():
            mine = step(local[name], x, y)
        assert not calls, name
        for a, b in zip(mine[:2], ref[:2]):
            assert torch.equal(a, b), name


def test_bf16_statistics_are_float32_across_ranks(one_rank_group):
    """Under autocast the synchronized statistics stay float32 and the output keeps x's dtype."""
    x = (torch.randn(4, 6, 5, 5) * 3 + 10).to(torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, mean, var, _ = layers.SyncBN.apply(x, 1e-5, True)
    assert out.dtype == torch.bfloat16 and mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean, x.float().mean((0, 2, 3)))
    torch.testing.assert_close(var, x.float().var((0, 2, 3), unbiased=False))
    expected = F.batch_norm(x.float(), None, None, training=True)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=2e-2)
