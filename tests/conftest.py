"""Shared fixtures for the core tests: the repo root on sys.path and tiny configs."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# Tiny models gain nothing from threads, and on a shared 2-core machine threads that wait for
# each other cost seconds per step; subprocesses inherit the setting.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import importlib  # noqa: E402

import torch  # noqa: E402

import utils  # noqa: E402

torch.set_num_threads(1)

# The smallest models the 32px architecture allows, on CPU, with attention off.
TINY_FLAGS = ['--dataset', 'S32', '--G_ch', '4', '--D_ch', '4', '--batch_size', '4',
              '--G_attn', '0', '--D_attn', '0', '--dim_z', '8', '--G_shared',
              '--shared_dim', '8', '--hier', '--device', 'cpu', '--num_workers', '0',
              '--no_pin_memory', '--G_init', 'N02', '--D_init', 'N02']


def tiny_config(*extra):
    """A prepared config for the tiny models, with extra flags parsed after TINY_FLAGS."""
    args = utils.prepare_parser().parse_args(TINY_FLAGS + list(extra))
    return utils.prepare_config(vars(args))


@pytest.fixture
def make_config():
    """tiny_config as a fixture."""
    return tiny_config


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """One data_root for the session, so S32 is generated (and cached) only once."""
    root = tmp_path_factory.mktemp('data')
    import datasets
    datasets.S32(os.path.join(str(root), utils.DATASETS['S32'].root))
    return str(root)


def run_flags(data_root, out, name, *extra):
    """Flags for a tiny train.py run on S32 with every root under out."""
    return TINY_FLAGS + [
        '--data_root', data_root, '--weights_root', os.path.join(out, 'weights'),
        '--logs_root', os.path.join(out, 'logs'), '--samples_root', os.path.join(out, 'samples'),
        '--experiment_name', name, '--shuffle', '--num_D_steps', '1', '--test_every', '0',
        '--ema', '--use_ema', '--num_epochs', '1000'] + list(extra)


def assert_same(a, b, where=''):
    """Recursive exact equality of loaded checkpoint objects (tensors, dicts, lists, values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


def tiny_models(config, seed):
    """G, D, G_ema from config, seeded, with one optimizer step taken so Adam has state."""
    model = importlib.import_module(config['model'])
    torch.manual_seed(seed)
    G, D = model.Generator(**config), model.Discriminator(**config)
    G_ema = model.Generator(**{**config, 'no_optim': True})
    for net in (G, D):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        net.optim.step()
    return G, D, G_ema


def penalty_grad(w, offdiag):
    """Autograd gradient of 0.5 * ||W W^T * (1 - I)||_F^2 (or of W W^T - I) for W = w.view."""
    w = w.detach().clone().requires_grad_(True)
    m = w.view(w.shape[0], -1)
    gram = m @ m.t()
    eye = torch.eye(m.shape[0])
    pen = 0.5 * ((gram * (1 - eye)) if offdiag else (gram - eye)).pow(2).sum()
    pen.backward()
    return w.grad


def metrics_setup(tmp, device, n_classes=10):
    """An n_classes image folder, random tf_fid Inception weights on disk, and the folder's
    moments computed on device: (folder, weights, data_root)."""
    import numpy as np
    from PIL import Image

    import calculate_inception_moments
    import inception_utils
    folder = tmp / 'images'
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (folder / f'class{c}').mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f'class{c}' / f'{i}.png')
    weights = tmp / 'fid_inception.pth'
    torch.manual_seed(0)
    torch.save(inception_utils.build_inception_net('tf_fid').state_dict(), weights)
    data_root = tmp / 'data'
    data_root.mkdir()
    calculate_inception_moments.run({
        'dataset': 'custom', 'data_root': str(data_root), 'batch_size': 10, 'parallel': False,
        'augment': False, 'num_workers': 0, 'shuffle': False, 'seed': 0,
        'inception_backend': 'tf_fid', 'inception_weights': str(weights), 'device': device,
        'dataset_root': str(folder), 'resolution': 32, 'n_classes': n_classes,
        'kid_feats': 20})
    return folder, weights, data_root


class FakeInception(torch.nn.Module):
    """A cheap stand-in for a wrapped Inception: (pool (N, 8), logits (N, 5))."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        """Pool = first 8 pixels, logits = a linear map of them."""
        pool = x.flatten(1)[:, :8]
        return pool, self.fc(pool)


def demo_flags(**env):
    """The train.py flags of scripts/launch_demo.sh (MODEL_FLAGS then TRAIN_FLAGS), expanded by
    bash with env (EXPERIMENT, TOTAL_ITRS, SAVE_EVERY, ...) set."""
    script = os.path.join(ROOT, 'scripts', 'launch_demo.sh')
    arrays = ("eval \"$(sed -n '/^[A-Z_]*=\\${/p;/^MODEL_FLAGS=(/,/^)/p;/^TRAIN_FLAGS=(/,/^)/p' "
              "\"$0\")\"; printf '%s\\n' \"${MODEL_FLAGS[@]}\" \"${TRAIN_FLAGS[@]}\"")
    out = subprocess.run(['bash', '-c', arrays, script], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()
