"""Mixed precision (--amp bf16|fp16), --channels_last and --compile on CPU, on the tiny models."""
import math
import shutil

import pytest
import torch

import train
import train_fns
import utils
from helpers import fp16_autocast_on_cpu, tiny_config

B = 4


def build(config, seed=0):
    torch.manual_seed(seed)
    model, G, D, G_ema, ema = train.build_models(config, torch.device('cpu'))
    return model, G, D, G_ema, ema


def batch(config, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = B * config['num_D_steps'] * config['num_D_accumulations']
    x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    y = torch.randint(0, config['n_classes'], (n,), generator=g)
    if config['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def run_steps(config, steps=2, seed=0, on_build=None):
    """steps training iterations of the real step; returns (metrics list, G, D, G_ema, state).

    on_build(G, D), when given, runs on the fresh models (to add hooks).
    """
    model, G, D, G_ema, ema = build(config, seed)
    if on_build is not None:
        on_build(G, D)
    GD = model.G_D(G, D)
    if config['compile']:
        GD = model.G_D(train.wrap(G, config, 1, torch.device('cpu')),
                       train.wrap(D, config, 1, torch.device('cpu')))
    z_, y_ = utils.prepare_z_y(B, G.dim_z, config['n_classes'])
    state = {'itr': 0}
    step = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state, config)
    metrics = []
    for i in range(steps):
        state['itr'] += 1
        metrics.append(step(*batch(config, seed=i)))
    return metrics, G, D, G_ema, step


def assert_float32_state(G, D, G_ema):
    """Weights, SN u/sv, BN statistics, optimizer moments and the EMA stay float32 and finite."""
    for net in (G, D, G_ema):
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.is_floating_point():
                assert t.dtype == torch.float32, name
                assert torch.isfinite(t).all(), name
    for net in (G, D):
        for state in net.optim.state.values():
            for key in ('exp_avg', 'exp_avg_sq'):
                assert state[key].dtype == torch.float32
                assert torch.isfinite(state[key]).all()


@pytest.mark.slow
@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_step_runs_finite_and_keeps_state_float32(amp):
    if amp == 'fp16':
        reason = fp16_autocast_on_cpu()
        if reason:
            pytest.skip(reason)
    config = tiny_config('--amp', amp, '--ema', '--G_attn', '16', '--D_attn', '16',
                         '--ema_start', '0')
    torch.manual_seed(0)
    _, G0, D0, _, _ = build(config)
    # The convolutions really run in the low precision: record their output dtypes.
    seen = set()

    def record(G, D):
        hook = lambda module, args, out: seen.add(out.dtype)  # noqa: E731
        G.blocks[0][0].conv1.register_forward_hook(hook)
        D.blocks[0][0].conv1.register_forward_hook(hook)

    # fp16: GradScaler starts at 2**16 and skips the steps whose gradients overflow while it
    # backs off, so give it a few iterations to take real ones.
    steps = 2 if amp == 'bf16' else 6
    metrics, G, D, G_ema, _ = run_steps(config, steps=steps, on_build=record)
    assert seen == {{'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]}
    if amp == 'fp16':
        assert metrics[-1]['D_skipped_steps'] < steps * config['num_D_steps']
    for m in metrics:
        for k in ('G_loss', 'D_loss_real', 'D_loss_fake'):
            assert math.isfinite(m[k]), (k, m)
        if amp == 'fp16':
            assert 'G_skipped_steps' in m and 'D_skipped_steps' in m  # counted for the logs
    assert_float32_state(G, D, G_ema)
    # The steps did something: SN's u vectors, BN statistics and the weights moved.
    for name, before in G0.state_dict().items():
        if name.endswith(('.u0', 'stored_mean')):
            assert not torch.equal(before, G.state_dict()[name]), name
    assert not torch.equal(D0.state_dict()['embed.weight'], D.state_dict()['embed.weight'])


def test_power_iteration_and_bn_statistics_are_float32_under_autocast():
    """Under bf16 autocast the SN estimate and the BN batch statistics are float32, and equal the
    float32 results to float32 precision for the same (bf16-rounded) input."""
    import layers
    config = tiny_config('--amp', 'bf16')
    _, G, _, _, _ = build(config)
    conv = G.blocks[0][0].conv1
    u = conv.u0.clone().double()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        W = conv.W_()
    # One power-iteration step from the stored u, done by hand in float64: a bf16 iteration
    # would be off by about 1e-2.
    W64 = conv.weight.detach().double().view(conv.weight.shape[0], -1)
    v = torch.nn.functional.normalize(u @ W64)
    u_new = torch.nn.functional.normalize(v @ W64.t())
    sv = (v @ W64.t() @ u_new.t()).item()
    assert W.dtype == torch.float32
    assert conv.sv0.item() == pytest.approx(sv, rel=1e-5)
    torch.testing.assert_close(conv.u0.double(), u_new, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(W.detach().double(), conv.weight.detach().double() / sv,
                               rtol=1e-5, atol=1e-7)
    x = torch.randn(8, 16, 4, 4).to(torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        m, var = layers.batch_moments(x)
    assert m.dtype == var.dtype == torch.float32
    torch.testing.assert_close(m.flatten(), x.float().mean([0, 2, 3]))
    torch.testing.assert_close(var.flatten(), x.float().var([0, 2, 3], unbiased=False))


@pytest.mark.parametrize('flag', ['--G_fp16', '--D_fp16', '--G_mixed_precision',
                                  '--D_mixed_precision'])
def test_release_fp16_flags_map_to_amp_fp16(flag, capsys):
    config = tiny_config(flag)
    assert config['amp'] == 'fp16'
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and '--amp fp16' in lines[0]
    # An explicit --amp wins, without the notice.
    assert tiny_config(flag, '--amp', 'bf16')['amp'] == 'bf16'
    assert '--amp' not in capsys.readouterr().out


def test_channels_last_matches_contiguous():
    """--channels_last: the models and the real batches are channels_last, and one training
    step gives what the contiguous step gives, to float tolerance."""
    config = tiny_config('--G_attn', '16', '--D_attn', '16', '--ema')
    config_cl = {**config, 'channels_last': True}
    m_ref, G_ref, D_ref, _, _ = run_steps(config, steps=2)
    m_cl, G_cl, D_cl, _, _ = run_steps(config_cl, steps=2)
    conv = G_cl.blocks[0][0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(m_cl, m_ref):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for net_cl, net in ((G_cl, G_ref), (D_cl, D_ref)):
        for (name, a), b in zip(net_cl.state_dict().items(), net.state_dict().values()):
            # G's conv/linear biases all feed a batch norm: their true gradient is 0, autograd's
            # is rounding noise, and Adam turns any noise into a +-lr step.
            atol = 1e-4
            if net is G_ref and name.endswith('bias') and not name.startswith('output_layer'):
                atol = 2 * 2 * config['G_lr'] + 1e-5
            torch.testing.assert_close(a, b, rtol=1e-3, atol=atol, msg=name)


def compiler_unavailable(error):
    """The reason a torch.compile failure is this machine's toolchain rather than our code."""
    text = f'{type(error).__name__}: {error}'
    markers = ('CppCompileError', 'InvalidCxxCompiler', 'No working C compiler',
               'Python.h', 'cannot find -l', 'Triton', 'not supported on Python')
    for marker in markers:
        if marker in text:
            return text.splitlines()[0][:300]
    return None


@pytest.mark.slow
def test_compile_runs_one_step(monkeypatch):
    """--compile (torch.compile of G and D through train.wrap) runs a step on the tiny models and
    matches the eager step.

    Inductor's C++ code generation of this step takes about 8 minutes on the 2-core CI machine,
    so by default the test compiles with the 'aot_eager' backend: Dynamo traces our modules and
    AOTAutograd builds the joint forward/backward graph (what breaks when model code is not
    compilable), without generating C++. BIGGAN_TEST_INDUCTOR=1 uses the default backend
    (inductor), skipped with the reason when the toolchain cannot build.
    """
    import os

    import torch._dynamo
    inductor = os.environ.get('BIGGAN_TEST_INDUCTOR') == '1'
    if inductor and shutil.which('cc') is None and shutil.which('gcc') is None:
        pytest.skip('torch.compile (inductor) on CPU needs a C++ compiler; none on PATH')
    compile_, compiled = torch.compile, []

    def counting_compile(m, **kw):
        compiled.append(type(m).__name__)
        return compile_(m, **(kw if inductor else {**kw, 'backend': 'aot_eager'}))
    monkeypatch.setattr(torch, 'compile', counting_compile)
    config = tiny_config('--compile', '--num_D_steps', '1')
    torch._dynamo.reset()
    try:
        metrics, G, D, _, _ = run_steps(config, steps=1)
    except Exception as e:  # only a toolchain failure is a skip; anything else fails the test
        reason = compiler_unavailable(e)
        if reason is None:
            raise
        pytest.skip('torch.compile cannot build on this machine: ' + reason)
    finally:
        torch._dynamo.reset()
    assert compiled == ['Generator', 'Discriminator']  # train.wrap compiled both
    for k in ('G_loss', 'D_loss_real', 'D_loss_fake'):
        assert math.isfinite(metrics[0][k])
    # The compiled step computes what the eager one does.
    eager = run_steps({**config, 'compile': False}, steps=1)[0]
    for k in ('G_loss', 'D_loss_real', 'D_loss_fake'):
        assert metrics[0][k] == pytest.approx(eager[0][k], rel=1e-3, abs=1e-4), k
