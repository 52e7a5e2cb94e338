"""convert_pretrained.py against HuggingFace's own BigGAN-deep: images through sample.py's loading
path, every layer, and one guard per difference the facts list (the naive handling of it,
built here from HF's state dict, must visibly fail); HF's truncation-level arithmetic."""
import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm

import convert_pretrained
import sample
import utils
from helpers import FIXTURES, HF_LAYERS, ROOT, hf_standin, import_hf, load_as_sample, save_hf

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

TRUNCATIONS = [0.4, 0.123, 0.56, 0.94, 1.0]
EXACT = 1e-4  # the bar, per pixel in [-1, 1]


class Source:
    """An HF model in eval mode, its config and state dict, saved in HF's format in folder."""

    def __init__(self, folder, config, model):
        self.config, self.model, self.state = config, model.eval(), model.state_dict()
        self.folder = save_hf(config, model, folder)
        self.d, self.C = config.z_dim, config.channel_width

    @classmethod
    def standin(cls, folder, **kwargs):
        return cls(folder, *hf_standin(**kwargs))


@pytest.fixture(scope='module')
def hf128(tmp_path_factory):
    return Source.standin(str(tmp_path_factory.mktemp('hf') / 'biggan-deep-128'), seed=0)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return tmp_path_factory.mktemp('weights')


def convert(source, truncation, weights_root, name, *extra):
    """The checkpoint for source at truncation (through the CLI's entry), loaded as sample.py
    loads it."""
    convert_pretrained.main(['--hf_dir', source.folder, '--truncation', str(truncation),
                             '--weights_root', str(weights_root), '--experiment_name', name]
                            + list(extra))
    return load_as_sample(weights_root, name)[0]


def cli_error(argv, capsys):
    """(exit status, stderr lines) of convert_pretrained.py's command line on argv."""
    with pytest.raises(SystemExit) as info:
        convert_pretrained.main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def latents(config, truncation, n=4, seed=1):
    """z as HF's truncated_noise_sample draws it, and classes."""
    z = truncnorm.rvs(-2, 2, size=(n, config.z_dim), random_state=seed).astype(np.float32)
    return torch.from_numpy(z) * truncation, torch.arange(n) * 3 % config.num_classes


def hf_images(source, z, y, truncation):
    with torch.no_grad():
        return source.model(z, F.one_hot(y, source.config.num_classes).float(), truncation)


def our_images(G, z, y):
    with torch.no_grad():
        return G(z, G.shared(y))


def image_error(source, G, truncation, seed=1):
    z, y = latents(source.config, truncation, seed=seed)
    return (our_images(G, z, y) - hf_images(source, z, y, truncation)).abs().max().item()


def hf_noise(source, truncation, seed=1):
    """HF's own float32 error (against float64) on the stand-in: float32 noise any
    reimplementation meets, for failure messages."""
    z, y = latents(source.config, truncation, seed=seed)
    with torch.no_grad():
        exact = copy.deepcopy(source.model).double()(
            z.double(), F.one_hot(y, source.config.num_classes).double(), truncation)
    return (hf_images(source, z, y, truncation).double() - exact).abs().max().item()


def assert_exact(source, G, truncation):
    error = image_error(source, G, truncation)
    if error >= EXACT:  # HF's own float64 run only to explain a failure: it costs seconds
        noise = hf_noise(source, truncation)
        pytest.fail(f'max pixel error {error:.2e} (HF float32 vs float64 on this stand-in: '
                    f'{noise:.2e})')


# ----------------------------------------------------------------------------
# Images.

@pytest.mark.parametrize('truncation', TRUNCATIONS)
def test_images_equal_hf(hf128, weights, truncation):
    """On and between HF's grid of statistics: sample.py's G equals HF's eval-mode output."""
    G = convert(hf128, truncation, weights, f'deep128_t{truncation:g}')
    assert_exact(hf128, G, truncation)


@pytest.mark.parametrize('resolution, truncation, seed', [(256, 0.56, 0), (512, 0.123, 1)])
def test_other_sizes(tmp_path, resolution, truncation, seed):
    """deep-256 and deep-512 layouts (more blocks, attention index, 512's extra stage)."""
    # Batch 4: the stand-in's measuring passes cost half of batch 8's; at batch 2 its BN
    # statistics, from 32 positions in the first block, let activations grow until float32's
    # own error (7e-5 against float64 at 512 px) neared the bar.
    source = Source.standin(str(tmp_path / 'hf'), resolution=resolution, seed=seed, batch=4)
    G = convert(source, truncation, tmp_path / 'weights', 'deep')
    assert G.resolution == resolution
    assert_exact(source, G, truncation)


@pytest.mark.parametrize('change, attention', [
    ({'attention_layer_position': 6}, 32),    # after the 32px stage
    ({'attention_layer_position': 10}, 0),    # past the last layer: none
    ({'n_stats': 11}, 64),                    # a coarser grid of statistics
])
def test_config_family(tmp_path, change, attention):
    """Other attention positions and statistics grids of the same family convert exactly."""
    source = Source.standin(str(tmp_path / 'hf'), seed=3, **change)
    G = convert(source, 0.35, tmp_path / 'weights', 'family')
    assert G.attention == str(attention)
    assert_exact(source, G, 0.35)


def test_cli_writes_the_checkpoint_and_its_command_samples_it(hf128, tmp_path):
    """The command line as documented: three files, and the printed sample.py command runs."""
    weights_root = tmp_path / 'weights'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'convert_pretrained.py'),
                           '--hf_dir', hf128.folder, '--truncation', '0.4',
                           '--weights_root', str(weights_root), '--experiment_name', 'cli'],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(weights_root / 'cli')) == ['G.pth', 'G_ema.pth', 'state_dict.pth']
    command = [line for line in proc.stdout.splitlines() if 'sample.py' in line]
    assert len(command) == 1 and '--truncation 0.4' in command[0]
    args = command[0].split()
    args[args.index('sample.py')] = os.path.join(ROOT, 'sample.py')
    args[args.index('python')] = sys.executable
    proc = subprocess.run(args + ['--device', 'cpu'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(tmp_path / 'samples' / 'cli' / '-1' / 'samples0.jpg')
    saved = utils.torch_load(str(weights_root / 'cli' / 'state_dict.pth'))
    assert saved['config']['model'] == 'BigGANdeep' and saved['pretrained']['truncation'] == 0.4


def test_sample_py_draws_truncated_z_and_matches_hf(hf128, weights, tmp_path, monkeypatch):
    """The npz and the sheets sample.py makes use z = T x a truncated normal and equal HF's
    images; the npz records T; interpolation sheets are asked for with T."""
    truncation = 0.56
    convert(hf128, truncation, weights, 'sampled')
    calls = []
    run_G = utils.run_G

    def spy(G, z, y, parallel=False, embedded=False):
        out = run_G(G, z, y, parallel, embedded)
        calls.append((z.clone(), y.clone(), embedded, out.clone()))
        return out
    monkeypatch.setattr(utils, 'run_G', spy)
    interps = []
    monkeypatch.setattr(utils, 'interp_sheet', lambda *a, **k: interps.append(k))
    parser = utils.add_sample_parser(utils.prepare_parser())
    sample.run(vars(parser.parse_args([
        '--config_from_name', '--weights_root', str(weights), '--experiment_name', 'sampled',
        '--G_eval_mode', '--truncation', str(truncation), '--device', 'cpu',
        '--samples_root', str(tmp_path), '--batch_size', '4', '--sample_npz',
        '--sample_num_npz', '6', '--sample_sheets', '--sample_interps'])))
    assert calls
    zs = torch.cat([c[0].flatten() for c in calls])
    # Hundreds of draws: a normal of std T would leave [-2T, 2T] somewhere.
    assert zs.abs().max() <= 2 * truncation + 1e-6 and zs.std() > 0.8 * truncation
    for z, y, embedded, out in calls:
        if not embedded:
            assert (out - hf_images(hf128, z, y, truncation)).abs().max() < EXACT
    assert len(calls) == 2 + 10  # 2 npz batches, 10 sheet columns
    assert len(interps) == 3 and all(k['truncation'] == truncation for k in interps)
    with np.load(tmp_path / 'sampled' / 'samples.npz') as npz:
        assert npz['x'].shape == (6, 3, 128, 128) and float(npz['truncation']) == truncation


@pytest.mark.parametrize('truncation', [0.0, 0.3])
def test_sheets_draw_z_as_asked(make_config, monkeypatch, tmp_path, truncation):
    """utils.interp_sheet and sample_sheet's own draws follow the truncation (0: normal)."""
    import BigGAN
    G = BigGAN.Generator(**make_config()).eval()
    zs = []
    run_G = utils.run_G
    monkeypatch.setattr(utils, 'run_G', lambda G, z, *a, **k: zs.append(z) or run_G(G, z, *a, **k))
    torch.manual_seed(0)
    utils.interp_sheet(G, 4, 2, 10, False, str(tmp_path), 'x', 0, truncation=truncation)
    utils.sample_sheet(G, 10, 10, 2, False, str(tmp_path), 'x', 0, truncation=truncation)
    z = torch.cat([z.flatten() for z in zs])
    assert len(zs) == 3 and z.numel() == 4 * 4 * G.dim_z + 2 * 10 * G.dim_z
    if truncation:
        assert z.abs().max() <= 2 * truncation + 1e-6 and z.std() > 0.8 * truncation
    else:
        assert z.abs().max() > 2  # hundreds of normal draws reach past 2


def test_truncated_normal_is_scaled_and_truncated():
    """truncated_normal_ against scipy's truncated normal on [-2, 2], scaled by T."""
    from scipy.stats import kstest
    torch.manual_seed(0)
    z = utils.truncated_normal_(torch.empty(20000), 0.7).numpy()
    assert np.abs(z).max() <= 1.4 + 1e-6
    assert kstest(z / 0.7, truncnorm(-2, 2).cdf).pvalue > 0.01
    assert kstest(z, truncnorm(-2, 2).cdf).pvalue < 1e-6


# ----------------------------------------------------------------------------
# HF's level choice.

@pytest.mark.parametrize('truncation, level', [
    (0.4, 20), (1.0, 50), (0.14, 8), (0.28, 15), (0.56, 29), (0.58, 28), (0.94, 46)])
def test_hf_levels_on_the_grid(truncation, level):
    """The facts' cases: float rounding puts 0.14, 0.28, 0.56 a hair above the grid and
    0.58, 0.94 a hair below; the level that carries (almost) all the weight."""
    levels = convert_pretrained.hf_levels(truncation, 51)
    assert max(levels, key=lambda lw: lw[1])[0] == level
    assert sum(w for _, w in levels) == pytest.approx(1.0)


def test_hf_levels_between_the_grid():
    """0.123: s = 6, f = 0.15: 0.15 of level 6 and 0.85 of level 7 (not the other way)."""
    (s, f), (s1, g) = convert_pretrained.hf_levels(0.123, 51)
    assert (s, s1) == (6, 7) and f == pytest.approx(0.15) and g == pytest.approx(0.85)


# ----------------------------------------------------------------------------
# Every layer on its own, where float32 rounding is all that may differ.

def close(ours, theirs, rtol=1e-5):
    """Max difference within rtol of the largest value."""
    return (ours - theirs).abs().max().item() <= rtol * theirs.abs().max().item()


@pytest.fixture(scope='module')
def layer_case(hf128, weights):
    """The converted G at truncation 0.123 and the inputs both sides' layers take."""
    truncation = 0.123
    G = convert(hf128, truncation, weights, 'layers')
    torch.manual_seed(0)
    z, y = latents(hf128.config, truncation)
    emb = G.shared(y)
    return G, truncation, z, y, torch.cat([z, emb], 1), torch.cat([emb, z], 1)


def bn_input(bn, truncation):
    """Inputs spread as the BN's statistics say: (x - mean) / std of order 1."""
    level = convert_pretrained.level_stats
    mean = level(bn.running_means, truncation).view(1, -1, 1, 1)
    std = level(bn.running_vars, truncation).sqrt().view(1, -1, 1, 1)
    return mean + std * torch.randn(4, bn.num_features, 8, 8)


def test_every_layer_equals_hf(hf128, layer_case):
    """First linear, each GenBlock, each conditional BN, the attention, the output layer."""
    G, truncation, z, y, hf_cond, our_cond = layer_case
    hf_gen, C = hf128.model.generator, hf128.C
    position = hf128.config.attention_layer_position
    with torch.no_grad():
        theirs = hf_gen.gen_z(hf_cond).view(-1, 4, 4, 16 * C).permute(0, 3, 1, 2)
        assert close(G.linear(our_cond).view(-1, 16 * C, 4, 4), theirs)
        for j, blocks in enumerate(G.blocks):
            layer = hf_gen.layers[j + (j >= position)]
            x = torch.randn(4, layer.bn_0.num_features, 8, 8)
            assert close(blocks[0](x, our_cond), layer(x, hf_cond, truncation)), j
            for k in range(4):
                hf_bn = getattr(layer, f'bn_{k}')
                x = bn_input(hf_bn, truncation)
                assert close(getattr(blocks[0], f'bn{k + 1}')(x, our_cond),
                             hf_bn(x, truncation, hf_cond)), (j, k)
        attention = hf_gen.layers[position]
        x = torch.randn(2, attention.in_channels, 16, 16)
        assert close(G.blocks[position - 1][1](x), attention(x))
        x = bn_input(hf_gen.bn, truncation)
        theirs = hf_gen.conv_to_rgb(F.relu(hf_gen.bn(x, truncation)))[:, :3]
        assert close(G.output_layer(x), theirs)


def test_bn_eps_is_hfs(hf128, layer_case, weights):
    """BN eps: ccbn through --BN_eps, the output BN (eps fixed at 1e-5) folded into its
    variance. Guard: without either, the layers differ by far more than rounding."""
    G, truncation, z, y, hf_cond, our_cond = layer_case
    hf_gen = hf128.model.generator
    assert G.blocks[0][0].bn1.eps == hf128.config.eps
    naive, _ = load_as_sample(weights, 'layers')
    naive.blocks[0][0].bn1.eps = 1e-5  # --BN_eps left at its default
    naive.output_layer[0].stored_var -= hf128.config.eps - naive.output_layer[0].eps
    with torch.no_grad():
        x = bn_input(hf_gen.layers[0].bn_0, truncation)
        theirs = hf_gen.layers[0].bn_0(x, truncation, hf_cond)
        assert close(G.blocks[0][0].bn1(x, our_cond), theirs)
        assert not close(naive.blocks[0][0].bn1(x, our_cond), theirs, 1e-4)
        x = bn_input(hf_gen.bn, truncation)  # through the RGB conv: the BN's gain is scaled
        theirs = hf_gen.conv_to_rgb(F.relu(hf_gen.bn(x, truncation)))[:, :3]
        assert close(G.output_layer(x), theirs)
        assert not close(naive.output_layer(x), theirs, 1e-4)


# ----------------------------------------------------------------------------
# One guard per difference: its naive handling (built from HF's state dict) fails visibly.

def hf_name(key, position=8):
    """HF's module for one of our SN modules (blocks.j.0.convK, ...)."""
    fixed = {'linear': 'generator.gen_z', 'output_layer.2': 'generator.conv_to_rgb'}
    if key in fixed:
        return fixed[key]
    j, rest = re.match(r'blocks\.(\d+)\.(.*)', key).groups()
    j = int(j)
    if rest.startswith('1.'):
        conv = {'o': 'o_conv'}.get(rest[2:], rest[2:])
        return f'generator.layers.{position}.snconv1x1_{conv}'
    n = j + (j >= position)
    bn = re.match(r'0\.bn(\d)\.(gain|bias)', rest)
    if bn:
        kind = {'gain': 'scale', 'bias': 'offset'}[bn.group(2)]
        return f'generator.layers.{n}.bn_{int(bn.group(1)) - 1}.{kind}'
    return f'generator.layers.{n}.conv_{int(rest[-1]) - 1}'


def hwc_rows(t, C):
    """Our (c, h, w) rows in HF's (h, w, c) order."""
    return t.reshape(16 * C, 16, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def naive_zy(sd, source, truncation):
    for k in sd:
        if k == 'linear.weight' or re.fullmatch(r'blocks\.\d+\.0\.bn\d\.(gain|bias)\.weight', k):
            sd[k] = convert_pretrained.swap_halves(sd[k], source.d)


def naive_sn(sd, source, truncation):
    for k in [k[:-3] for k in sd if k.endswith('.u0')]:
        u = source.state[hf_name(k) + '.weight_u']
        u = hwc_rows(u, source.C) if k == 'linear' else u[:3] if k == 'output_layer.2' else u
        sd[k + '.u0'] = u.reshape(1, -1)


def naive_rgb(sd, source, truncation):
    sd['output_layer.2.u0'] = source.state['generator.conv_to_rgb.weight_u'][:3].reshape(1, -1)
    sd['output_layer.0.gain'] = source.state['generator.bn.weight'].clone()
    sd['output_layer.0.bias'] = source.state['generator.bn.bias'].clone()


def naive_rows(sd, source, truncation):
    for k in ('linear.weight', 'linear.bias'):
        sd[k] = hwc_rows(sd[k], source.C)
    sd['linear.u0'] = hwc_rows(sd['linear.u0'].t(), source.C).t()


def naive_levels(sd, source, truncation):
    """Plain linear interpolation, (1 - f) of level s and f of level s + 1."""
    coef, start = np.modf(truncation * 50)
    start = int(start)
    for k in [k for k in sd if k.endswith('stored_mean') or k.endswith('stored_var')]:
        key = (hf_name(k.rsplit('.', 1)[0] + '.gain').rsplit('.', 1)[0]
               if k.startswith('blocks') else 'generator.bn')
        stats = source.state[key + ('.running_means' if 'mean' in k else '.running_vars')]
        value = (1 - coef) * stats[start] + coef * stats[min(start + 1, 50)]
        if k == 'output_layer.0.stored_var':
            value = value + source.config.eps - 1e-5
        sd[k] = value


@pytest.mark.parametrize('difference', [naive_zy, naive_sn, naive_rgb, naive_rows, naive_levels],
                         ids=['z_class_order', 'sn_eval_rule', 'rgb_3_of_C', 'first_linear_rows',
                              'truncation_levels'])
def test_each_difference_is_absorbed(hf128, weights, difference):
    """The conversion is exact, and handling this difference naively is not."""
    truncation = 0.123
    G, _ = load_as_sample(weights, f'deep128_t{truncation:g}')
    assert_exact(hf128, G, truncation)
    sd = G.state_dict()
    difference(sd, hf128, truncation)
    G.load_state_dict(sd)
    assert image_error(hf128, G, truncation) > 1e-2


# ----------------------------------------------------------------------------
# The baked alternative, and files the SN rule cannot serve.

def test_plain_conversion_is_exact_too(hf128, weights):
    """--G_param plain: weights divided by HF's sigma once; no u0/sv0 entries."""
    G = convert(hf128, 0.4, weights, 'plain', '--G_param', 'plain')
    assert not any(k.endswith('.u0') or k.endswith('.sv0') for k in G.state_dict())
    assert_exact(hf128, G, 0.4)


def test_vectors_that_break_the_sn_rule_are_refused(hf128, tmp_path, capsys):
    """u != normalize(W v): our SN cannot reproduce HF's sigma u . (W v), so the conversion
    stops with one line naming --G_param plain, which is exact."""
    state = dict(hf128.state)
    torch.manual_seed(0)
    for k in [k for k in state if k.endswith('weight_u')]:
        state[k] = F.normalize(state[k] + 0.3 * F.normalize(torch.randn(state[k].shape), dim=0),
                               dim=0)
    model = import_hf().BigGAN(hf128.config)
    model.load_state_dict(state)
    source = Source(str(tmp_path / 'hf'), hf128.config, model)
    status, lines = cli_error(['--hf_dir', source.folder, '--truncation', '0.4',
                               '--weights_root', str(tmp_path / 'w')], capsys)
    assert status == 2 and len(lines) == 1 and '--G_param plain' in lines[0]
    assert not os.path.exists(tmp_path / 'w')
    G = convert(source, 0.4, tmp_path / 'w', 'plain', '--G_param', 'plain')
    assert_exact(source, G, 0.4)


@pytest.mark.parametrize('args, message', [
    (['--truncation', '0.5'], 'config.json is missing'),
    (['--truncation', '1.5', '--HF'], 'must lie in (0, 1]'),
    (['--truncation', '0', '--HF'], 'must lie in (0, 1]'),
    (['--HF'], 'needs --truncation'),
    (['--truncation', '0.5', '--BADLAYERS'], 'not a BigGAN-deep layout'),
])
def test_bad_input_gets_one_line(hf128, tmp_path, capsys, args, message):
    folder = str(tmp_path / 'empty')
    if '--BADLAYERS' in args:
        folder = save_hf(hf128.config, hf128.model, folder)
        with open(os.path.join(folder, 'config.json')) as f:
            config = json.load(f)
        config['layers'][3][2] = 4  # 16 -> 4 channels: no stage of ours does that
        with open(os.path.join(folder, 'config.json'), 'w') as f:
            json.dump(config, f)
    elif '--HF' in args:
        folder = hf128.folder
    args = [a for a in args if a not in ('--HF', '--BADLAYERS')]
    status, lines = cli_error(['--hf_dir', folder, '--weights_root', str(tmp_path / 'w')] + args,
                              capsys)
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
    assert not os.path.exists(tmp_path / 'w')


def test_official_deep128_builds_the_releases_G():
    """HF's deep-128 config gives BigGANdeep with the release's I128_deep state-dict keys and
    shapes (HF's parameters less the 125 RGB channels it drops)."""
    with open(os.path.join(FIXTURES, 'I128_deep.json')) as f:
        reference = json.load(f)
    cfg = dict(convert_pretrained.HF_DEFAULTS)
    _, G = convert_pretrained.build_config(convert_pretrained.hf_flags(
        cfg, convert_pretrained.hf_arch(cfg), 'SN'))
    assert {k: list(v.shape) for k, v in G.state_dict().items()} == reference['G_state_dict']
    assert sum(p.numel() for p in G.parameters()) == 50388609 - 125 * 128 * 9 - 125


def test_hf_layer_tables_are_hfs():
    """conftest's layer tables are HF's (its convert script's 128/256/512 configs)."""
    hf = import_hf()
    from pytorch_pretrained_biggan import convert_tf_to_pytorch as tf2pt
    for resolution, config in ((128, tf2pt.BigGAN128), (256, tf2pt.BigGAN256),
                               (512, tf2pt.BigGAN512)):
        assert [list(layer) for layer in config.layers] == HF_LAYERS[resolution]
        assert convert_pretrained.hf_arch({**convert_pretrained.HF_DEFAULTS,
                                           **config.to_dict()}) == (resolution, 2, 64)
    assert hf.BigGANConfig().to_dict() == {
        k: [tuple(x) for x in v] if k == 'layers' else v
        for k, v in convert_pretrained.HF_DEFAULTS.items()}
