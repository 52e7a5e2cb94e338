"""Plain helpers the tests share (conftest.py holds the fixtures): the repo root on sys.path,
the tiny configs and runs, reference computations and stand-ins."""
import os
import shutil
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


def run_flags(data_root, out, name, *extra):
    """Flags for a tiny train.py run on S32 with every root under out."""
    return TINY_FLAGS + [
        '--data_root', data_root, '--weights_root', os.path.join(out, 'weights'),
        '--logs_root', os.path.join(out, 'logs'), '--samples_root', os.path.join(out, 'samples'),
        '--experiment_name', name, '--shuffle', '--num_D_steps', '1', '--test_every', '0',
        '--ema', '--use_ema', '--num_epochs', '1000'] + list(extra)


def shared_folder(base, name, build):
    """base/name, filled by build(folder) once: the first caller, in any process, builds it
    under a file lock while the others wait, and later ones find it done. A build that fails
    leaves no done-marker, so the next caller rebuilds it from an empty folder."""
    from filelock import FileLock  # a dependency of torch
    folder, done = base / name, base / (name + '.done')
    with FileLock(str(base / (name + '.lock'))):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


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


def fp16_autocast_on_cpu():
    """None when this CPU build runs a conv under float16 autocast, else the reason it cannot."""
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            out = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
        if out.dtype != torch.float16:
            return f'float16 autocast on CPU leaves conv2d in {out.dtype}'
    except RuntimeError as e:
        return f'float16 autocast is not supported on this CPU: {e}'
    return None


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

    pool_features = 8

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


# ----------------------------------------------------------------------------
# Official generators: stand-ins in HuggingFace's pytorch-pretrained-BigGAN format.

# HF's `layers` per resolution: [upsample, in, out] channel multipliers of each GenBlock.
HF_LAYERS = {128: [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8],
                   [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2], [False, 2, 2],
                   [True, 2, 1]]}
HF_LAYERS[256] = HF_LAYERS[128][:4] + [[False, 8, 8], [True, 8, 8]] + HF_LAYERS[128][4:]
HF_LAYERS[512] = HF_LAYERS[256] + [[False, 1, 1], [True, 1, 1]]


def import_hf():
    """HuggingFace's pytorch_pretrained_biggan (skips the test when it is not installed).

    Its package imports boto3, requests and botocore for downloads only; installed with
    --no-deps they are absent, so stand-ins take their place while it is imported.
    """
    import importlib.util
    import types
    if importlib.util.find_spec('pytorch_pretrained_biggan') is None:
        pytest.skip('pytorch-pretrained-biggan is not installed: pip install --no-deps '
                    'pytorch-pretrained-biggan==0.1.1')
    added = [name for name in ('boto3', 'requests', 'botocore')
             if name not in sys.modules and importlib.util.find_spec(name) is None]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    if 'botocore' in added:
        sys.modules['botocore.exceptions'] = types.ModuleType('botocore.exceptions')
        sys.modules['botocore.exceptions'].ClientError = Exception
        added.append('botocore.exceptions')
    try:
        import pytorch_pretrained_biggan
    finally:
        for name in added:
            del sys.modules[name]
    return pytorch_pretrained_biggan


def hf_standin(resolution=128, channel_width=8, z_dim=12, num_classes=10, seed=0, batch=16,
               **overrides):
    """HF's BigGAN-deep with random weights, as its files would hold a trained one.

    Every SN layer gets a dominant direction (responses stay moderate), the SN vectors one
    training-mode power step (so u = normalize(W v), as in HF's converted files), and the BN
    statistics are measured per truncation level every 10 levels, linear in between with a
    little noise, so activations stay O(1) and neighbouring levels differ. overrides go to
    BigGANConfig (n_stats, attention_layer_position, ...). Returns (BigGANConfig, model in
    eval mode).
    """
    hf = import_hf()
    from scipy.stats import truncnorm
    config = hf.BigGANConfig(output_dim=resolution, z_dim=z_dim, class_embed_dim=z_dim,
                             channel_width=channel_width, num_classes=num_classes,
                             layers=HF_LAYERS[resolution], **overrides)
    n_stats = config.n_stats
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = hf.BigGAN(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('weight_orig'):
                spike = torch.outer(torch.randn(p.shape[0], generator=g),
                                    torch.randn(p[0].numel(), generator=g))
                p.copy_(torch.randn(p.shape, generator=g) + 3 * spike.reshape(p.shape))
            elif name == 'embeddings.weight':
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith('gamma'):
                p.fill_(0.5)
            elif name == 'generator.bn.weight':
                p.copy_(0.5 * (1 + 0.2 * torch.randn(p.shape, generator=g)))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        z = torch.from_numpy(truncnorm.rvs(-2, 2, size=(batch, z_dim), random_state=seed)
                             .astype('float32'))
        y = torch.eye(num_classes)[torch.randint(0, num_classes, (batch,), generator=g)]
        model.train()
        model(z, y, 0.5)
        model.eval()
        bns = [m for m in model.modules() if isinstance(m, hf.model.BigGANBatchNorm)]
        level = [0]

        def measure(module, args):
            # Written into this level and every later one, whichever of two levels HF reads.
            x = args[0]
            var, mean = x.var((0, 2, 3), unbiased=False), x.mean((0, 2, 3))
            module.running_means[level[0]:] = mean
            module.running_vars[level[0]:] = var + 0.1 * var.mean() + 0.1 * mean ** 2
        hooks = [bn.register_forward_pre_hook(measure) for bn in bns]
        anchors = sorted(set(range(0, n_stats, 10)) | {n_stats - 1})
        for anchor in anchors:
            level[0], t = anchor, anchor / (n_stats - 1)
            model(z * t, y, max(t, 1e-3))
        for hook in hooks:
            hook.remove()
        for bn in bns:
            for a, b in zip(anchors, anchors[1:]):
                for i in range(a + 1, b):
                    f = (i - a) / (b - a)
                    for stats in (bn.running_means, bn.running_vars):
                        stats[i] = (1 - f) * stats[a] + f * stats[b]
            bn.running_vars.mul_(1 + 0.01 * torch.rand(bn.running_vars.shape, generator=g))
    return config, model


def save_hf(config, model, folder):
    """The folder HF's from_pretrained reads: config.json (its own JSON) and
    pytorch_model.bin (the state dict)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as f:
        f.write(config.to_json_string())
    torch.save(model.state_dict(), os.path.join(folder, 'pytorch_model.bin'))
    return folder


def load_as_sample(weights_root, experiment_name, *extra):
    """G as sample.py builds it for --config_from_name --G_eval_mode (the model flags from the
    checkpoint, G.pth loaded, eval mode), with the sample config."""
    import importlib

    import sample
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = vars(parser.parse_args(['--config_from_name', '--weights_root', str(weights_root),
                                     '--experiment_name', experiment_name, '--G_eval_mode',
                                     '--device', 'cpu'] + list(extra)))
    config = utils.prepare_config(sample.config_from_checkpoint(config))
    G = importlib.import_module(config['model']).Generator(
        **{**config, 'skip_init': True, 'no_optim': True})
    utils.load_weights(G, None, {}, config['weights_root'], experiment_name, None, None,
                       strict=True, load_optim=False)
    return G.eval(), config
