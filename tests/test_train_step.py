"""train_fns.GAN_training_function's semantics, and the z_/y_ latents it draws from."""
import importlib
import itertools

import pytest
import torch
import torch.nn as nn

import train_fns
import utils
from helpers import penalty_grad, tiny_config


def build(config, seed=0):
    """G, D and G_D for config, seeded so two calls give identical models."""
    model = importlib.import_module(config['model'])
    torch.manual_seed(seed)
    G, D = model.Generator(**config), model.Discriminator(**config)
    return G, D, model.G_D(G, D)


def scripted(chunks):
    """A latent buffer whose sample_() copies in the next of the given tensors, cyclically."""
    buf = chunks[0].clone()
    source = itertools.cycle(chunks)
    buf.sample_ = lambda: buf.copy_(next(source))
    return buf


def record_steps(net, log):
    """Wrap net.optim.step to log (grads, params, requires_grad of G and D) before stepping."""
    step = net.optim.step

    def wrapped(*args, **kwargs):
        log.append({n: (p.grad.clone() if p.grad is not None else None, p.detach().clone())
                    for n, p in net.named_parameters()})
        return step(*args, **kwargs)
    net.optim.step = wrapped


class CountingGD(nn.Module):
    """G_D that records how it is called."""

    def __init__(self, GD):
        super().__init__()
        self.GD, self.calls = GD, []

    def forward(self, z, gy, x=None, dy=None, **kwargs):
        self.calls.append((kwargs.get('train_G'), x, len(z)))
        return self.GD(z, gy, x, dy, **kwargs)


def latents(n, dim_z, n_classes, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim_z, generator=g), torch.randint(0, n_classes, (n,), generator=g),
            torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, n_classes, (n,), generator=g))


def step_grads(config, net, parts, n_real):
    """net's ('G' or 'D') gradients at its first optimizer step of one training iteration on
    fixed latents cut into parts chunks and n_real real images."""
    G, D, GD = build(config)
    B = 8 // parts
    Z, Y, X, XY = latents(8, G.dim_z, config['n_classes'])
    # Eval mode: SN's u stays put and G's BN uses stored stats, so each sample's output
    # does not depend on how the batch is cut.
    G.eval()
    D.eval()
    log = []
    record_steps({'G': G, 'D': D}[net], log)
    z_, y_ = scripted(list(Z.chunk(parts))), scripted(list(Y.chunk(parts)))
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config)
    train(X[:n_real], XY[:n_real])
    assert len(log) == 1 and config['batch_size'] == B
    return {n: g for n, (g, _) in log[0].items() if g is not None}


def assert_same_grads(acc, big):
    """Float sums in another order: compare to each tensor's scale (a factor 2 would show)."""
    assert sum(float(g.abs().sum()) for g in acc.values()) > 0
    for name, g in big.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(acc[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize('split', [False, True], ids=['concat', 'split_D'])
def test_D_accumulation_equals_big_batch(split):
    """2 accumulations of B give D the gradient of one step on 2B (same z, y, x; u frozen)."""
    extra = ['--split_D'] if split else []
    acc_cfg = tiny_config('--num_D_steps', '1', '--num_D_accumulations', '2', *extra)
    big_cfg = tiny_config('--num_D_steps', '1', '--batch_size', '8', *extra)
    assert_same_grads(step_grads(acc_cfg, 'D', 2, 8), step_grads(big_cfg, 'D', 1, 8))


def test_G_accumulation_equals_big_batch():
    """2 G accumulations of B give G the gradient of one G step on 2B (D frozen by lr 0)."""
    acc_cfg = tiny_config('--num_D_steps', '1', '--num_G_accumulations', '2', '--D_lr', '0')
    big_cfg = tiny_config('--num_D_steps', '1', '--batch_size', '8', '--D_lr', '0')
    # The D step draws one chunk first; the G step then sees every chunk once.
    acc, big = step_grads(acc_cfg, 'G', 2, 4), step_grads(big_cfg, 'G', 1, 8)
    assert acc.keys() == big.keys()
    assert_same_grads(acc, big)


@pytest.mark.parametrize('toggle', [True, False], ids=['toggle', 'no_toggle'])
def test_training_function_semantics(toggle):
    """D steps, accumulations, real chunks, toggled grads and the returned floats."""
    extra = [] if toggle else ['--no_toggle_grads']
    config = tiny_config('--num_D_steps', '3', '--num_D_accumulations', '2',
                         '--num_G_accumulations', '2', *extra)
    assert config['toggle_grads'] is toggle
    G, D, GD = build(config)
    counting = CountingGD(GD)
    z_, y_ = utils.prepare_z_y(config['batch_size'], G.dim_z, config['n_classes'])
    seen = {'D': [], 'G': []}
    for name, net in [('D', D), ('G', G)]:
        step = net.optim.step

        def wrapped(*args, _step=step, _name=name, **kwargs):
            seen[_name].append(([p.requires_grad for p in D.parameters()],
                                [p.requires_grad for p in G.parameters()]))
            return _step(*args, **kwargs)
        net.optim.step = wrapped
    X = torch.randn(4 * 3 * 2, 3, 32, 32)
    Y = torch.randint(0, 10, (24,))
    train = train_fns.GAN_training_function(G, D, counting, z_, y_, None, {'itr': 1}, config)
    out = train(X, Y)

    assert len(seen['D']) == 3 and len(seen['G']) == 1
    d_calls = [c for c in counting.calls if not c[0]]
    g_calls = [c for c in counting.calls if c[0]]
    assert len(d_calls) == 6 and len(g_calls) == 2 and counting.calls[-2:] == g_calls
    for i, (_, x, n) in enumerate(d_calls):
        assert n == 4 and torch.equal(x, X[4 * i:4 * (i + 1)])  # real chunk `counter`
    assert all(x is None for _, x, _ in g_calls)
    for d_flags, g_flags in seen['D']:
        assert all(d_flags) and all(g_flags) != toggle
        assert all(g_flags) or not any(g_flags)
    d_flags, g_flags = seen['G'][0]
    assert all(g_flags) and all(d_flags) != toggle
    assert set(out) == {'G_loss', 'D_loss_real', 'D_loss_fake'}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize('net', ['G', 'D'])
def test_ortho_reg_in_the_step(net):
    """--G_ortho/--D_ortho add strength x penalty gradient to every matrix of that net, except
    G.shared's; G ortho leaves D's step (which comes first) untouched."""
    strength = 0.3
    grads = []
    for ortho in ['0.0', str(strength)]:
        config = tiny_config('--num_D_steps', '1', f'--{net}_ortho', ortho)
        G, D, GD = build(config)
        Z, Y, _, _ = latents(4, G.dim_z, 10)
        logs = {'G': [], 'D': []}
        record_steps(G, logs['G'])
        record_steps(D, logs['D'])
        train = train_fns.GAN_training_function(G, D, GD, scripted([Z]), scripted([Y]), None,
                                                {'itr': 1}, config)
        torch.manual_seed(1)
        train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
        grads.append(logs)
    if net == 'G':
        for (name, (g_reg, _)), (g_plain, _) in zip(grads[1]['D'][0].items(),
                                                    grads[0]['D'][0].values()):
            assert torch.equal(g_reg, g_plain), name
    checked = 0
    for name, (g_reg, w) in grads[1][net][0].items():
        g_plain = grads[0][net][0][name][0]
        if w.dim() < 2 or name == 'shared.weight':
            assert torch.equal(g_reg, g_plain), name
            continue
        # g_reg is g_plain + ortho rounded to float32: allow two ulps of the gradient.
        atol = 1e-6 + 2 * torch.finfo(torch.float32).eps * float(g_plain.abs().max())
        torch.testing.assert_close(g_reg - g_plain, strength * penalty_grad(w, True),
                                   rtol=1e-4, atol=atol, msg=name)
        checked += 1
    assert checked >= 5
    if net == 'G':
        assert 'shared.weight' in grads[1]['G'][0]


def test_ema_updated_with_iteration_number():
    """The step calls ema.update with state_dict['itr'] when --ema is on."""
    config = tiny_config('--num_D_steps', '1', '--ema')
    G, D, GD = build(config)
    calls = []

    class FakeEMA:
        def update(self, itr=None):
            calls.append(itr)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10)
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, FakeEMA(), {'itr': 17}, config)
    train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert calls == [17]


# ----------------------------------------------------------------------------
# Latents.

def test_prepare_z_y_sample_in_place():
    """z_.sample_() refills in place with std z_var; y_.sample_() draws every class in range."""
    z_, y_ = utils.prepare_z_y(4096, 8, 10, device='cpu', z_var=0.5)
    ptr, old = z_.data_ptr(), z_.clone()
    z_.sample_()
    assert z_.data_ptr() == ptr and not torch.equal(z_, old)
    assert float(z_.std()) == pytest.approx(0.5, abs=0.01)
    assert abs(float(z_.mean())) < 0.01
    y_.sample_()
    assert y_.dtype == torch.int64 and y_.shape == (4096,)
    assert int(y_.min()) == 0 and int(y_.max()) == 9
    assert len(torch.unique(y_)) == 10


@pytest.mark.parametrize('fp16', [False, True])
def test_prepare_z_y_draws_like_the_release(fp16):
    """The initial z is a float32 CPU randn, cast afterwards, and y_ starts at zero."""
    torch.manual_seed(3)
    z_, y_ = utils.prepare_z_y(5, 7, 10, fp16=fp16)
    after = torch.rand(3)
    torch.manual_seed(3)
    expect = torch.randn(5, 7)
    assert torch.equal(z_, expect.to(torch.float16 if fp16 else torch.float32))
    assert torch.equal(y_, torch.zeros(5, dtype=torch.int64))
    assert torch.equal(after, torch.rand(3))  # nothing else drawn


def test_latents_stay_plain_tensors():
    """z_, y_, their slices and results are plain torch.Tensor (no subclass leak)."""
    z_, y_ = utils.prepare_z_y(6, 4, 3)
    for t in [z_, y_, z_[:2], y_[:2], z_ * 2, z_ + z_, torch.cat([z_, z_]), z_.view(-1)]:
        assert type(t) is torch.Tensor
    assert z_.shape == (6, 4) and z_.dtype == torch.float32


def test_progress_line_reads_like_the_release():
    """--pbar mine: count, percent, elapsed/ETA and the losses in the release's format."""
    import io
    out = io.StringIO()
    bar = utils.progress(range(4), total=4, start=6, displaytype='eta', file=out)
    for _ in bar:
        bar.set_postfix({'G_loss': 1.5, 'D_loss_real': -0.25})
    last = out.getvalue().split('\r')[-1]
    assert last.startswith('10/10 (100.00%) (TE/ETA: 0:00 / 0:00) ')
    assert last.endswith('G_loss : +1.500, D_loss_real : -0.250\n')
