"""Spectral norm, ortho reg, EMA and the losses, each against an independent computation."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import layers
import losses
import utils
from helpers import penalty_grad


def with_spectrum(out, inp, svs, seed=0):
    """An (out, inp) matrix with the given leading singular values (the rest 0.1)."""
    g = torch.Generator().manual_seed(seed)
    k = min(out, inp)
    u, _ = torch.linalg.qr(torch.randn(out, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(inp, k, generator=g))
    s = torch.full((k,), 0.1)
    s[:len(svs)] = torch.tensor(svs)
    return u @ torch.diag(s) @ v.t()


def sn_modules():
    """(module, input) pairs for the three SN layers, weights of known spectrum."""
    conv = layers.SNConv2d(3, 6, 3, padding=1, num_svs=2)
    lin = layers.SNLinear(10, 7, num_svs=2)
    emb = layers.SNEmbedding(9, 5, num_svs=2)
    with torch.no_grad():
        conv.weight.copy_(with_spectrum(6, 27, [3.0, 1.5], 1).view(6, 3, 3, 3))
        lin.weight.copy_(with_spectrum(7, 10, [2.0, 1.0], 2))
        emb.weight.copy_(with_spectrum(9, 5, [4.0, 2.0], 3))
    return [(conv, torch.randn(2, 3, 5, 5)), (lin, torch.randn(4, 10)),
            (emb, torch.arange(9))]


@pytest.mark.parametrize('index', [0, 1, 2], ids=['SNConv2d', 'SNLinear', 'SNEmbedding'])
def test_sn_converges_to_top_singular_value(index):
    """In training mode sv0 and the divisor converge to ||W||_2, sv1 to the second value."""
    torch.manual_seed(0)
    module, x = sn_modules()[index]
    module.train()
    for _ in range(60):
        module(x)
    W = module.weight.detach().view(module.weight.shape[0], -1)
    svals = torch.linalg.svdvals(W)
    sigma = torch.linalg.matrix_norm(W, ord=2)
    assert float(module.sv0) == pytest.approx(float(sigma), rel=1e-4)
    assert float(module.sv1) == pytest.approx(float(svals[1]), rel=1e-3)
    assert torch.allclose(module.W_(), module.weight / sigma, rtol=1e-4, atol=1e-6)


def test_sn_output_is_divided_by_norm():
    """SNLinear's output equals a plain linear layer with W / ||W||_2 once u converged."""
    torch.manual_seed(0)
    module, x = sn_modules()[1]
    for _ in range(60):
        module(x)
    sigma = torch.linalg.matrix_norm(module.weight.detach(), ord=2)
    expected = x @ (module.weight / sigma).t() + module.bias
    assert torch.allclose(module(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('index', [0, 1, 2], ids=['SNConv2d', 'SNLinear', 'SNEmbedding'])
def test_sn_eval_mode_freezes_u(index):
    """In eval mode forward leaves the u vectors and the logged svs untouched."""
    torch.manual_seed(0)
    module, x = sn_modules()[index]
    module.eval()
    before = {k: v.clone() for k, v in module.named_buffers()}
    out1, out2 = module(x), module(x)
    for k, v in module.named_buffers():
        assert torch.equal(v, before[k]), k
    assert torch.equal(out1, out2)
    module.train()
    module(x)
    assert not torch.equal(module.u0, before['u0'])


def test_sn_num_itrs_equals_repeated_calls():
    """num_itrs=k in one forward gives the same u as k forwards with num_itrs=1."""
    torch.manual_seed(0)
    a = layers.SNLinear(6, 4, num_itrs=5)
    b = layers.SNLinear(6, 4, num_itrs=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6)
    a(x)
    for _ in range(5):
        b(x)
    assert torch.allclose(a.u0, b.u0, atol=1e-6)
    assert torch.allclose(a.sv0, b.sv0, atol=1e-6)


# ----------------------------------------------------------------------------
# Ortho reg.

class OrthoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 4)
        self.conv = nn.Conv2d(2, 3, 3)
        self.emb = nn.Embedding(6, 3)
        self.unused = nn.Linear(3, 3)


@pytest.mark.parametrize('which, offdiag', [('ortho', True), ('default_ortho', False)])
def test_ortho_adds_strength_times_penalty_gradient(which, offdiag):
    """ortho/default_ortho add strength x autograd(penalty) to .grad; others are untouched."""
    torch.manual_seed(0)
    net = OrthoNet()
    for name, p in net.named_parameters():
        if not name.startswith('unused'):
            p.grad = torch.randn_like(p)
    before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    strength = 0.37
    getattr(utils, which)(net, strength, blacklist=[net.emb.weight])
    for name in ['lin.weight', 'conv.weight']:
        p = dict(net.named_parameters())[name]
        expected = before[name] + strength * penalty_grad(p, offdiag)
        assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-6), name
    assert torch.equal(net.emb.weight.grad, before['emb.weight'])  # blacklisted
    assert torch.equal(net.lin.bias.grad, before['lin.bias'])      # 1-D
    assert torch.equal(net.conv.bias.grad, before['conv.bias'])
    assert net.unused.weight.grad is None


# ----------------------------------------------------------------------------
# EMA.

def ema_pair(start_itr, decay=0.9):
    torch.manual_seed(0)
    src = nn.Sequential(layers.SNLinear(3, 4), nn.BatchNorm1d(4))
    tgt = nn.Sequential(layers.SNLinear(3, 4), nn.BatchNorm1d(4))
    return src, tgt, utils.ema(src, tgt, decay, start_itr)


def perturb(src):
    """Change every float entry of src (params and buffers) and run BN once."""
    with torch.no_grad():
        for v in src.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v))
    src.train()
    src(torch.randn(8, 3))


def test_ema_starts_as_copy():
    """Constructing the EMA copies every state-dict entry of the source into the target."""
    src, tgt, _ = ema_pair(0)
    for k, v in src.state_dict().items():
        assert torch.equal(tgt.state_dict()[k], v), k


def test_ema_formula_on_every_entry():
    """After updates the target holds decay*t + (1-decay)*s for params and buffers alike."""
    decay = 0.9
    src, tgt, e = ema_pair(0, decay)
    for itr in range(1, 4):
        perturb(src)
        old = {k: v.clone() for k, v in tgt.state_dict().items()}
        e.update(itr)
        for k, s in src.state_dict().items():
            t = tgt.state_dict()[k]
            if s.is_floating_point():
                torch.testing.assert_close(t, decay * old[k] + (1 - decay) * s)
            else:
                assert torch.equal(t, s), k  # integer counters are copied
    names = set(src.state_dict())
    assert {'0.u0', '0.sv0', '1.running_mean', '1.running_var'} <= names


@pytest.mark.parametrize('itr', [0, 1, 4])
def test_ema_copies_before_start(itr):
    """Before ema_start (itr 0 included) the target equals the source outright."""
    src, tgt, e = ema_pair(start_itr=5)
    perturb(src)
    e.update(itr)
    for k, v in src.state_dict().items():
        assert torch.equal(tgt.state_dict()[k], v), k


def test_ema_averages_from_start():
    """At itr == ema_start the average takes over."""
    src, tgt, e = ema_pair(start_itr=5, decay=0.5)
    perturb(src)
    old = tgt[0].weight.detach().clone()
    e.update(5)
    torch.testing.assert_close(tgt[0].weight, 0.5 * old + 0.5 * src[0].weight)
    assert not torch.equal(tgt[0].weight, src[0].weight)


# ----------------------------------------------------------------------------
# Losses.

FAKE = [-2.0, -0.5, 0.3, 1.7]
REAL = [1.5, 0.2, -0.4, 3.0]


def mean(xs):
    return sum(xs) / len(xs)


def softplus(x):
    return math.log1p(math.exp(x))


def test_hinge_losses():
    """Hinge D loss is mean(relu(1 - real)), mean(relu(1 + fake)); G loss is -mean(fake)."""
    real, fake = losses.loss_hinge_dis(torch.tensor(FAKE), torch.tensor(REAL))
    assert float(real) == pytest.approx(mean([max(0.0, 1 - r) for r in REAL]))
    assert float(fake) == pytest.approx(mean([max(0.0, 1 + f) for f in FAKE]))
    assert float(losses.loss_hinge_gen(torch.tensor(FAKE))) == pytest.approx(-mean(FAKE))
    assert losses.discriminator_loss is losses.loss_hinge_dis
    assert losses.generator_loss is losses.loss_hinge_gen


def test_dcgan_losses():
    """DCGAN D loss is mean(softplus(-real)), mean(softplus(fake)); G's mean(softplus(-fake))."""
    real, fake = losses.loss_dcgan_dis(torch.tensor(FAKE), torch.tensor(REAL))
    assert float(real) == pytest.approx(mean([softplus(-r) for r in REAL]), rel=1e-6)
    assert float(fake) == pytest.approx(mean([softplus(f) for f in FAKE]), rel=1e-6)
    gen = losses.loss_dcgan_gen(torch.tensor(FAKE))
    assert float(gen) == pytest.approx(mean([softplus(-f) for f in FAKE]), rel=1e-6)
    # The same thing written with sigmoids: -log(sigmoid(real)).
    assert float(real) == pytest.approx(float(-F.logsigmoid(torch.tensor(REAL)).mean()))


def test_ema_survives_memory_format_change():
    """EMA keeps averaging after the nets move to channels_last (their tensors are swapped)."""
    torch.manual_seed(0)
    source, target = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    average = utils.ema(source, target, decay=0.5, start_itr=0)
    source.to(memory_format=torch.channels_last)
    target.to(memory_format=torch.channels_last)
    before = target.weight.detach().clone()
    with torch.no_grad():
        source.weight.add_(1.0)
    average.update(itr=1)
    expected = 0.5 * before + 0.5 * source.weight.detach()
    torch.testing.assert_close(target.weight.detach(), expected)
