"""losses.py's named terms in the step, and R1 checked against a direct autograd computation."""
import pytest
import torch

import BigGAN
import flags
import losses
import train_fns
import utils
from helpers import fp16_autocast_on_cpu, tiny_config

GAMMA = 3.0


def build(config):
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    # Eval mode: SN's u stays put, so D scores the reals the same in the step and directly.
    G.eval()
    D.eval()
    return G, D, BigGAN.G_D(G, D)


def reals(n=4):
    g = torch.Generator().manual_seed(2)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def D_step(itr, *extra):
    """(train's outputs, D's gradients at its optimizer step, a fresh D as built) for one
    iteration at itr on fixed models, latents and reals."""
    config = tiny_config('--num_D_steps', '1', *extra)
    G, D, GD = build(config)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    grads = []
    step = D.optim.step
    D.optim.step = lambda *a, **k: grads.append(
        {n: p.grad.clone() for n, p in D.named_parameters()}) or step(*a, **k)
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': itr}, config)
    torch.manual_seed(1)
    out = train(*reals())
    return out, grads[0], build(config)[1]  # D as it was before its step


def direct_r1(D):
    """gamma/2 * mean over the reals of ||grad_x D(x, y)||^2, and its gradient in D's weights,
    computed straight from D."""
    x, y = reals()
    x.requires_grad_(True)
    score = D(x, y)
    grad, = torch.autograd.grad(score.sum(), x, create_graph=True)
    penalty = GAMMA / 2 * (grad ** 2).sum(dim=(1, 2, 3)).mean()
    weights = dict(D.named_parameters())
    return penalty.detach(), dict(zip(weights, torch.autograd.grad(penalty, list(weights.values()),
                                                          allow_unused=True)))


def assert_grad_diff(with_r1, without, expect, factor=1.0):
    checked = 0
    for name, g in expect.items():
        diff = with_r1[name] - without[name]
        if g is None:
            assert torch.equal(diff, torch.zeros_like(diff)), name
            continue
        scale = float(g.abs().max()) * factor
        torch.testing.assert_close(diff, factor * g, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                                   msg=name)
        checked += scale > 0
    assert checked >= 5


def test_r1_matches_direct_autograd():
    """--R1 gamma adds gamma/2 * E||grad_x D(x)||^2 on the reals to D's loss (reported as
    D_loss_R1) and its gradient to D's; the other D terms are untouched."""
    out, grads, D = D_step(1, '--R1', str(GAMMA))
    plain, plain_grads, _ = D_step(1)
    penalty, expect = direct_r1(D)
    assert float(penalty) > 0
    assert out['D_loss_R1'] == pytest.approx(float(penalty), rel=1e-5)
    assert [out[k] for k in ('D_loss_real', 'D_loss_fake')] == [plain['D_loss_real'],
                                                                plain['D_loss_fake']]
    assert_grad_diff(grads, plain_grads, expect)


def test_lazy_r1_every_k_iterations_weighted_k():
    """--R1_every 4: at itr 3 nothing changes (bit for bit) and D_loss_R1 is 0; at itr 4 the
    penalty counts 4 times."""
    off, off_grads, _ = D_step(3, '--R1', str(GAMMA), '--R1_every', '4')
    plain, plain_grads, _ = D_step(3)
    assert off.pop('D_loss_R1') == 0.0 and off == plain
    assert all(torch.equal(off_grads[k], plain_grads[k]) for k in plain_grads)
    on, on_grads, D = D_step(4, '--R1', str(GAMMA), '--R1_every', '4')
    plain4, plain4_grads, _ = D_step(4)
    penalty, expect = direct_r1(D)
    assert on['D_loss_R1'] == pytest.approx(4 * float(penalty), rel=1e-5)
    assert_grad_diff(on_grads, plain4_grads, expect, factor=4.0)


def test_terms_follow_the_flags():
    """The step's D and G terms, in the order they are summed, for each regulariser's flag."""
    assert [t.name for t in losses.D_terms(tiny_config())] == ['D_loss_real', 'D_loss_fake']
    config = tiny_config('--CR', '1', '--LC', '0.3', '--R1', '1', '--R1_every', '16')
    terms = losses.D_terms(config, utils.ema_losses(), train_fns.track_outputs)
    assert [t.name for t in terms] == ['D_loss_real', 'D_loss_fake', 'D_loss_CR', 'D_loss_LC',
                                       'D_loss_R1']
    assert [t.weight for t in terms] == [1.0, 1.0, 1.0, 0.3, 0.5 * 16]
    assert [t.name for t in losses.G_terms(config)] == ['G_loss']


def test_a_new_term_is_summed_and_reported(monkeypatch):
    """A term appended to losses.D_terms' list joins D's loss and train's outputs by name."""
    config = tiny_config('--num_D_steps', '1')
    G, D, GD = build(config)
    seen = []

    def extra(s):
        seen.append(s.D_real.detach())
        return s.D_real.mean()
    D_terms = losses.D_terms

    def with_extra(*args, **kwargs):
        return D_terms(*args, **kwargs) + [losses.Term('D_loss_mean', extra, 2.0)]
    monkeypatch.setattr(losses, 'D_terms', with_extra)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    out = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config)(*reals())
    assert out['D_loss_mean'] == pytest.approx(2 * float(seen[0].mean()), rel=1e-6)


def smooth_D(monkeypatch, factor):
    """D's scores times factor, in float32 after D: a D this flat has input gradients far
    below float16's smallest normal number (6.1e-5) all through its backward."""
    forward = BigGAN.Discriminator.forward
    monkeypatch.setattr(BigGAN.Discriminator, 'forward',
                        lambda self, x, y=None: forward(self, x, y).float() * factor)


def grad_rel_error(a, b):
    """||a - b|| / ||b|| over every tensor of two gradient dicts."""
    diff = sum((a[k].double() - b[k].double()).pow(2).sum() for k in b)
    return float((diff / sum(b[k].double().pow(2).sum() for k in b)).sqrt())


def skip_without_fp16():
    reason = fp16_autocast_on_cpu()
    if reason:
        pytest.skip(reason)


def test_r1_value_under_fp16_is_float32s(monkeypatch):
    """--amp fp16: R1's input gradient is taken through scaled scores and unscaled, so the
    penalty of a D whose float16 input gradient underflows unscaled (scores times 1e-6: 32% low
    that way) is float32's to float16 rounding: 2**-11 = 4.9e-4 relative, which D's forward
    and backward leave at 5e-4 here; rel 5e-3 allows 10 such roundings."""
    skip_without_fp16()
    smooth_D(monkeypatch, 1e-6)
    ref = D_step(1, '--R1', str(GAMMA))[0]['D_loss_R1']
    assert ref > 0
    half = D_step(1, '--R1', str(GAMMA), '--amp', 'fp16')[0]
    assert half['D_skipped_steps'] == 0
    assert half['D_loss_R1'] == pytest.approx(ref, rel=5e-3)


def test_r1_gradient_under_fp16_is_float32s(monkeypatch):
    """--amp fp16: R1's gradient in D's weights (the adversarial terms count 0, so D's gradient
    is R1's alone), scaled through both backwards and unscaled with D's, is float32's within
    1e-2 (2e-3 here: float16 rounding through the double backward)."""
    skip_without_fp16()
    monkeypatch.setattr(losses, 'discriminator_loss', lambda f, r: (0 * r.mean(), 0 * f.mean()))
    smooth_D(monkeypatch, 1e-4)
    _, ref_grads, _ = D_step(1, '--R1', str(GAMMA))
    half, half_grads, _ = D_step(1, '--R1', str(GAMMA), '--amp', 'fp16')
    assert half['D_skipped_steps'] == 0
    assert grad_rel_error(half_grads, ref_grads) < 1e-2


@pytest.mark.parametrize('flag,value', [('R1', '-1'), ('R1_every', '0')])
def test_r1_flags_domains(flag, value):
    with pytest.raises(flags.ConfigError, match=f'--{flag} must be'):
        flags.check_flags(vars(flags.prepare_parser().parse_args([f'--{flag}', value])))


def test_r1_with_compile_is_refused():
    """torch.compile has no double backward: the pair is a start-up error, not a crash later."""
    with pytest.raises(flags.ConfigError, match='--R1 needs a double backward'):
        tiny_config('--R1', '1', '--compile')
