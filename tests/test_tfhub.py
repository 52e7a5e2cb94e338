"""convert_pretrained.py --tfhub_dir: a TF-Hub BigGAN module's checkpoint (official variable names,
random values, written with tf_bundle) against an independent float64 forward pass written in
TensorFlow's layout (NHWC, HWIO kernels, TF's [z chunk, class] conditioning, TF's SN step)."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm

import convert_pretrained
import tf_bundle
from helpers import load_as_sample

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

EMA = '/ema_b999900'
EXACT = 1e-4
# The TF-Hub generators (the release's TFHub/biggan_v1.py): channel multipliers of each GBlock,
# the block attention precedes, and the z chunk size.
BLOCKS = {128: [(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)],
          256: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)],
          512: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1), (1, 1)]}
ATTENTION_BEFORE = {128: 4, 256: 5, 512: 4}


def tfhub_variables(resolution, ch=4, chunk=4, shared=8, n_classes=10, seed=0, levels=0):
    """A module's variables by their official names: w, b, gamma, beta with EMA copies, SN's
    u0 (1, out) and u1, the BN accumulators ((levels, C) statistics when levels > 0)."""
    rng = np.random.default_rng(seed)
    v = {}

    def averaged(name, value):
        value = np.asarray(value, dtype=np.float64)
        v[name] = value.astype(np.float32)
        v[name + EMA] = np.asarray(value * (1 + 0.1 * rng.standard_normal(value.shape)),
                                   dtype=np.float32)

    def weight(name, shape, bias=True):
        # A dominant direction keeps responses moderate after spectral normalisation.
        spike = np.outer(rng.standard_normal(int(np.prod(shape[:-1]))),
                         rng.standard_normal(shape[-1])).reshape(shape)
        averaged(name + '/w', rng.standard_normal(shape) + 3 * spike)
        if bias:
            averaged(name + '/b', 0.1 * rng.standard_normal(shape[-1]))
        v[name + '/u0'] = rng.standard_normal((1, shape[-1])).astype(np.float32)
        v[name + '/u1'] = rng.standard_normal((1, int(np.prod(shape[:-1])))).astype(np.float32)

    def bn_stats(name, channels):
        shape = (levels, channels) if levels else (channels,)
        v[name + '/accumulated_mean'] = np.zeros(shape, np.float32)
        v[name + '/accumulated_var'] = np.ones(shape, np.float32)
        v[name + '/accumulation_counter'] = np.array(1.0, np.float32)

    averaged('linear/w', rng.standard_normal((n_classes, shared)))
    weight('Generator/G_Z/G_linear', (chunk, 4 * 4 * 16 * ch))
    for i, (cin, cout) in enumerate(BLOCKS[resolution]):
        name = f"Generator/GBlock{f'_{i}' if i else ''}/"
        weight(name + 'conv0', (3, 3, cin * ch, cout * ch))
        weight(name + 'conv1', (3, 3, cout * ch, cout * ch))
        weight(name + 'conv_sc', (1, 1, cin * ch, cout * ch))
        for suffix, channels in (('', cin * ch), ('_1', cout * ch)):
            for part in ('gamma', 'beta'):
                weight(name + f'HyperBN{suffix}/{part}', (chunk + shared, channels), False)
            bn_stats(name + 'CrossReplicaBN' + suffix, channels)
    a = BLOCKS[resolution][ATTENTION_BEFORE[resolution]][0] * ch
    for part, shape in (('theta', (1, 1, a, a // 8)), ('phi', (1, 1, a, a // 8)),
                        ('g', (1, 1, a, a // 2)), ('o_conv', (1, 1, a // 2, a))):
        weight('Generator/attention/' + part, shape, False)
    averaged('Generator/attention/gamma', np.array(0.5))
    averaged('Generator/ScaledCrossReplicaBN/gamma', 0.5 * (1 + 0.2 * rng.standard_normal(ch)))
    averaged('Generator/ScaledCrossReplicaBN/beta', 0.1 * rng.standard_normal(ch))
    bn_stats('Generator/ScaledCrossReplicaBNbn', ch)
    weight('Generator/conv_2d', (3, 3, ch, 3))
    return v


def reference(v, z, y, resolution, ema=True, truncation=1.0, calibrate=False):
    """The generator in TF's layout and float64; calibrate writes each BN's measured statistics
    into v first (every level), so activations stay O(1)."""
    n = z.shape[0]

    def get(name, is_averaged=True):
        return torch.from_numpy(v[name + (EMA if ema and is_averaged else '')]).double()

    def sn(name):
        w, u = get(name + '/w'), get(name + '/u0', False)
        mat = w.reshape(-1, w.shape[-1])                   # (in', out)
        vec = F.normalize(u @ mat.t(), dim=1)
        u = F.normalize(vec @ mat, dim=1)
        return w / (vec @ mat @ u.t())

    def conv(x, name, bias=True):                          # x: (N, H, W, C); w: HWIO
        w = sn(name)
        out = F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1),
                       padding=w.shape[0] // 2).permute(0, 2, 3, 1)
        return out + get(name + '/b') if bias else out

    def stats(name, x):
        if calibrate:
            mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2), unbiased=False)
            var = var + 0.1 * var.mean() + 0.1 * mean ** 2
            for key, value in (('mean', mean), ('var', var)):
                v[f'{name}/accumulated_{key}'][...] = value.float().numpy()
        mean, var = (get(f'{name}/accumulated_{k}', False) for k in ('mean', 'var'))
        if mean.dim() == 2:  # HF's arithmetic: f of level s, 1 - f of level s + 1
            f, s = math.modf(truncation / (1.0 / (mean.shape[0] - 1)))
            s = int(s)
            mean, var = ((m[s] if f == 0 else f * m[s] + (1 - f) * m[s + 1]) for m in (mean, var))
        return mean, var

    def hyper_bn(x, name, cond):
        mean, var = stats(name.replace('HyperBN', 'CrossReplicaBN'), x)
        gain = 1 + cond @ sn(name + '/gamma')
        bias = cond @ sn(name + '/beta')
        return (x - mean) / torch.sqrt(var + 1e-4) * gain[:, None, None] + bias[:, None, None]

    def up(x):
        return x.repeat_interleave(2, 1).repeat_interleave(2, 2)

    def pool(x):
        return F.max_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    def attention(x):
        _, h, w, c = x.shape
        name = 'Generator/attention/'
        theta = conv(x, name + 'theta', False).reshape(n, h * w, c // 8)
        phi = pool(conv(x, name + 'phi', False)).reshape(n, h * w // 4, c // 8)
        g = pool(conv(x, name + 'g', False)).reshape(n, h * w // 4, c // 2)
        # One sample at a time: at 256px the attention map is (16384, 4096).
        o = torch.stack([torch.softmax(t @ p.t(), -1) @ gi for t, p, gi in zip(theta, phi, g)])
        o = o.reshape(n, h, w, c // 2)
        return x + get(name + 'gamma') * conv(o, name + 'o_conv', False)

    z = z.double()
    chunks = torch.split(z, v['Generator/G_Z/G_linear/w'].shape[0], 1)
    class_emb = F.one_hot(y, v['linear/w'].shape[0]).double() @ get('linear/w')
    h = chunks[0] @ sn('Generator/G_Z/G_linear') + get('Generator/G_Z/G_linear/b')
    h = h.view(n, 4, 4, -1)                                          # (N, 4, 4, 16ch)
    for i in range(len(BLOCKS[resolution])):
        if i == ATTENTION_BEFORE[resolution]:
            h = attention(h)
        cond = torch.cat([chunks[i + 1], class_emb], 1)
        name = f"Generator/GBlock{f'_{i}' if i else ''}/"
        out = conv(up(F.relu(hyper_bn(h, name + 'HyperBN', cond))), name + 'conv0')
        out = conv(F.relu(hyper_bn(out, name + 'HyperBN_1', cond)), name + 'conv1')
        h = out + conv(up(h), name + 'conv_sc')
    mean, var = stats('Generator/ScaledCrossReplicaBNbn', h)
    # The release's config keeps our output BN's eps, 1e-5.
    h = ((h - mean) / torch.sqrt(var + 1e-5) * get('Generator/ScaledCrossReplicaBN/gamma')
         + get('Generator/ScaledCrossReplicaBN/beta'))
    return torch.tanh(conv(F.relu(h), 'Generator/conv_2d')).permute(0, 3, 1, 2)


def latents(v, resolution, n=2, seed=1, truncation=1.0):
    chunk = v['Generator/G_Z/G_linear/w'].shape[0]
    dim_z = chunk * (len(BLOCKS[resolution]) + 1)
    z = truncnorm.rvs(-2, 2, size=(n, dim_z), random_state=seed).astype(np.float32)
    return torch.from_numpy(z) * truncation, torch.arange(n) * 3 % v['linear/w'].shape[0]


def module(folder, resolution, levels=0, prefix='', seed=0):
    """A calibrated random module written as TF-Hub's variables/ checkpoint."""
    v = tfhub_variables(resolution, seed=seed, levels=levels)
    z, y = latents(v, resolution, n=8, seed=seed)
    with torch.no_grad():
        reference(v, z, y, resolution, calibrate=True)
    if levels:
        rng = np.random.default_rng(seed)
        for key in [k for k in v if 'accumulated_' in k]:
            v[key] *= (1 + 0.05 * rng.standard_normal(v[key].shape)).astype(np.float32)
    tf_bundle.write_bundle(os.path.join(folder, 'variables', 'variables'),
                           {prefix + k: a for k, a in v.items()})
    return v


def cli(argv, capsys):
    """(exit status, stdout lines, stderr lines) of convert_pretrained.py's command line."""
    try:
        convert_pretrained.main(argv)
        status = 0
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out.strip().splitlines(), out.err.strip().splitlines()


def converted(folder, weights_root, name, resolution, *extra):
    convert_pretrained.main(['--tfhub_dir', folder, '-r', str(resolution), '--weights_root',
                             str(weights_root), '--experiment_name', name] + list(extra))
    return load_as_sample(weights_root, name)[0]


def error(G, v, resolution, **kwargs):
    z, y = latents(v, resolution, truncation=kwargs.get('truncation', 1.0))
    with torch.no_grad():
        ours = G(z, G.shared(y))
        return (ours.double() - reference(v, z, y, resolution, **kwargs)).abs().max().item()


@pytest.mark.parametrize('resolution', [128, 256, 512])
def test_equals_the_tf_layout_forward(tmp_path, resolution):
    """The release's mapping and config per resolution, EMA weights by default."""
    v = module(str(tmp_path / 'module'), resolution)
    G = converted(str(tmp_path / 'module'), tmp_path / 'w', 'hub', resolution)
    assert G.resolution == resolution and G.attention == {128: '64', 256: '128', 512: '64'}[
        resolution]
    assert error(G, v, resolution) < EXACT
    assert error(G, v, resolution, ema=False) > 1e-2  # the EMA copies were the ones taken


def test_no_ema_takes_the_raw_weights(tmp_path):
    v = module(str(tmp_path / 'module'), 128)
    G = converted(str(tmp_path / 'module'), tmp_path / 'w', 'raw', 128, '--no_ema')
    assert error(G, v, 128, ema=False) < EXACT


def test_loaded_module_names_convert_too(tmp_path):
    """Variables dumped from a loaded hub.Module carry a 'module/' scope."""
    v = module(str(tmp_path / 'module'), 128, prefix='module/')
    G = converted(str(tmp_path / 'module'), tmp_path / 'w', 'scoped', 128)
    assert error(G, v, 128) < EXACT


def test_statistics_per_truncation_follow_it(tmp_path, capsys):
    """Where a module holds BN statistics per truncation level, --truncation picks them as HF
    does; without --truncation the conversion stops with one line."""
    v = module(str(tmp_path / 'module'), 128, levels=51)
    G = converted(str(tmp_path / 'module'), tmp_path / 'w', 'levels', 128, '--truncation',
                  '0.123')
    assert error(G, v, 128, truncation=0.123) < EXACT
    assert error(G, v, 128, truncation=0.56) > 1e-3
    status, _, lines = cli(['--tfhub_dir', str(tmp_path / 'module'), '-r', '128',
                            '--weights_root', str(tmp_path / 'w2')], capsys)
    assert status == 2 and len(lines) == 1 and '--truncation' in lines[0]


def test_one_set_of_statistics_is_the_releases_limitation(tmp_path, capsys):
    """Single statistics: a note, and the sample command uses truncation 1 unless asked."""
    module(str(tmp_path / 'module'), 128)
    status, out, _ = cli(['--tfhub_dir', str(tmp_path / 'module'), '-r', '128',
                          '--weights_root', str(tmp_path / 'w')], capsys)
    assert status == 0
    assert any('truncation 1 only' in line for line in out)
    assert any('--truncation 1 ' in line for line in out)
    assert os.path.isfile(tmp_path / 'w' / 'biggan-128' / 'G_ema.pth')


@pytest.mark.parametrize('drop, args, message', [
    (EMA, ['-r', '128'], 'pass --no_ema'),
    ('Generator/GBlock_1/conv1/u0', ['-r', '128', '--no_ema'], 'Generator/GBlock_1/conv1/u0'),
    (None, [], '-r/--resolution'),
])
def test_bad_modules_get_one_line(tmp_path, capsys, drop, args, message):
    v = tfhub_variables(128)
    if drop:
        v = {k: a for k, a in v.items() if drop not in k}
    tf_bundle.write_bundle(str(tmp_path / 'module' / 'variables' / 'variables'), v)
    status, _, lines = cli(['--tfhub_dir', str(tmp_path / 'module'),
                            '--weights_root', str(tmp_path / 'w')] + args, capsys)
    assert status == 2 and len(lines) == 1 and message in lines[0], lines


class Shapes:
    """Stands in for a full-size module: the shapes tfhub_flags reads."""

    def __init__(self, resolution):
        self.chunk = {128: 20, 256: 20, 512: 16}[resolution]

    def shape(self, name, ndim):
        return {'linear/w': (1000, 128),
                'Generator/G_Z/G_linear/w': (self.chunk, 4 * 4 * 16 * 96)}[name]


@pytest.mark.parametrize('resolution, dim_z, attention', [(128, 120, '64'), (256, 140, '128'),
                                                           (512, 128, '64')])
def test_official_shapes_give_the_releases_config(resolution, dim_z, attention):
    """The release's get_config: G_ch 96, shared 128, hier, dim_z 120/140/128, attention
    64/128/64, BN and SN eps 1e-4, one SV and one power step, 1000 classes."""
    config, G = convert_pretrained.build_config(
        convert_pretrained.tfhub_flags(Shapes(resolution), resolution, 'SN'))
    expected = {'G_param': 'SN', 'G_ch': 96, 'G_shared': True, 'shared_dim': 128,
                'dim_z': dim_z, 'hier': True, 'cross_replica': False, 'mybn': False,
                'G_attn': attention, 'norm_style': 'bn', 'G_eval_mode': True, 'BN_eps': 1e-4,
                'SN_eps': 1e-4, 'num_G_SVs': 1, 'num_G_SV_itrs': 1, 'resolution': resolution,
                'n_classes': 1000, 'model': 'BigGAN', 'G_nl': 'inplace_relu'}
    assert {k: config[k] for k in expected} == expected
    assert G.dim_z == dim_z and len(G.blocks) == len(BLOCKS[resolution])
