"""CUDA checks, skipped without CUDA (tools/gpu_check.sh runs them with the benchmark).

A float32 step on CUDA against the same step on CPU; HDF5 batches made floats on CUDA against
the CPU; channels_last and torch.compile against the eager CUDA step; `--amp bf16|fp16` runs of
train.py; the synchronized BN's CUDA kernels against its CPU path; a one-process NCCL DDP step;
train.py testing with IS/FID/KID, sample.py and both Inception backends on CUDA, with random
Inception weights saved to a file.

Comparisons disable TF32 (on by default for cuDNN convolutions, with a 10-bit mantissa) and swap
ReLU for SiLU: a pre-activation within float32 rounding of 0 flips ReLU's gradient between two
devices and moves a whole layer's gradient by about 1/sqrt(numel) (1e-3 for these models),
which no tolerance on a float32 comparison could tell from a bug. float32 results that differ
only in reduction order (oneDNN/MKL against cuDNN/cuBLAS, eager against fused kernels) agree to
about 1e-6 relative through these models (tools/syncbn_error.py measures CPU float32 against
float64 at 1e-6); TOL = 1e-4 leaves 100x for it.
"""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image

import datasets
import inception_utils
import layers
import sample
import train
import train_fns
import utils
from distributed import free_port
from helpers import TINY_FLAGS, metrics_setup, tiny_config

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
              pytest.mark.slow]

TOL = 1e-4
B = 4
N_CLASSES = 10


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions for the duration of a test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def smooth_config(*extra):
    """Tiny models with attention, one D step, and SiLU in place of ReLU (see the docstring)."""
    config = tiny_config('--num_D_steps', '1', '--G_attn', '16', '--D_attn', '16', *extra)
    return {**config, 'G_activation': nn.SiLU(), 'D_activation': nn.SiLU()}


def rel_error(a, b):
    """||a - b|| / ||b|| over every tensor of two dicts with the same keys."""
    assert a.keys() == b.keys()
    diff = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)
    return math.sqrt(diff / sum((b[k].double() ** 2).sum() for k in b))


def one_step(config, device, wrap=None):
    """One training step from seed-0 weights (initialised on CPU), fixed z/y draws and a fixed
    real batch; returns the losses and every gradient of G and D, on CPU."""
    device = torch.device(device)
    torch.manual_seed(0)
    model, G, D, _, _ = train.build_models(config, device)
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(B, G.dim_z, generator=g) for _ in range(2)]
    ys = [torch.randint(0, N_CLASSES, (B,), generator=g) for _ in range(2)]
    x = torch.rand(B, 3, 32, 32, generator=g) * 2 - 1
    y = torch.randint(0, N_CLASSES, (B,), generator=g)
    if config['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    z_, y_ = utils.prepare_z_y(B, G.dim_z, N_CLASSES, device=device)
    for buf, values in ((z_, iter(zs)), (y_, iter(ys))):  # D step's draw, then G step's
        buf.sample_ = lambda buf=buf, values=values: buf.copy_(next(values))
    GD = model.G_D(*(map(wrap, (G, D)) if wrap else (G, D)))
    step = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config,
                                           train_fns.Precision(config, device))
    metrics = step(x.to(device), y.to(device))
    grads = {f'{name}.{k}': p.grad.float().cpu()
             for name, net in (('G', G), ('D', D)) for k, p in net.named_parameters()
             if p.grad is not None}
    return metrics, grads, G


def assert_steps_agree(a, b):
    for k in ('G_loss', 'D_loss_real', 'D_loss_fake'):
        assert a[0][k] == pytest.approx(b[0][k], rel=TOL, abs=TOL), k
    assert rel_error(a[1], b[1]) < TOL


def test_fp32_step_on_cuda_matches_cpu(no_tf32):
    config = smooth_config()
    cuda = one_step(config, 'cuda')
    assert next(cuda[2].parameters()).is_cuda
    assert_steps_agree(cuda, one_step(config, 'cpu'))


def test_channels_last_step_on_cuda_matches_contiguous(no_tf32):
    config = smooth_config()
    cl = one_step({**config, 'channels_last': True}, 'cuda')
    assert cl[2].blocks[0][0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_steps_agree(cl, one_step(config, 'cuda'))


def test_compile_step_on_cuda_matches_eager(no_tf32):
    """--compile: torch.compile (inductor, Triton kernels) of G and D as train.wrap does it."""
    import torch._dynamo
    config = smooth_config('--compile')
    torch._dynamo.reset()
    try:
        compiled = one_step(config, 'cuda',
                            wrap=lambda net: train.wrap(net, config, 1, torch.device('cuda')))
    finally:
        torch._dynamo.reset()
    assert_steps_agree(compiled, one_step({**config, 'compile': False}, 'cuda'))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_syncbn_cuda_kernels_match_cpu_path(dtype, channels_last):
    """layers.SyncBN on CUDA (torch.batch_norm_* kernels) against its CPU path: output, float32
    statistics and input gradient, on non-centred input."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 16, 8, 8, generator=g) * 2 + 10).to(dtype)
    w = torch.randn(6, 16, 8, 8, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for device in ('cpu', 'cuda'):
        xd = x.to(device, copy=True).requires_grad_()
        out, mean, var, n = layers.SyncBN.apply(xd, 1e-5, False)
        (out.float() * w.to(device).float()).sum().backward()
        assert out.dtype == dtype and mean.dtype == var.dtype == torch.float32
        results.append({'out': out.detach().float().cpu(), 'mean': mean.cpu(), 'var': var.cpu(),
                        'dx': xd.grad.float().cpu()})
        assert n.item() == 6 * 8 * 8
    cpu, cuda = results
    torch.testing.assert_close(cuda['mean'], cpu['mean'], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(cuda['var'], cpu['var'], rtol=1e-5, atol=1e-6)
    # bf16 outputs differ by their last bit where the float32 results straddle a rounding step.
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for k in ('out', 'dx'):
        assert rel_error({k: cuda[k]}, {k: cpu[k]}) < tol, k


def test_one_process_nccl_ddp_step(no_tf32, monkeypatch):
    """A DDP step over a one-process NCCL group with --cross_replica (SyncBN's NCCL all-gather
    and all-reduce run) equals the plain CUDA step."""
    config = smooth_config('--cross_replica')
    plain = one_step(config, 'cuda')
    calls = []
    apply = layers.SyncBN.apply
    monkeypatch.setattr(layers.SyncBN, 'apply', lambda *a: calls.append(1) or apply(*a))
    dist.init_process_group('nccl', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                            world_size=1, device_id=torch.device('cuda', 0))
    try:
        ddp = one_step(config, 'cuda', wrap=lambda net: nn.parallel.DistributedDataParallel(
            net, device_ids=[0]))
    finally:
        dist.destroy_process_group()
    assert calls
    assert_steps_agree(ddp, plain)


def test_hdf5_batches_become_the_cpu_floats_on_cuda():
    """to_float on CUDA gives the CPU's bits for every pixel value (dividing by 255 there would
    not: CUDA multiplies by the float32 reciprocal, off by one bit for 126 of the 256)."""
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    cpu = datasets.to_float(x)
    cuda = datasets.to_float(x.to('cuda'))
    assert cuda.is_cuda and torch.equal(cuda.cpu().view(torch.int32), cpu.view(torch.int32))


# ----------------------------------------------------------------------------
# train.py, sample.py and the Inception backends on CUDA.

@pytest.fixture
def cuda_setup(shared_run):
    """A 10-class image folder, random tf_fid weights on disk, and its moments made on CUDA,
    once for the whole pytest run (shared_run). Read-only."""
    def build(tmp):
        paths = metrics_setup(tmp, 'cuda', N_CLASSES)
        (tmp / 'paths.json').write_text(json.dumps([str(p) for p in paths]))
    tmp = shared_run('cuda_setup', build)
    folder, weights, data_root = map(Path, json.loads((tmp / 'paths.json').read_text()))
    return tmp, folder, weights, data_root


def cuda_flags(setup, name, *extra):
    """Tiny-model flags on CUDA, on the folder, with tf_fid metrics."""
    tmp, folder, weights, data_root = setup
    base = list(TINY_FLAGS)
    base[base.index('S32')] = 'custom'
    base[base.index('cpu')] = 'cuda'
    return base + [
        '--dataset_root', str(folder), '--resolution', '32', '--n_classes', str(N_CLASSES),
        '--data_root', str(data_root), '--weights_root', str(tmp / 'weights'),
        '--logs_root', str(tmp / 'logs'), '--samples_root', str(tmp / 'samples'),
        '--experiment_name', name, '--inception_backend', 'tf_fid',
        '--inception_weights', str(weights), '--kid', '--kid_subset_size', '10',
        '--num_inception_images', '10',
        '--ema', '--use_ema', '--num_D_steps', '1', '--batch_size', '2'] + list(extra)


def logged(tmp, name, key):
    lines = (tmp / 'logs' / name / (key + '.log')).read_text().split('\n')
    return [float(line.split(':')[1]) for line in lines if line.strip()]


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_run_on_cuda(cuda_setup, tmp_path, amp):
    """train.py --amp on CUDA: finite losses, float32 weights, and with fp16 the GradScalers'
    state in the checkpoint."""
    tmp, name = tmp_path, 'amp_' + amp
    train.run(vars(utils.prepare_parser().parse_args(cuda_flags(
        (tmp,) + cuda_setup[1:], name, '--amp', amp, '--total_itrs', '4', '--save_every', '4',
        '--test_every', '0', '--num_epochs', '100'))))
    for key in ('G_loss', 'D_loss_real', 'D_loss_fake'):
        values = logged(tmp, name, key)
        assert len(values) == 4 and all(math.isfinite(v) for v in values), key
    root = str(tmp / 'weights' / name)
    state = utils.torch_load(os.path.join(root, 'state_dict.pth'))
    if amp == 'fp16':
        for scaler in ('G_scaler', 'D_scaler'):
            scale = state['amp'][scaler]['scale']
            assert math.isfinite(scale) and 0 < scale <= 2.0 ** 16, scaler
        assert set(state['amp']['skipped']) == {'G', 'D'}
    else:
        assert 'amp' not in state
    for file in ('G', 'D', 'G_ema'):
        for k, t in utils.torch_load(os.path.join(root, file + '.pth')).items():
            if t.is_floating_point():
                assert t.dtype == torch.float32 and torch.isfinite(t).all(), (file, k)


@pytest.fixture
def trained(cuda_setup, shared_run):
    """A 2-iteration CUDA run that tests (IS/FID/KID on CUDA) and saves at iteration 2:
    cuda_setup with its own folder for the run, made once for the whole pytest run. Its own
    run: the session's tiny_run is on CPU and never tests. Read-only."""
    def build(out):
        train.run(vars(utils.prepare_parser().parse_args(cuda_flags(
            (out,) + cuda_setup[1:], 'e2e', '--test_every', '2', '--save_every', '2',
            '--total_itrs', '2', '--num_epochs', '10'))))
    return (shared_run('cuda_trained', build),) + cuda_setup[1:]


def test_train_tests_on_cuda(trained):
    lines = [json.loads(line) for line in open(trained[0] / 'logs' / 'e2e_log.jsonl')]
    assert [line['itr'] for line in lines] == [2]
    for key in ('IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std'):
        assert np.isfinite(lines[0][key]), key


def test_sample_py_on_cuda(trained, tmp_path, capsys):
    """sample.py on CUDA: an npz of exactly N images, sheets, and Inception metrics."""
    shutil.copytree(trained[0], tmp_path / 'run')  # sample.py writes beside the weights
    trained = (tmp_path / 'run',) + trained[1:]
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = vars(parser.parse_args(cuda_flags(
        trained, 'e2e', '--sample_npz', '--sample_num_npz', '13', '--G_batch_size', '5',
        '--sample_sheets', '--sample_inception_metrics', '--G_eval_mode')))
    sample.run(config)
    folder = trained[0] / 'samples' / 'e2e'
    with np.load(folder / 'samples.npz') as npz:
        assert npz['x'].shape == (13, 3, 32, 32) and npz['x'].dtype == np.uint8
    assert Image.open(folder / '-1' / 'samples0.jpg').size[0] > 0
    assert 'Inception Score is' in capsys.readouterr().out


@pytest.mark.parametrize('backend', inception_utils.BACKENDS)
def test_inception_backend_on_cuda_matches_cpu(backend, tmp_path, no_tf32):
    """Both backends load random weights from a file onto CUDA and compute what CPU does."""
    torch.manual_seed(0)
    net = inception_utils.build_inception_net(backend)
    path = tmp_path / inception_utils.WEIGHT_FILES[backend]
    torch.save(net.state_dict(), path)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    outs = []
    for device in ('cpu', 'cuda'):
        loaded = inception_utils.load_inception_net(backend=backend, weights_path=str(path),
                                                    device=device)
        assert next(loaded.parameters()).device.type == device
        with torch.no_grad():
            pool, logits = loaded(x.to(device))
        outs.append({'pool': pool.cpu(), 'logits': logits.cpu()})
    assert outs[1]['pool'].shape == (2, 2048)
    assert rel_error(outs[1], outs[0]) < TOL
