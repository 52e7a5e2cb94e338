"""DDP on CPU: 2 Gloo processes against one process, and a 2-process train.py run that resumes.

The equivalence tests run one full `GAN_training_function` step (D step, G step) with G and D
wrapped by `train.wrap` (DDP) on 2 ranks x batch B, and compare it with one process x batch 2B fed
the same weights, z, y and real images (each rank gets its half; z_/y_ are filled from fixed
tensors instead of being sampled).
"""
import glob
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from distributed import free_port
from helpers import ROOT, assert_same, run_flags, tiny_config

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

B = 4          # per-rank batch
WORLD = 2


def step_inputs(config):
    """Fixed z/y for the D step and the G step, and 2B real images with labels."""
    g = torch.Generator().manual_seed(1234)
    n, dim_z, ncls = WORLD * B, config['dim_z'], config['n_classes']
    return {'zD': torch.randn(n, dim_z, generator=g),
            'yD': torch.randint(0, ncls, (n,), generator=g),
            'zG': torch.randn(n, dim_z, generator=g),
            'yG': torch.randint(0, ncls, (n,), generator=g),
            'x': torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
            'y': torch.randint(0, ncls, (n,), generator=g)}


def fixed_sampler(buf, values):
    """Make buf.sample_() copy the next tensor of values (D step first, then G step)."""
    it = iter(values)
    buf.sample_ = lambda: buf.copy_(next(it))
    return buf


class Halves(nn.Module):
    """G run on each half of the batch separately: what per-rank BN statistics compute."""

    def __init__(self, G, parts):
        super().__init__()
        self.module, self.parts = G, parts

    def forward(self, z, y):
        # Each half must start from the same spectral-norm u vectors, as every rank does.
        us = [b for k, b in self.module.named_buffers() if k.rsplit('.', 1)[-1].startswith('u')]
        start = [u.clone() for u in us]
        out = []
        for a, b in zip(z.chunk(self.parts), y.chunk(self.parts)):
            with torch.no_grad():
                for u, u0 in zip(us, start):
                    u.copy_(u0)
            out.append(self.module(a, b))
        return torch.cat(out)


def one_step(config, inputs, rank=0, world=1, halves=False):
    """Build G and D from seed 0, run one training step; returns grads, params and buffers."""
    import BigGAN
    import train
    import train_fns
    import utils
    torch.manual_seed(0)
    _, G, D, _, _ = train.build_models(config, torch.device('cpu'))
    G_net = Halves(G, WORLD) if halves else G
    GD = BigGAN.G_D(train.wrap(G_net if world == 1 else G, config, world, torch.device('cpu')),
                    train.wrap(D, config, world, torch.device('cpu')))
    sl = slice(rank * B, (rank + 1) * B) if world > 1 else slice(None)
    n = B if world > 1 else WORLD * B
    z_, y_ = utils.prepare_z_y(n, G.dim_z, config['n_classes'])
    fixed_sampler(z_, [inputs['zD'][sl], inputs['zG'][sl]])
    fixed_sampler(y_, [inputs['yD'][sl], inputs['yG'][sl]])
    cfg = {**config, 'batch_size': n}
    train_step = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, cfg)
    metrics = train_step(inputs['x'][sl], inputs['y'][sl])
    out = {'metrics': metrics}
    for name, net in (('G', G), ('D', D)):
        out[name + '_grad'] = {k: p.grad.clone() for k, p in net.named_parameters()
                               if p.grad is not None}
        out[name + '_param'] = {k: p.detach().clone() for k, p in net.named_parameters()}
        out[name + '_buf'] = {k: b.clone() for k, b in net.named_buffers()}
    return out


def _worker(rank, port, flags, inputs, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sys.path.insert(0, ROOT)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        out = one_step(tiny_config(*flags), inputs, rank, WORLD)
        torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def run_ranks(flags, inputs, tmp_path):
    mp.spawn(_worker, args=(free_port(), flags, inputs, str(tmp_path)), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / (f'rank{r}.pt'), weights_only=True) for r in range(WORLD)]


def max_rel_diff(a, b):
    """max |a - b| over max |b|, both over every tensor of the dicts (a whole model's grads).

    Per-tensor ratios would be meaningless for the conv biases that feed a batch norm: their
    true gradient is 0 and what autograd returns is rounding noise.
    """
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    scale = max(b[k].double().abs().max().item() for k in b)
    return diff / max(scale, 1e-12)


TOL = 1e-4


@pytest.fixture(scope='module')
def flags():
    return ['--batch_size', str(B), '--num_D_steps', '1', '--G_attn', '16', '--D_attn', '16']


def test_cross_replica_two_ranks_equal_one_rank_double_batch(flags, tmp_path):
    """--cross_replica: ccbn and bn statistics span both ranks, so G's and D's gradients, the
    updated weights and the BN running statistics equal the single-process 2B step."""
    flags = flags + ['--cross_replica']
    inputs = step_inputs(tiny_config(*flags))
    torch.set_num_threads(1)
    ref = one_step(tiny_config(*flags), inputs)
    ranks = run_ranks(flags, inputs, tmp_path)
    for out in ranks:
        for key in ('G_grad', 'D_grad', 'G_param', 'D_param', 'G_buf'):
            assert max_rel_diff(out[key], ref[key]) < TOL, key
    # The ranks also agree with each other (DDP keeps replicas identical).
    assert max_rel_diff(ranks[1]['G_param'], ranks[0]['G_param']) == 0
    # Losses are per-rank means of half the batch; their average is the 2B loss.
    for k in ('D_loss_real', 'D_loss_fake', 'G_loss'):
        mean = sum(r['metrics'][k] for r in ranks) / WORLD
        assert abs(mean - ref['metrics'][k]) < 1e-5 * max(1.0, abs(ref['metrics'][k])), k


def test_without_cross_replica_each_rank_uses_its_own_statistics(flags, tmp_path):
    """Without --cross_replica each rank normalises with its own batch statistics (as the
    release did): G's gradients differ from the 2B step, while the run equals one process whose
    G sees each half separately, D's step included (D has no batch statistics)."""
    inputs = step_inputs(tiny_config(*flags))
    torch.set_num_threads(1)
    plain = one_step(tiny_config(*flags), inputs)
    halves = one_step(tiny_config(*flags), inputs, halves=True)
    ranks = run_ranks(flags, inputs, tmp_path)
    for out in ranks:
        assert max_rel_diff(out['G_grad'], plain['G_grad']) > 1e-2
        assert max_rel_diff(out['G_grad'], halves['G_grad']) < TOL
        assert max_rel_diff(out['D_grad'], halves['D_grad']) < TOL
        assert max_rel_diff(out['D_param'], halves['D_param']) < TOL
        assert max_rel_diff(out['G_param'], halves['G_param']) < TOL


def test_r1_two_ranks_equal_one_rank_double_batch(flags, tmp_path):
    """--R1 under DDP: each rank's penalty is the mean over its half of the reals and DDP
    averages D's gradients, so D's step, the penalty's double backward included, equals one
    process on both halves (G run per half, as each rank normalises its own); the ranks'
    D_loss_R1 average to that process's."""
    r1 = flags + ['--R1', '3']
    inputs = step_inputs(tiny_config(*r1))
    torch.set_num_threads(1)
    plain = one_step(tiny_config(*flags), inputs, halves=True)
    ref = one_step(tiny_config(*r1), inputs, halves=True)
    assert ref['metrics']['D_loss_R1'] > 0
    assert max_rel_diff(ref['D_grad'], plain['D_grad']) > 1e-3  # R1 is in the step
    ranks = run_ranks(r1, inputs, tmp_path)
    for out in ranks:
        for key in ('D_grad', 'D_param', 'G_grad', 'G_param'):
            assert max_rel_diff(out[key], ref[key]) < TOL, key
    mean = sum(r['metrics']['D_loss_R1'] for r in ranks) / WORLD
    assert mean == pytest.approx(ref['metrics']['D_loss_R1'], rel=1e-5)


# ----------------------------------------------------------------------------
# train.py under torchrun.

N = 2  # iterations before the resume


def torchrun(data_root, out, *extra):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
           '--nproc_per_node', str(WORLD), os.path.join(ROOT, 'train.py')]
    cmd += run_flags(data_root, str(out), 'dist', '--save_every', str(N), '--num_save_copies',
                     '0', '--seed', '3', *extra)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(cmd, cwd=str(out), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def load_all(out):
    import utils
    root = os.path.join(str(out), 'weights', 'dist')
    return {name: utils.torch_load(os.path.join(root, name + '.pth'))
            for name in ('G', 'D', 'G_ema', 'G_optim', 'D_optim', 'state_dict')}


def test_torchrun_writes_one_set_of_files_and_resumes_exactly(data_root, tmp_path):
    once, split = tmp_path / 'once', tmp_path / 'split'
    once.mkdir()
    split.mkdir()
    torchrun(data_root, once, '--total_itrs', str(2 * N))
    torchrun(data_root, split, '--total_itrs', str(N))
    first = load_all(split)
    assert first['state_dict']['itr'] == N
    assert len(first['state_dict']['rng']) == WORLD  # every rank's RNG state, gathered
    torchrun(data_root, split, '--total_itrs', str(2 * N), '--resume')

    a, b = load_all(once), load_all(split)
    for name in ('G', 'D', 'G_ema', 'G_optim', 'D_optim'):
        assert_same(a[name], b[name], name)
    assert a['state_dict']['itr'] == b['state_dict']['itr'] == 2 * N
    assert_same(a['state_dict']['rng'], b['state_dict']['rng'], 'rng')
    # The run changed the weights (so the comparison is not vacuous).
    assert not torch.equal(first['G']['linear.weight'], a['G']['linear.weight'])

    # One set of files, written by rank 0 only: nothing per rank, no leftover temporaries,
    # and one log line per iteration (two writers would double them).
    files = sorted(os.path.relpath(p, str(once))
                   for p in glob.glob(str(once / '**'), recursive=True) if os.path.isfile(p))
    assert not [f for f in files if 'rank' in f or '.tmp' in f], files
    weights = sorted(f for f in files if f.startswith('weights'))
    assert weights == [f'weights/dist/{n}.pth' for n in
                       ('D', 'D_optim', 'G', 'G_ema', 'G_optim', 'state_dict')]
    for itr in (N, 2 * N):
        assert os.path.isfile(once / 'samples' / 'dist' / (f'fixed_samples{itr}.jpg'))
    for run_dir, itrs in ((once, range(1, 2 * N + 1)), (split, range(1, 2 * N + 1))):
        lines = (run_dir / 'logs' / 'dist' / 'G_loss.log').read_text().split('\n')
        assert [int(line.split(':')[0]) for line in lines if line.strip()] == list(itrs)


def refused_at_start_up(data_root, tmp_path, monkeypatch, capsys, env):
    """train.py under env (every other launch variable unset): exit 2; its stderr lines;
    nothing written."""
    import train
    from helpers import run_flags
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_flags(data_root, str(out), 'exp', '--total_itrs', '1'))
    assert exit_info.value.code == 2 and not out.exists()
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize('env,why', [
    ({'RANK': '5', 'WORLD_SIZE': '2'}, 'no launch torchrun makes'),
    ({'RANK': '0', 'WORLD_SIZE': '0'}, 'no launch torchrun makes'),
    ({'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_RANK': '3'}, 'no launch torchrun makes'),
    ({'RANK': '-1', 'WORLD_SIZE': '2'}, "RANK='-1' in the environment is not a whole number"),
    ({'WORLD_SIZE': '2'}, "RANK=None in the environment is not a whole number"),
    ({'RANK': '0', 'WORLD_SIZE': 'two'}, "WORLD_SIZE='two' in the environment"),
    ({'RANK': '1', 'WORLD_SIZE': '2', 'MASTER_ADDR': ''}, 'without MASTER_ADDR and MASTER_PORT')])
def test_a_launch_environment_set_by_hand_is_one_line(data_root, tmp_path, monkeypatch, capsys,
                                                      env, why):
    """RANK/WORLD_SIZE that no launcher sets (RANK 5 of 2): train.py waited at the rendezvous
    for peers that never come, past SIGTERM, for 12 minutes and more (the outside attacker's
    round 13). Now one line and exit 2 before anything is written."""
    err = refused_at_start_up(data_root, tmp_path, monkeypatch, capsys, env)
    assert len(err) == 1 and why in err[0] and 'torchrun' in err[0], err


@pytest.mark.parametrize('rank', ['0', '1'])
def test_a_rank_that_never_comes_is_one_line_after_the_wait(data_root, tmp_path, monkeypatch,
                                                            capsys, rank):
    """RANK 0 (or 1) of 2, set by hand, the other rank never started: torch's rendezvous
    waited in C++ for half an hour, SIGTERM and Ctrl-C ignored (the outside attacker's round
    14). Past distributed.RENDEZVOUS_SECONDS (2 here) it is one line and exit 2."""
    import distributed
    monkeypatch.setattr(distributed, 'RENDEZVOUS_SECONDS', 2)
    err = refused_at_start_up(data_root, tmp_path, monkeypatch, capsys, {
        'RANK': rank, 'WORLD_SIZE': '2', 'LOCAL_RANK': '0', 'MASTER_ADDR': '127.0.0.1',
        'MASTER_PORT': str(free_port())})
    what = 'rank 0' if rank == '1' else '1 more of the 2 ranks'
    assert len(err) == 1 and f'waited 2 s for {what}' in err[0], err


@pytest.mark.parametrize('rank,note', [('0', 'is waiting for 1 more of the 2 ranks'),
                                       ('1', 'is waiting for rank 0')])
def test_a_sigterm_ends_the_wait_for_a_rank(data_root, tmp_path, rank, note):
    """The same wait, ended by SIGTERM once its note is shown: the signal's one line, at once,
    and nothing else on stderr (rank 1's first waits logged torch's socket time-out line for
    every attempt: 641 lines in 40 s, the outside attacker's round 15)."""
    env = {**os.environ, 'RANK': rank, 'WORLD_SIZE': '2', 'LOCAL_RANK': '0',
           'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(free_port())}
    from helpers import run_flags
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'),
                             *run_flags(data_root, str(tmp_path / 'out'), 'exp')],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if note in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert err.strip().splitlines() == ['stopped by signal 15'] and proc.returncode != 0
