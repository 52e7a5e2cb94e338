"""DiffAugment, CR and LeCam as the data-efficient forks define them (facts:
shared/reference/data_efficient.md): the augmentations against hand-computed and loop-computed
results, the regulariser and its anchors against their formulas, the step wiring, the data
flags, the forks' launch scripts, and bit-exact resume with --LC."""
import csv
import os
import shlex
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import BigGAN
import checkpoints
import datasets
import DiffAugment_pytorch as DA
import losses
import train
import train_fns
import utils
from helpers import FIXTURES, ROOT, assert_same, run_flags, tiny_config

# ----------------------------------------------------------------------------
# Reference implementations: plain loops over pixels, from the facts' definitions.


def ref_translation(x, tx, ty):
    """out[n, :, i, j] = x[n, :, i + tx, j + ty] inside the image, else 0."""
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                si, sj = i + int(tx[b]), j + int(ty[b])
                if 0 <= si < h and 0 <= sj < w:
                    out[b, :, i, j] = x[b, :, si, sj]
    return out


def ref_cutout(x, ox, oy, size_h, size_w):
    """Zero rows ox - size_h//2 .. + size_h - 1 x cols oy - size_w//2 .. + size_w - 1."""
    out = x.clone()
    n, _, h, w = x.shape
    for b in range(n):
        top, left = int(ox[b]) - size_h // 2, int(oy[b]) - size_w // 2
        for i in range(max(top, 0), min(top + size_h, h)):
            for j in range(max(left, 0), min(left + size_w, w)):
                out[b, :, i, j] = 0
    return out


def images(n=3, c=3, h=8, w=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, generator=g) * 2 - 1).to(dtype)


def fixed_randint(monkeypatch, values):
    """Make torch.randint return the given tensors in turn (recording its arguments)."""
    calls, it = [], iter(values)

    def fake(low, high, size, device=None, **kwargs):
        calls.append((low, high, list(size)))
        return torch.as_tensor(next(it)).view(size)
    monkeypatch.setattr(torch, 'randint', fake)
    return calls


# ----------------------------------------------------------------------------
# DiffAugment.

def test_empty_policy_is_the_input_and_draws_nothing():
    x = images()
    state = torch.get_rng_state()
    for policy in ['', None, False]:
        assert DA.DiffAugment(x, policy) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_translation_by_hand(monkeypatch):
    """4x4 image, shift 1 (int(4 * 0.125 + 0.5)): tx moves rows, ty columns; zeros fill."""
    x = torch.arange(1., 17.).view(1, 1, 4, 4)
    calls = fixed_randint(monkeypatch, [[1], [-1]])
    out = DA.rand_translation(x)
    assert calls == [(-1, 2, [1, 1, 1]), (-1, 2, [1, 1, 1])]
    # Output (i, j) reads input (i + 1, j - 1).
    assert out.tolist() == [[[[0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15], [0, 0, 0, 0]]]]


def test_cutout_by_hand(monkeypatch):
    """4x4 image, square side 2 (even: centre 0..4): the square may hang off the edge."""
    x = torch.arange(1., 17.).view(1, 1, 4, 4).repeat(3, 2, 1, 1)
    calls = fixed_randint(monkeypatch, [[0, 4, 2], [3, 0, 2]])
    out = DA.rand_cutout(x)
    assert calls == [(0, 5, [3, 1, 1]), (0, 5, [3, 1, 1])]
    ones = torch.ones(4, 4)
    expect = [ones.clone(), ones.clone(), ones.clone()]
    expect[0][0, 2:4] = 0   # rows -1..0, cols 2..3
    expect[1][3, 0] = 0     # rows 3..4, cols -1..0
    expect[2][1:3, 1:3] = 0  # rows 1..2, cols 1..2
    for b in range(3):
        assert torch.equal(out[b], x[b] * expect[b]), b
    # An odd side (6px -> 3) centres on 0..H-1.
    calls = fixed_randint(monkeypatch, [[5], [0]])
    out = DA.rand_cutout(torch.ones(1, 1, 6, 6))
    assert calls == [(0, 6, [1, 1, 1]), (0, 6, [1, 1, 1])]
    assert out[0, 0].sum() == 36 - 4 and out[0, 0, 4:6, 0:2].sum() == 0


@pytest.mark.parametrize('shape', [(5, 3, 32, 32), (4, 2, 7, 9), (3, 3, 1, 2)])
def test_translation_and_cutout_match_loops_in_draw_order(shape):
    """'translation,cutout' equals the loop references fed the draws the facts list: tx, ty
    (randint(-s, s+1), s = int(0.125 * size + 0.5)), then ox, oy (randint(0, size + 1 -
    side % 2), side = int(0.5 * size + 0.5)), each (N, 1, 1)."""
    n, _, h, w = shape
    x = images(*shape)
    for seed in range(4):
        torch.manual_seed(seed)
        out = DA.DiffAugment(x, 'translation,cutout')
        torch.manual_seed(seed)
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        tx = torch.randint(-sh, sh + 1, (n, 1, 1))
        ty = torch.randint(-sw, sw + 1, (n, 1, 1))
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        ox = torch.randint(0, h + 1 - ch % 2, (n, 1, 1))
        oy = torch.randint(0, w + 1 - cw % 2, (n, 1, 1))
        expect = ref_cutout(ref_translation(x, tx.flatten(), ty.flatten()),
                            ox.flatten(), oy.flatten(), ch, cw)
        assert torch.equal(out, expect), seed
        assert out.is_contiguous()


def test_translation_range_is_uniform_over_shifts():
    """32px: shifts of -4..4 pixels, each seen, on both axes independently."""
    x = torch.zeros(400, 1, 32, 32)
    x[:, :, 16, 16] = 1  # one lit pixel; its new position gives the shift
    torch.manual_seed(0)
    out = DA.rand_translation(x)
    pos = out.view(400, -1).argmax(1)
    di, dj = 16 - pos // 32, 16 - pos % 32
    assert set(di.tolist()) == set(range(-4, 5)) and set(dj.tolist()) == set(range(-4, 5))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_color_ops_match_their_formulas(dtype):
    """brightness x + (u - 0.5); saturation (x - m_c)(2u) + m_c; contrast (x - m)(u + 0.5) + m,
    with m_c the per-pixel channel mean, m the per-image mean, u one draw per sample in x's
    dtype, drawn just before each op; computed here in float64."""
    x = images(4, 3, 5, 6, dtype=dtype)
    torch.manual_seed(7)
    out = DA.DiffAugment(x, 'color')
    torch.manual_seed(7)
    u = [torch.rand(4, 1, 1, 1, dtype=dtype).double() for _ in range(3)]
    y = x.double() + (u[0] - 0.5)
    m = y.mean(1, keepdim=True)
    y = (y - m) * (u[1] * 2) + m
    m = y.mean([1, 2, 3], keepdim=True)
    y = (y - m) * (u[2] + 0.5) + m
    assert out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), y, rtol=tol, atol=tol)


def test_channels_last_argument_and_input_untouched():
    """channels_first=False permutes in and out; the input is never written to."""
    x = images(3, 3, 8, 8)
    keep, version = x.clone(), x._version
    for policy in ['translation,cutout', 'color,translation,cutout']:
        torch.manual_seed(1)
        a = DA.DiffAugment(x, policy)
        torch.manual_seed(1)
        b = DA.DiffAugment(x.permute(0, 2, 3, 1).contiguous(), policy, channels_first=False)
        assert b.is_contiguous() and b.shape == (3, 8, 8, 3)
        # Colour means are reduced in another memory order: equal up to rounding.
        torch.testing.assert_close(b, a.permute(0, 2, 3, 1), rtol=0,
                                   atol=0 if policy.startswith('t') else 1e-6)
    assert torch.equal(x, keep) and x._version == version


def test_gradients_reach_the_input():
    """d(sum of the output)/dx: 1 where a pixel lands inside the image and outside the
    cutout square, else 0 (translation is a permutation with zero fill)."""
    x = images(6, 2, 8, 8).requires_grad_()
    torch.manual_seed(3)
    DA.DiffAugment(x, 'translation,cutout').sum().backward()
    torch.manual_seed(3)
    marker = torch.arange(1., 6 * 2 * 64 + 1).view(6, 2, 8, 8)  # every pixel distinct
    moved = DA.DiffAugment(marker, 'translation,cutout')
    expect = torch.zeros_like(marker).view(-1)
    expect[(moved[moved > 0] - 1).long()] = 1
    assert torch.equal(x.grad, expect.view_as(x))


def test_unknown_policy_names():
    """A KeyError as in the fork, with a one-line message; checked before any draw."""
    state = torch.get_rng_state()
    for bad in ['colour', 'translation,', 'translation, cutout', 'flip']:
        with pytest.raises(KeyError) as info:
            DA.DiffAugment(images(), bad)
        assert '\n' not in str(info.value) and 'translation,cutout' in str(info.value)
    with pytest.raises(KeyError):
        DA.DiffAugment(images(), 'translation,cutout,colour')
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.slow
@pytest.mark.parametrize('flags, message', [
    (['--DiffAugment', 'translation,cutuot'], "unknown DiffAugment policy name 'cutuot'"),
    (['--CR', '10', '--CR_augment', 'flip'], "flip goes first"),
    (['--CR_augment', 'translation,flip,cutout'], "flip goes first"),
    (['--CR_augment', 'flip,rotate'], "unknown DiffAugment policy name 'rotate'"),
    (['--LC', '-1'], '--LC must be >= 0'),
    (['--num_samples', '0'], '--num_samples must be >= 1'),
])
def test_bad_flags_are_one_line_errors_at_start(flags, message, tmp_path, capsys):
    """train.py refuses them before building anything: one stderr line, exit status 2."""
    argv = ['--dataset', 'S32', '--data_root', str(tmp_path / 'none'),
            '--weights_root', str(tmp_path / 'w')] + flags
    with pytest.raises(SystemExit) as info:
        utils.run_cli(train.run, utils.prepare_parser(), argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and message in err and '\n' not in err
    assert not os.path.exists(tmp_path / 'w') and not os.path.exists(tmp_path / 'none')


def test_flags_have_the_forks_types_and_defaults():
    args = vars(utils.prepare_parser().parse_args([]))
    assert {k: args[k] for k in ['DiffAugment', 'CR', 'CR_augment', 'num_samples',
                                 'mirror_augment', 'LC', 'LC_ema_decay', 'LC_start']} == {
        'DiffAugment': '', 'CR': 0, 'CR_augment': 'flip,translation', 'num_samples': None,
        'mirror_augment': False, 'LC': 0, 'LC_ema_decay': 0.9, 'LC_start': 1000}
    parsed = utils.prepare_parser().parse_args(['--CR', '10', '--LC', '0.3', '--num_samples',
                                                '5000', '--LC_start', '7'])
    assert (parsed.CR, parsed.LC, parsed.num_samples, parsed.LC_start) == (10.0, 0.3, 5000, 7)
    assert utils.prepare_parser().parse_args(['--mirror_augment']).augment is False


# ----------------------------------------------------------------------------
# LeCam.

def test_lecam_reg_matches_the_formula():
    """mean(relu(D_real - a_F)^2) + mean(relu(a_R - D_fake)^2), over each batch alone."""
    g = torch.Generator().manual_seed(0)
    D_real, D_fake = torch.randn(7, 1, generator=g), torch.randn(5, 1, generator=g)
    anchors = utils.ema_losses()
    anchors.D_real, anchors.D_fake = 0.3, -0.2
    direct = (sum(max(r - (-0.2), 0.0) ** 2 for r in D_real.flatten().tolist()) / 7
              + sum(max(0.3 - f, 0.0) ** 2 for f in D_fake.flatten().tolist()) / 5)
    assert abs(float(losses.lecam_reg(D_real, D_fake, anchors)) - direct) < 1e-6
    # One-sided: reals below the fakes' anchor and fakes above the reals' anchor cost nothing.
    assert float(losses.lecam_reg(torch.full((3, 1), -0.5), torch.full((3, 1), 0.5),
                                  anchors)) == 0.0
    D_real.requires_grad_()
    losses.lecam_reg(D_real, D_fake, anchors).backward()
    expect = [2 * max(r + 0.2, 0.0) / 7 for r in D_real.detach().flatten().tolist()]
    torch.testing.assert_close(D_real.grad.flatten(), torch.tensor(expect))


def test_ema_losses_sequence():
    """Anchors start at 1000; before start_itr each update replaces the value, from it on
    value <- 0.9 value + 0.1 cur."""
    ema = utils.ema_losses(start_itr=2)
    assert all(getattr(ema, k) == 1000.0 for k in utils.ema_losses.KEYS)
    assert (ema.decay, utils.ema_losses().start_itr) == (0.9, 0)
    seq = [(4.0, 0), (2.0, 1), (1.0, 2), (3.0, 3), (0.5, 3)]
    expect = [4.0, 2.0, 0.9 * 2.0 + 0.1 * 1.0]
    expect += [0.9 * expect[-1] + 0.1 * 3.0]
    expect += [0.9 * expect[-1] + 0.1 * 0.5]
    for (cur, itr), value in zip(seq, expect):
        ema.update(cur, 'D_real', itr)
        assert abs(ema.D_real - value) < 1e-12
    assert ema.D_fake == 1000.0
    assert utils.ema_losses(decay=0.5).decay == 0.5
    with pytest.raises(ValueError):
        ema.update(1.0, 'D_rael', 5)
    other = utils.ema_losses()
    other.load_state_dict(ema.state_dict())
    assert other.state_dict() == ema.state_dict() and checkpoints.is_plain(ema.state_dict())


def test_hinge_loss_tracks_fakes_then_reals():
    calls = []

    class Recorder:
        def update(self, cur, mode, itr):
            calls.append((mode, round(cur, 6), itr))
    D_fake, D_real = torch.tensor([[1.], [2.]]), torch.tensor([[-3.], [5.]])
    out = losses.loss_hinge_dis(D_fake, D_real, Recorder(), 9)
    assert calls == [('D_fake', 1.5, 9), ('D_real', 1.0, 9)]
    assert [float(v) for v in out] == [(4 + 0) / 2, (2 + 3) / 2]
    assert [float(v) for v in losses.loss_hinge_dis(D_fake, D_real)] == [2.0, 2.5]


# ----------------------------------------------------------------------------
# G_D: what D sees.

class FakeG(nn.Module):
    """G returning fixed images (times a weight, so gradients can reach it)."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.scale = nn.Parameter(torch.ones(()))
        self.shared = nn.Identity()

    def forward(self, z, y):
        return self.out[:len(z)] * self.scale


class FakeD(nn.Module):
    """D recording its inputs; scores each image by its mean."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, y):
        self.seen.append((x, y))
        return x.mean([1, 2, 3])[:, None]


def fake_step_inputs(n=4):
    g = torch.Generator().manual_seed(11)
    return (torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, torch.randn(n, 2, generator=g),
            torch.arange(n), torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, torch.arange(n) + 10)


@pytest.mark.parametrize('split_D', [False, True], ids=['concat', 'split_D'])
def test_G_D_augments_fakes_then_reals_in_one_call(split_D):
    """D step: one DiffAugment call on cat(fakes, reals); --split_D only splits the D pass
    after it, so D sees the same augmented images."""
    G_z, z, gy, x, dy = fake_step_inputs()
    D = FakeD()
    GD = BigGAN.G_D(FakeG(G_z), D)
    torch.manual_seed(5)
    D_fake, D_real = GD(z, gy, x, dy, split_D=split_D, policy='translation,cutout')
    torch.manual_seed(5)
    expect = DA.DiffAugment(torch.cat([G_z, x]), 'translation,cutout')
    seen = torch.cat([s[0] for s in D.seen])
    assert torch.equal(seen, expect) and len(D.seen) == (2 if split_D else 1)
    assert torch.equal(torch.cat([s[1] for s in D.seen]), torch.cat([gy, dy]))
    assert torch.equal(torch.cat([D_fake, D_real]), expect.mean([1, 2, 3])[:, None])


def test_G_D_G_step_augments_fakes_with_gradient_into_G():
    G_z, z, gy, _, _ = fake_step_inputs()
    G, D = FakeG(G_z), FakeD()
    torch.manual_seed(2)
    out, returned = BigGAN.G_D(G, D)(z, gy, train_G=True, return_G_z=True, policy='cutout')
    torch.manual_seed(2)
    expect = DA.DiffAugment(G_z, 'cutout')
    assert torch.equal(D.seen[0][0], expect) and torch.equal(returned, G_z)
    out.sum().backward()
    # d/d scale of sum(mean(G_z * scale * mask)) = sum(mean(G_z * mask)).
    torch.testing.assert_close(G.scale.grad, expect.mean([1, 2, 3]).sum())


def test_G_D_reals_only():
    """z None: D on the (augmented) reals alone, as the fork's test() calls it."""
    _, _, _, x, dy = fake_step_inputs()
    D = FakeD()
    torch.manual_seed(4)
    out = BigGAN.G_D(FakeG(x), D)(None, None, x=x, dy=dy, policy='translation')
    torch.manual_seed(4)
    assert torch.equal(D.seen[0][0], DA.DiffAugment(x, 'translation'))
    assert out.shape == (4, 1)


@pytest.mark.parametrize('CR_augment', ['flip,translation', 'translation', ''])
def test_G_D_consistency_reals(CR_augment):
    """CR: the augmented reals, h-flipped per sample (randint(0, 2), drawn after the
    DiffAugment draws) if 'flip,' leads, then DiffAugment'ed with the rest, appended; '' appends
    the plain reals."""
    G_z, z, gy, x, dy = fake_step_inputs()
    D = FakeD()
    torch.manual_seed(8)
    outs = BigGAN.G_D(FakeG(G_z), D)(z, gy, x, dy, policy='cutout', CR=True,
                                     CR_augment=CR_augment)
    torch.manual_seed(8)
    aug = DA.DiffAugment(torch.cat([G_z, x]), 'cutout')
    reals = aug[4:]
    if CR_augment.startswith('flip,'):
        flip = torch.randint(0, 2, (4,)).tolist()
        reals = torch.stack([r.flip(2) if f else r for r, f in zip(reals, flip)])
    rest = CR_augment.replace('flip,', '')
    cr = DA.DiffAugment(reals, rest) if CR_augment else x
    assert torch.equal(D.seen[0][0], torch.cat([aug, cr]))
    assert torch.equal(D.seen[0][1], torch.cat([gy, dy, dy]))
    assert [len(o) for o in outs] == [4, 4, 4]


def test_G_D_keeps_channels_last():
    """Under --channels_last D gets channels_last images after the augmentation too."""
    G_z, z, gy, x, dy = fake_step_inputs()
    cl = torch.channels_last
    D = FakeD()
    GD = BigGAN.G_D(FakeG(G_z.contiguous(memory_format=cl)), D)
    torch.manual_seed(1)
    GD(z, gy, x.contiguous(memory_format=cl), dy, policy='translation,cutout')
    torch.manual_seed(1)
    expect = DA.DiffAugment(torch.cat([G_z, x]), 'translation,cutout')
    assert D.seen[0][0].is_contiguous(memory_format=cl) and torch.equal(D.seen[0][0], expect)


# ----------------------------------------------------------------------------
# The training step.

def build(config, seed=0):
    torch.manual_seed(seed)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    return G, D, BigGAN.G_D(G, D)


def test_step_wiring_with_accumulations(monkeypatch):
    """Per D accumulation one augmentation of (fakes, real chunk `counter`), in order; per G
    accumulation one of the fakes alone, carrying gradient; D gets what it returns."""
    config = tiny_config('--num_D_steps', '2', '--num_D_accumulations', '2',
                         '--num_G_accumulations', '2', '--DiffAugment', 'translation')
    G, D, GD = build(config)
    calls, d_inputs = [], []

    def recorder(images, policy='', channels_first=True):
        calls.append((images.detach().clone(), images.requires_grad, policy))
        return images.flip(-1) * 0.5  # a marker transform

    monkeypatch.setattr(BigGAN, 'DiffAugment', recorder)
    d_forward = D.forward
    monkeypatch.setattr(D, 'forward', lambda x, y: d_inputs.append(x.detach().clone())
                        or d_forward(x, y))
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    X = torch.rand(16, 3, 32, 32) * 2 - 1
    Y = torch.randint(0, 10, (16,))
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config)
    train(X, Y)
    assert len(calls) == 6 and all(c[2] == 'translation' for c in calls)
    for i, (imgs, grad, _) in enumerate(calls[:4]):
        assert imgs.shape[0] == 8 and not grad
        assert torch.equal(imgs[4:], X[4 * i:4 * (i + 1)])  # reals after the fakes
        assert not torch.equal(imgs[:4], imgs[4:])
        assert torch.equal(d_inputs[i], imgs.flip(-1) * 0.5)
    for imgs, grad, _ in calls[4:]:
        assert imgs.shape[0] == 4 and grad  # G's fakes, with gradient into G


def test_step_without_policy_is_unchanged(monkeypatch):
    """--DiffAugment '' makes no augmentation call and draws nothing more."""
    config = tiny_config('--num_D_steps', '1')
    called = []
    monkeypatch.setattr(BigGAN, 'DiffAugment', lambda *a, **k: called.append(1))
    G, D, GD = build(config)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config)(
        torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert called == []


def test_diffaugment_changes_both_steps_gradients():
    """Same seed, with and without the policy: D's and G's gradients both differ."""
    grads = []
    for policy in [[], ['--DiffAugment', 'translation,cutout']]:
        config = tiny_config('--num_D_steps', '1', *policy)
        G, D, GD = build(config)
        z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
        steps = {}
        for name, net in [('G', G), ('D', D)]:
            step = net.optim.step

            def wrapped(*a, _step=step, _net=net, _name=name, _steps=steps, **k):
                _steps[_name] = [p.grad.clone() for p in _net.parameters() if p.grad is not None]
                return _step(*a, **k)
            net.optim.step = wrapped
        torch.manual_seed(3)
        train = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config)
        train(torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (4,)))
        grads.append(steps)
    for name in ['G', 'D']:
        assert any(not torch.equal(a, b) for a, b in zip(grads[0][name], grads[1][name])), name


def lc_step(itr, lc='0.3', start='2', prev=None):
    """One D step + G step with --LC on fixed inputs; returns (metrics, state_dict, D_fake,
    D_real as D scored them, D's gradient)."""
    config = tiny_config('--num_D_steps', '1', '--LC', lc, '--LC_start', start)
    G, D, GD = build(config)
    G.eval()
    D.eval()
    scores = []

    class Scoring(nn.Module):
        def forward(self, *args, **kwargs):
            out = GD(*args, **kwargs)
            if not kwargs.get('train_G'):
                scores.append([o.detach().clone() for o in out])
            return out
    g = torch.Generator().manual_seed(1)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    z_.sample_ = lambda: z_.copy_(torch.randn(4, G.dim_z, generator=g))
    state = {'itr': itr}
    if prev is not None:
        state['ema_losses'] = dict(prev)
    grads = []
    step = D.optim.step
    D.optim.step = lambda *a, **k: grads.append([p.grad.clone() for p in D.parameters()]) \
        or step(*a, **k)
    train = train_fns.GAN_training_function(G, D, Scoring(), z_, y_, None, state, config)
    torch.manual_seed(0)
    out = train(torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (4,)))
    return out, state, scores[0][0], scores[0][1], grads[0]


def test_lecam_in_the_step():
    """The anchors take in mean(D_fake) then mean(D_real) first, then R is computed with them
    and added, times --LC, to D's loss only once itr > --LC_start."""
    prev = {'G_loss': 5.0, 'D_loss_real': 1000.0, 'D_loss_fake': 1000.0, 'D_real': 0.7,
            'D_fake': -0.4}
    out, state, D_fake, D_real, grad = lc_step(3, prev=prev)
    a_F = 0.9 * prev['D_fake'] + 0.1 * float(D_fake.mean())
    a_R = 0.9 * prev['D_real'] + 0.1 * float(D_real.mean())
    assert abs(state['ema_losses']['D_fake'] - a_F) < 1e-6
    assert abs(state['ema_losses']['D_real'] - a_R) < 1e-6
    R = (torch.relu(D_real - a_F) ** 2).mean() + (torch.relu(a_R - D_fake) ** 2).mean()
    assert float(R) > 0 and abs(out['D_loss_LC'] / (0.3 * float(R)) - 1) < 1e-6
    # G's loss average: 0.9 * 5 + 0.1 * G_loss.
    assert abs(state['ema_losses']['G_loss'] - (4.5 + 0.1 * out['G_loss'])) < 1e-6
    # D's gradient: that of the hinge loss plus 0.3 R; at itr == LC_start R is not added.
    _, _, _, _, plain = lc_step(3, lc='0')
    _, state2, _, _, at_start = lc_step(2, prev=prev)
    assert all(torch.equal(a, b) for a, b in zip(at_start, plain))
    assert state2['ema_losses']['D_fake'] != prev['D_fake']  # anchors still tracked
    assert any(not torch.equal(a, b) for a, b in zip(grad, plain))


def test_lecam_anchors_before_start_are_the_last_batch():
    out, state, D_fake, D_real, _ = lc_step(1, start='5')
    assert out['D_loss_LC'] == 0.0
    assert abs(state['ema_losses']['D_fake'] - float(D_fake.mean())) < 1e-6
    assert abs(state['ema_losses']['D_real'] - float(D_real.mean())) < 1e-6


def test_lecam_anchors_average_over_ranks(monkeypatch):
    """Under DDP the anchors take in the mean over every rank's batch (all-reduced), so every
    rank holds what one process would. Here a stand-in second rank reports (1.0, -3.0)."""
    ema = utils.ema_losses(start_itr=10)
    monkeypatch.setattr(train_fns, 'get_world_size', lambda: 2)

    def all_reduce(t):
        t += torch.tensor([1.0, -3.0])
    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    train_fns.track_outputs(ema, torch.tensor([[2.0], [4.0]]), torch.tensor([[1.0], [0.0]]), 1)
    assert (ema.D_fake, ema.D_real) == ((3.0 + 1.0) / 2, (0.5 - 3.0) / 2)


def test_consistency_regularisation_in_the_step():
    """--CR w: D_loss_CR = w * mean((D(real_CR) - D(real_aug))^2), reported and added."""
    config = tiny_config('--num_D_steps', '1', '--CR', '10', '--CR_augment', '',
                         '--DiffAugment', 'translation')
    G, D, GD = build(config)
    seen = []

    class Scoring(nn.Module):
        def forward(self, *args, **kwargs):
            out = GD(*args, **kwargs)
            if not kwargs.get('train_G'):
                seen.append([o.detach() for o in out])
            return out
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    out = train_fns.GAN_training_function(G, D, Scoring(), z_, y_, None, {'itr': 1}, config)(
        torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    D_fake, D_real, D_cr = seen[0]
    assert abs(out['D_loss_CR'] - 10 * float(((D_cr - D_real) ** 2).mean())) < 1e-5
    assert out['D_loss_CR'] > 0


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_step_under_amp_with_augmentation(amp):
    config = tiny_config('--num_D_steps', '1', '--amp', amp, '--DiffAugment',
                         'color,translation,cutout', '--LC', '0.3', '--LC_start', '0')
    G, D, GD = build(config)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    out = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config)(
        torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (4,)))
    assert all(np.isfinite(v) for v in out.values())
    assert all(p.dtype == torch.float32 for p in G.parameters())


# ----------------------------------------------------------------------------
# Data: --num_samples and --mirror_augment.

def test_subset_is_the_forks_choice():
    """np.random.seed(seed); np.random.choice(n, k, replace=False), in the order drawn."""
    np.random.seed(3)
    expect = np.random.choice(500, 50, replace=False)
    np.random.seed(99)  # the global generator is left alone
    state = np.random.get_state()[1].copy()
    assert np.array_equal(datasets.subset_indices(500, 50, 3), expect)
    assert np.array_equal(np.random.get_state()[1], state)
    with pytest.raises(datasets.DatasetError, match='at most 500'):
        datasets.subset_indices(500, 501)


def make_folder(root, n=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        os.makedirs(os.path.join(root, f'c{i % 3}'), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            os.path.join(root, f'c{i % 3}', f'{i}.png'))


def make_h5(path, n=12):
    rng = np.random.default_rng(1)
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        f.create_dataset('labels', data=np.arange(n) % 3)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['S32', 'ImageFolder', 'HDF5'])
def test_num_samples_for_every_dataset_type(kind, data_root, tmp_path):
    """The loader's data is the base set at the fork's indices (seed --seed)."""
    kwargs = {'dataset': 'S32', 'data_root': data_root}
    if kind == 'ImageFolder':
        make_folder(str(tmp_path / 'folder'))
        kwargs = {'dataset': 'mine', 'dataset_root': str(tmp_path / 'folder'),
                  'resolution': 32, 'n_classes': 3}
    elif kind == 'HDF5':
        make_h5(str(tmp_path / 'mine.hdf5'))
        kwargs = {'dataset': 'mine', 'dataset_root': str(tmp_path / 'mine.hdf5'),
                  'resolution': 32, 'n_classes': 3}
    base = datasets.get_dataset(**kwargs)
    loader = utils.get_data_loaders(**kwargs, num_samples=5, seed=2, batch_size=5,
                                    num_workers=0, shuffle=False, pin_memory=False)[0]
    idx = datasets.subset_indices(len(base), 5, 2)
    x, y = next(iter(loader))
    assert len(loader.dataset) == 5
    for i, j in enumerate(idx):
        assert torch.equal(x[i], base[j][0]) and int(y[i]) == base[j][1]


def test_mirror_augment_flips_at_random_only(data_root):
    """Each item flipped left-right exactly when torch.rand(1) < 0.5 (torchvision's draw);
    nothing else changes. With --augment (which already flips) it adds nothing."""
    base = datasets.get_dataset('S32', data_root)
    loader = utils.get_data_loaders('S32', data_root, mirror_augment=True, num_workers=0,
                                    batch_size=8, shuffle=False, pin_memory=False)[0]
    ds = loader.dataset
    torch.manual_seed(0)
    got = [ds[i][0] for i in range(40)]
    torch.manual_seed(0)
    flips = [bool(torch.rand(1) < 0.5) for _ in range(40)]
    assert 5 < sum(flips) < 35
    for i, flip in enumerate(flips):
        assert torch.equal(got[i], base[i][0].flip(-1) if flip else base[i][0]), i
    both = utils.get_data_loaders('S32', data_root, augment=True, mirror_augment=True,
                                  num_workers=0, pin_memory=False)[0]
    assert not isinstance(both.dataset, datasets.LimitedData)
    plain = utils.get_data_loaders('S32', data_root, num_workers=0, pin_memory=False)[0]
    assert isinstance(plain.dataset, datasets.S32)


def test_num_samples_larger_than_the_data(data_root):
    with pytest.raises(datasets.DatasetError):
        utils.get_data_loaders('S32', data_root, num_samples=10 ** 6, num_workers=0)


# ----------------------------------------------------------------------------
# The forks' launch scripts.

def read_scripts():
    with open(os.path.join(FIXTURES, 'data_efficient_scripts.tsv'), newline='') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def script_args(path):
    """The arguments after `python train.py` in a launch script, without the trailing "$@"."""
    with open(path) as f:
        text = f.read().replace('\\\n', ' ')
    words = shlex.split(text, comments=True)
    assert words[:2] == ['python', 'train.py'] and words[-1] == '$@', words[:2]
    return words[2:-1]


def test_all_24_scripts_present():
    names = {r['script'] for r in read_scripts()}
    assert len(names) == 24
    folder = os.path.join(ROOT, 'scripts', 'data_efficient')
    assert names <= set(os.listdir(folder))


@pytest.mark.parametrize('row', read_scripts(), ids=lambda r: r['script'])
def test_fork_script_arguments_parse_and_configure(row):
    """Each script passes the fork's arguments, which parse and make a valid config."""
    args = script_args(os.path.join(ROOT, 'scripts', 'data_efficient', row['script']))
    assert args == shlex.split(row['args'])
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(args)))
    assert config['DiffAugment'] == ('translation,cutout' if 'DiffAugment' in row['script']
                                     else '')
    assert config['LC'] == (0.3 if row['script'].startswith('lc-') else 0)
    assert config['mirror_augment'] and not config['augment']
    assert config['n_classes'] == (100 if 'cifar100' in row['script'] else 10)


# ----------------------------------------------------------------------------
# Resume.

@pytest.mark.slow
def test_resume_with_lecam_and_diffaugment_is_bit_exact(data_root, tmp_path):
    """3 iterations + --resume + 3 more equal 6 at once, with the anchors in state_dict.pth;
    resuming without them (fresh anchors at 1000) gives another run."""
    extra = ['--LC', '0.3', '--LC_start', '1', '--DiffAugment', 'translation,cutout',
             '--mirror_augment', '--num_samples', '64', '--save_every', '3']

    def run(out, itrs, *more):
        flags = run_flags(data_root, str(out), 'lc', '--total_itrs', str(itrs), *extra, *more)
        return train.run(vars(utils.prepare_parser().parse_args(flags)))

    def weights(out):
        return {f: utils.torch_load(str(out / 'weights' / 'lc' / (f + '.pth')))
                for f in ['G', 'D', 'G_ema', 'G_optim', 'D_optim', 'state_dict']}

    run(tmp_path / 'full', 6)
    run(tmp_path / 'part', 3)
    saved = weights(tmp_path / 'part')['state_dict']['ema_losses']
    assert set(saved) == set(utils.ema_losses.KEYS) and saved['D_real'] != 1000.0
    shutil.copytree(tmp_path / 'part', tmp_path / 'lost')
    run(tmp_path / 'part', 6, '--resume')
    full, resumed = weights(tmp_path / 'full'), weights(tmp_path / 'part')
    for f in full:
        if f == 'state_dict':
            full[f].pop('config')
            resumed[f].pop('config')
        assert_same(full[f], resumed[f], f)
    # Without the saved anchors the resumed run differs: the test can tell.
    path = tmp_path / 'lost' / 'weights' / 'lc' / 'state_dict.pth'
    state = utils.torch_load(str(path))
    del state['ema_losses']
    torch.save(state, str(path))
    run(tmp_path / 'lost', 6, '--resume')
    lost = weights(tmp_path / 'lost')['D']
    assert any(not torch.equal(lost[k], full['D'][k]) for k in lost)
