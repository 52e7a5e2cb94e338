"""train.py end to end on S32: the files a run writes, bit-exact resume, atomic saves."""
import math
import os
import re
import shutil

import pytest
import torch
from PIL import Image

import train
import train_fns
import utils
from checkpoints import StopRun
from helpers import assert_same, run_flags, tiny_config, tiny_models

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

NAME = 'exp'
FILES = ['G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema']


def train_run(data_root, out, *extra):
    """train.run in-process with the tiny S32 flags; returns its final state_dict."""
    flags = run_flags(data_root, str(out), NAME, '--save_every', '3', '--sv_log_interval', '1',
                      *extra)
    return train.run(vars(utils.prepare_parser().parse_args(flags)))


@pytest.fixture
def run3(tiny_run):
    """The session's 3-iteration run (saved at 1, 2 and 3)."""
    return tiny_run


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_run_writes_weights(run3):
    """Weights, optimizers, state_dict and G_ema are written, plus rolling _copy0/_copy1
    versions (saved at 1, 2 and 3: copy0 holds 3, copy1 2, and the next slot is 1)."""
    out = run3
    folder = out / 'weights' / NAME
    expected = {f + s + '.pth' for f in FILES for s in ['', '_copy0', '_copy1']}
    assert set(os.listdir(folder)) == expected
    saved = load(folder / 'state_dict.pth')
    assert saved['itr'] == 3 and saved['save_num'] == 1 and saved['config']['G_ch'] == 4
    assert load(folder / 'state_dict_copy1.pth')['itr'] == 2
    for key in ['epoch', 'save_best_num', 'best_IS', 'best_FID']:
        assert key in saved
    for f in FILES:
        a, b = load(folder / (f + '.pth')), load(folder / (f + '_copy0.pth'))
        if f in ('G', 'D', 'G_ema'):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_logs(run3):
    """Loss logs hold one `itr: value` line per iteration; SV logs and metalog.txt exist."""
    out = run3
    folder = out / 'logs' / NAME
    for metric in ['G_loss', 'D_loss_real', 'D_loss_fake']:
        lines = (folder / (metric + '.log')).read_text().splitlines()
        assert [int(line.split(':')[0]) for line in lines] == [1, 2, 3]
        assert all(re.fullmatch(r'\d+: [-+0-9.e]+', line) for line in lines), lines
        assert all(math.isfinite(float(line.split(': ')[1])) for line in lines)
    G = load(out / 'weights' / NAME / 'G.pth')
    D = load(out / 'weights' / NAME / 'D.pth')
    svs = [('G_' + k).replace('.', '_') for k in G if 'sv' in k]
    svs += [('D_' + k).replace('.', '_') for k in D if 'sv' in k]
    assert len(svs) > 10
    for sv in svs:
        lines = (folder / (sv + '.log')).read_text().splitlines()
        assert len(lines) == 3 and lines[0].startswith('1: ')
    text = (folder / 'metalog.txt').read_text()
    assert 'config' in text and "'G_ch': 4" in text


def test_run_writes_samples(run3):
    """Fixed-z, class and interpolation sheets are valid JPEGs of the expected grid size."""
    out = run3
    folder = out / 'samples' / NAME
    with Image.open(folder / 'fixed_samples3.jpg') as im:
        assert im.format == 'JPEG'
    with Image.open(folder / '3' / 'samples0.jpg') as im:
        # 10 classes (rows) x 10 samples (columns) of 32px with torchvision's 2px padding.
        assert im.size == (10 * 34 + 2, 10 * 34 + 2)
    for style in ['Z', 'Y', 'ZY']:
        with Image.open(folder / '3' / (f'interp{style}0.jpg')) as im:
            assert im.size == (10 * 34 + 2, 16 * 34 + 2)  # 16 rows of 8 midpoints + 2 ends


def test_resume_is_bit_exact(run3, data_root, tmp_path):
    """3 iterations + --resume + 3 more equal 6 uninterrupted ones, bit for bit."""
    out3 = run3
    resumed = tmp_path / 'resumed'
    shutil.copytree(out3, resumed)
    state = train_run(data_root, resumed, '--total_itrs', '6', '--resume')
    assert state['itr'] == 6
    full = tmp_path / 'full'
    train_run(data_root, full, '--total_itrs', '6')
    for f in FILES:
        a = load(full / 'weights' / NAME / (f + '.pth'))
        b = load(resumed / 'weights' / NAME / (f + '.pth'))
        if f == 'state_dict':
            a.pop('config')
            b.pop('config')
            b.pop('saved_config', None)
        assert_same(a, b, f)
    for metric in ['G_loss', 'D_loss_real', 'D_loss_fake']:
        log = f'logs/{NAME}/{metric}.log'
        assert (full / log).read_text() == (resumed / log).read_text()


def test_z_var_leaves_training_alone(run3, data_root, tmp_path, capsys):
    """--z_var is for sampling: training with it is the same run; the name is printed."""
    out3 = run3
    train_run(data_root, tmp_path, '--total_itrs', '3', '--z_var', '0.5')
    assert f'Experiment name is {NAME}' in capsys.readouterr().out
    for f in ('G', 'G_ema', 'D'):
        assert_same(load(out3 / 'weights' / NAME / (f + '.pth')),
                    load(tmp_path / 'weights' / NAME / (f + '.pth')), f)


def test_channels_last_run_trains_on_channels_last(data_root, tmp_path, monkeypatch):
    """--channels_last: train.py hands the step channels_last batches and models."""
    seen = []
    make_step = train_fns.GAN_training_function

    def recording(G, D, *args, **kwargs):
        step = make_step(G, D, *args, **kwargs)

        def train(x, y):
            cl = torch.channels_last
            seen.append((x.is_contiguous(memory_format=cl),
                         G.blocks[0][0].conv1.weight.is_contiguous(memory_format=cl),
                         D.blocks[0][0].conv1.weight.is_contiguous(memory_format=cl)))
            return step(x, y)
        return train
    monkeypatch.setattr(train_fns, 'GAN_training_function', recording)
    train_run(data_root, tmp_path, '--total_itrs', '2', '--channels_last')
    assert seen == [(True, True, True)] * 2


# ----------------------------------------------------------------------------
# Atomic saves.

@pytest.mark.parametrize('crash_at', [0, 2, 5])
def test_atomic_save_survives_crash(tmp_path, monkeypatch, crash_at):
    """A write dying mid-file leaves the previous checkpoint whole: all its files, untorn."""
    config = tiny_config('--ema')
    G, D, G_ema = tiny_models(config, seed=1)
    state = {'itr': 1, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    utils.save_weights(G, D, state, str(tmp_path), NAME, None, G_ema)
    folder = tmp_path / NAME
    old = {f: (folder / (f + '.pth')).read_bytes() for f in FILES}

    for net in (G, D):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        net.optim.step()
    state['itr'] = 2
    real_save, calls = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(obj)
        if len(calls) - 1 == crash_at:
            with open(f, 'wb') as half:
                half.write(b'\0' * 4096)  # half a file, then the "crash"
            raise OSError('simulated crash')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(StopRun, match='simulated crash'):
        utils.save_weights(G, D, state, str(tmp_path), NAME, None, G_ema)
    monkeypatch.undo()

    assert sorted(os.listdir(folder)) == sorted(f + '.pth' for f in FILES)  # no temp files
    # Every file is written aside before any is renamed: the old checkpoint survives whole.
    for f in FILES:
        assert (folder / (f + '.pth')).read_bytes() == old[f], f
    G2, D2, G_ema2 = tiny_models(config, seed=3)
    loaded = {'itr': 0}
    utils.load_weights(G2, D2, loaded, str(tmp_path), NAME, G_ema=G_ema2)
    assert loaded['itr'] == 1
