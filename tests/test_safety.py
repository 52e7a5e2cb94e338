"""Attacks and faults: loading never runs code, every bad input gets one line and exit status 2
with nothing written, and a run that dies leaves no temporary file and a loadable checkpoint."""
import argparse
import ast
import builtins
import errno
import glob
import io
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import BigGAN
import calculate_inception_moments
import checkpoints
import datasets
import files
import flags
import inception_utils
import make_hdf5
import sample
import train
import utils
from helpers import ROOT, run_flags, tiny_config, tiny_models

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

NAME = 'exp'
CHECKPOINT_FILES = ['G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema']


# ----------------------------------------------------------------------------
# Payloads: objects whose unpickling creates a marker file.

class System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class Eval(System):
    def __reduce__(self):
        return builtins.eval, (f'open({self.marker!r}, "w").close()',)


class Popen(System):
    def __reduce__(self):
        return subprocess.Popen, (['touch', self.marker],)


class Nested(System):
    """A payload inside a dict inside a list, as a checkpoint's state would hold it."""

    def __reduce__(self):
        return dict, ([('state', [{'a': System(self.marker)}])],)


PAYLOADS = {'os.system': System, 'builtins.eval': Eval, 'subprocess.Popen': Popen,
            'nested': Nested}


def first_pickle_length(data):
    """Bytes taken by the first pickle in data (a legacy file's magic number)."""
    f = io.BytesIO(data)
    pickle.Unpickler(f).load()  # a plain int: safe to read
    return f.tell()


def write_poisoned(path, payload, where):
    """A file at path that runs payload when unpickled: in a zip's data.pkl, in a legacy file's
    object, or in a legacy file's header (the magic-number pickle)."""
    obj = {'itr': 1, 'weight': torch.zeros(2), 'x': payload}
    if where == 'zip':
        torch.save(obj, path)
    elif where == 'legacy_object':
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        buf = io.BytesIO()
        torch.save({'itr': 1}, buf, _use_new_zipfile_serialization=False)
        data = buf.getvalue()
        with open(path, 'wb') as f:
            f.write(pickle.dumps(payload, protocol=2) + data[first_pickle_length(data):])


def one_error_line(capsys):
    """The stderr of a run that must have printed exactly one 'error:' line; returns it."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


def exits_with_one_line(main, argv, capsys):
    """Run an entry point in-process; it must exit 2 with one error line, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return one_error_line(capsys)


def tree(folder):
    """{relative path: bytes} of every file under folder."""
    out = {}
    for path in glob.glob(os.path.join(str(folder), '**'), recursive=True):
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                out[os.path.relpath(path, str(folder))] = f.read()
    return out


@pytest.fixture
def trained(tiny_run):
    """The session's 3-iteration run, saved every iteration: sets '' (itr 3), copy0 (3),
    copy1 (2)."""
    return tiny_run


@pytest.fixture
def run_dir(trained, tmp_path):
    """A copy of the trained run's folders to damage."""
    out = tmp_path / 'run'
    shutil.copytree(str(trained), str(out))
    return out


def resume_argv(data_root, out, *extra):
    return run_flags(data_root, str(out), NAME, '--total_itrs', '4', '--save_every', '1',
                     '--resume', *extra)


def sample_argv(data_root, out, *extra):
    return run_flags(data_root, str(out), NAME, '--sample_random', *extra)


# ----------------------------------------------------------------------------
# 1. No unrestricted unpickling anywhere.

def calls_in(path):
    """(line, dotted name, keywords) of every call in a Python file."""
    tree_ = ast.parse(open(path).read())
    for node in ast.walk(tree_):
        if isinstance(node, ast.Call):
            yield node.lineno, ast.unparse(node.func), {
                k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}


def test_audit_no_unrestricted_unpickling():
    """No module calls pickle.load(s), np.load(allow_pickle=True), or torch.load without
    weights_only=True, except torch.load of legacy files through the restricted release_pickle."""
    offenders = []
    files = glob.glob(os.path.join(ROOT, '*.py')) + glob.glob(os.path.join(ROOT, 'tools', '*.py'))
    for path in files:
        for line, name, kw in calls_in(path):
            where = f'{os.path.basename(path)}:{line} {name}'
            unpickles = name.endswith(('pickle.load', 'pickle.loads', 'Unpickler'))
            if unpickles and 'Release' not in name:
                offenders.append(where)
            if name.endswith('np.load') and kw.get('allow_pickle', 'False') != 'False':
                offenders.append(where)
            restricted = (kw.get('weights_only') == 'True'
                          or (kw.get('weights_only') == 'False'
                              and kw.get('pickle_module') == 'release_pickle'))
            if name.endswith('torch.load') and not restricted:
                offenders.append(where)
    assert not offenders
    # release_pickle's load is the restricted unpickler too: torch reads a legacy file's header
    # and storage keys with pickle_module.load.
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        checkpoints.release_pickle.load(io.BytesIO(pickle.dumps(System('/nonexistent'))))


@pytest.mark.parametrize('where', ['zip', 'legacy_object', 'legacy_header'])
@pytest.mark.parametrize('kind', sorted(PAYLOADS))
def test_torch_load_refuses_payloads(tmp_path, kind, where):
    marker = tmp_path / 'MARKER'
    path = str(tmp_path / 'x.pth')
    write_poisoned(path, PAYLOADS[kind](str(marker)), where)
    with pytest.raises(utils.ConfigError, match='x.pth'):
        checkpoints.torch_load(path)
    time.sleep(0.05)  # a Popen payload would need a moment
    assert not marker.exists()


@pytest.mark.parametrize('where', ['zip', 'legacy_object', 'legacy_header'])
@pytest.mark.parametrize('name', CHECKPOINT_FILES)
def test_load_weights_refuses_each_file(run_dir, tmp_path, name, where):
    """utils.load_weights refuses a poisoned file anywhere in the set, naming it, and leaves
    the models untouched."""
    marker = tmp_path / 'MARKER'
    path = run_dir / 'weights' / NAME / f'{name}.pth'
    write_poisoned(str(path), Nested(str(marker)), where)
    config = tiny_config('--ema')
    G, D, G_ema = tiny_models(config, seed=0)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with pytest.raises(utils.ConfigError, match=f'{name}.pth'):
        utils.load_weights(G, D, {}, str(run_dir / 'weights'), NAME, G_ema=G_ema)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


@pytest.mark.parametrize('where', ['zip', 'legacy_header'])
@pytest.mark.parametrize('name', CHECKPOINT_FILES)
def test_train_resume_refuses_each_file(data_root, run_dir, tmp_path, capsys, name, where):
    marker = tmp_path / 'MARKER'
    path = run_dir / 'weights' / NAME / f'{name}.pth'
    write_poisoned(str(path), System(str(marker)), where)
    before = tree(run_dir)
    line = exits_with_one_line(train.main, resume_argv(data_root, run_dir), capsys)
    # A companion file is refused before it is read: it is not the file state_dict.pth
    # recorded (test_sets.py); state_dict.pth itself is read by the restricted loader.
    why = 'not allowed' if name == 'state_dict' else 'is not the file state_dict.pth was saved'
    assert str(path) in line and why in line
    assert not marker.exists()
    assert tree(run_dir) == before  # nothing written, overwritten or deleted


@pytest.mark.parametrize('name,use_ema', [('G', False), ('G_ema', True), ('state_dict', True)])
def test_sample_refuses_poisoned_checkpoint(data_root, run_dir, tmp_path, capsys, name, use_ema):
    marker = tmp_path / 'MARKER'
    path = run_dir / 'weights' / NAME / f'{name}.pth'
    write_poisoned(str(path), Eval(str(marker)), 'legacy_object')
    argv = [a for a in sample_argv(data_root, run_dir) if use_ema or a != '--use_ema']
    line = exits_with_one_line(sample.main, argv, capsys)
    assert str(path) in line
    assert not marker.exists()


def test_config_from_name_refuses_poisoned_state(data_root, run_dir, tmp_path, capsys):
    marker = tmp_path / 'MARKER'
    path = run_dir / 'weights' / NAME / 'state_dict.pth'
    write_poisoned(str(path), Popen(str(marker)), 'zip')
    line = exits_with_one_line(
        sample.main, sample_argv(data_root, run_dir, '--config_from_name'), capsys)
    assert str(path) in line
    time.sleep(0.05)
    assert not marker.exists()


@pytest.mark.parametrize('key,value,expect', [
    ('G_ch', 10 ** 6, 'the weights of the Generator'),
    ('n_classes', 10 ** 9, 'the weights of the Generator'),
    ('G_attn', 64, 'G_attn=64'), ('G_lr', 'fast', "G_lr='fast'"), ('ema', 1, 'ema=1'),
    ('dim_z', 2.5, 'dim_z=2.5')])
def test_stored_config_of_wrong_types_or_sizes(data_root, run_dir, capsys, key, value, expect):
    """A stored config goes through each flag's type (checkpoints.load_weights) and the model it
    describes must fit in memory before it is built (utils.check_model_fits)."""
    path = run_dir / 'weights' / NAME / 'state_dict.pth'
    state = torch.load(str(path), weights_only=True)
    state['config'][key] = value
    torch.save(state, str(path))
    samples = run_dir / 'samples'
    shutil.rmtree(samples, ignore_errors=True)
    line = exits_with_one_line(
        sample.main, sample_argv(data_root, run_dir, '--config_from_name'), capsys)
    assert expect in line
    assert not samples.exists() or not any(samples.rglob('*.jpg'))


@pytest.mark.parametrize('flag,value', [
    ('--G_ch', 10 ** 6), ('--G_ch', 2 ** 58), ('--G_ch', 2 ** 63 - 1), ('--D_ch', 2 ** 62),
    ('--shared_dim', 2 ** 62)])
def test_a_model_too_large_for_memory_is_refused_at_start_up(data_root, tmp_path, capsys,
                                                             flag, value):
    """Widths whose weights exceed memory, and widths whose layer shapes exceed int64 (torch
    cannot take the shape: the attacker's round 12 saw its TypeError traceback), are refused
    in one line before anything is written."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1', flag, str(value))
    assert '(from the flags) take' in exits_with_one_line(train.main, argv, capsys)
    assert not out.exists()


@pytest.mark.parametrize('flag', ['--G_batch_size', '--batch_size'])
def test_a_batch_too_large_for_memory_is_refused_at_start_up(data_root, tmp_path, capsys,
                                                             flag):
    """A sampling batch of 10^9 images of 32 x 32 (12 TB: allocated at start-up for the fixed
    z) is refused in one line before anything is written."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1', flag, str(10 ** 9))
    line = exits_with_one_line(train.main, argv, capsys)
    assert '1000000000 images of 32 x 32' in line and 'more than the' in line
    assert not out.exists()


def test_a_latent_too_wide_for_memory_names_dim_z(data_root, tmp_path, capsys):
    """64 z of 10^9 floats (256 GB) are the size, not the 64 images of 32 x 32 (786 KB): the
    advice names --dim_z (it named the batch size, which could not help)."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1', '--batch_size', '64',
                     '--dim_z', str(10 ** 9))
    line = exits_with_one_line(train.main, argv, capsys)
    assert '64 latent vectors of 1000000000' in line and 'use a smaller --dim_z' in line
    assert not out.exists()


def test_an_npz_larger_than_the_disk_is_refused_at_start_up(data_root, run_dir, capsys):
    samples = run_dir / 'samples'
    shutil.rmtree(samples, ignore_errors=True)
    line = exits_with_one_line(sample.main, sample_argv(
        data_root, run_dir, '--sample_npz', '--sample_num_npz', str(10 ** 15)), capsys)
    assert '--sample_num_npz 1000000000000000 (32 x 32 images) need' in line
    assert not samples.exists()


@pytest.mark.parametrize('where', ['zip', 'legacy_object'])
def test_inception_weights_refused(data_root, tmp_path, capsys, where):
    """--inception_weights with a payload, in train.py and calculate_inception_moments.py."""
    marker = tmp_path / 'MARKER'
    weights = tmp_path / 'inception.pth'
    write_poisoned(str(weights), System(str(marker)), where)
    argv = run_flags(data_root, str(tmp_path / 'out'), NAME, '--test_every', '1', '--no_fid',
                     '--inception_weights', str(weights), '--total_itrs', '1')
    line = exits_with_one_line(train.main, argv, capsys)
    assert str(weights) in line
    line = exits_with_one_line(calculate_inception_moments.main, [
        '--dataset', 'S32', '--data_root', data_root, '--inception_weights', str(weights),
        '--device', 'cpu', '--num_workers', '0'], capsys)
    assert str(weights) in line
    assert not marker.exists()
    assert not (tmp_path / 'out').exists()


def test_moments_file_refused(data_root, tmp_path, capsys, monkeypatch):
    """A moments .npz holding pickled objects is refused when metrics load it."""
    marker = tmp_path / 'MARKER'
    root = tmp_path / 'data'
    root.mkdir()
    np.savez(root / 'S32_inception_moments.npz',
             mu=np.array([System(str(marker))], dtype=object), sigma=np.eye(2))
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: None)
    with pytest.raises(inception_utils.InceptionMomentsError,
                       match='S32_inception_moments.npz'):
        inception_utils.prepare_metrics('S32', data_root=str(root))
    assert not marker.exists()


def test_dataset_caches_refused(tmp_path, capsys):
    """The S32 cache, replaced by a file with pickled objects, is refused with one line naming
    it (delete it and it is rebuilt); an image folder's index, a cache, is rebuilt over such a
    file (files.check_npz refuses object arrays at the header). No pickle is loaded."""
    marker = tmp_path / 'MARKER'
    s32 = tmp_path / 'S32'
    s32.mkdir()
    np.savez(s32 / 'S32_seed0.npz', imgs=np.array([System(str(marker))], dtype=object),
             labels=np.zeros(1))
    line = exits_with_one_line(train.main, run_flags(
        str(tmp_path), str(tmp_path / 'out'), NAME, '--total_itrs', '1'), capsys)
    assert 'S32_seed0.npz' in line and 'delete it' in line
    folder = tmp_path / 'folder'
    for c in 'ab':
        (folder / c).mkdir(parents=True)
        torch.manual_seed(0)
        from PIL import Image
        for i in range(2):
            Image.new('RGB', (8, 8)).save(folder / c / f'{i}.png')
    datasets.ImageFolder(str(folder), index_filename='x_imgs.npz')
    np.savez(folder / 'x_imgs.npz', signature=np.array([System(str(marker))], dtype=object))
    assert len(datasets.ImageFolder(str(folder), index_filename='x_imgs.npz')) == 4
    with np.load(folder / 'x_imgs.npz', allow_pickle=False) as rebuilt:
        assert rebuilt['signature'].dtype.kind == 'U'
    assert not marker.exists()


def test_release_legacy_state_dict_still_loads(tmp_path):
    """A legacy-format state_dict.pth with nn.ReLU objects and numpy floats, as the release
    wrote it, loads through the restricted unpickler."""
    config = dict(tiny_config(), G_activation=torch.nn.ReLU(), D_activation=torch.nn.ReLU())
    path = str(tmp_path / 'state_dict.pth')
    torch.save({'itr': 7, 'best_IS': np.float64(1.5), 'config': config}, path,
               _use_new_zipfile_serialization=False, pickle_protocol=2)
    loaded = checkpoints.torch_load(path)
    assert loaded['itr'] == 7 and loaded['best_IS'] == 1.5 and type(loaded['best_IS']) is float
    assert isinstance(loaded['config']['G_activation'], torch.nn.ReLU)


# ----------------------------------------------------------------------------
# 2. One clear line and exit status 2 for every bad input, nothing written first.

def truncated(path):
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])


DAMAGE = {
    'truncated': truncated,
    'zero-byte': lambda path: open(path, 'wb').close(),
    'empty-dict': lambda path: torch.save({}, path),
    'wrong-type': lambda path: torch.save([1, 2, 3], path),
    'garbage': lambda path: open(path, 'wb').write(os.urandom(999)),
}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
@pytest.mark.parametrize('name', CHECKPOINT_FILES)
def test_damaged_checkpoint_file(data_root, run_dir, capsys, name, damage):
    path = run_dir / 'weights' / NAME / f'{name}.pth'
    DAMAGE[damage](str(path))
    before = tree(run_dir)
    line = exits_with_one_line(train.main, resume_argv(data_root, run_dir), capsys)
    assert str(path) in line
    assert tree(run_dir) == before


def test_missing_file_names_it_and_the_complete_sets(data_root, run_dir, capsys):
    (run_dir / 'weights' / NAME / 'D.pth').unlink()
    (run_dir / 'weights' / NAME / 'G_optim_copy1.pth').unlink()
    before = tree(run_dir)
    line = exits_with_one_line(train.main, resume_argv(data_root, run_dir), capsys)
    assert 'missing D.pth' in line
    assert "complete sets there: 'copy0'" in line and '--load_weights copy0' in line
    assert tree(run_dir) == before
    # The suggested set loads.
    utils.load_weights(*tiny_models(tiny_config('--ema'), 0)[:2], {}, str(run_dir / 'weights'),
                       NAME, 'copy0', tiny_models(tiny_config('--ema'), 0)[2])


@pytest.mark.parametrize('root', ['weights_root', 'logs_root', 'samples_root'])
def test_root_below_a_file(data_root, tmp_path, capsys, root):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    argv = run_flags(data_root, str(tmp_path / 'out'), NAME, '--total_itrs', '1')
    argv += [f'--{root}', str(blocker / 'below')]
    line = exits_with_one_line(train.main, argv, capsys)
    assert f'--{root}' in line and 'cannot be created' in line
    assert not (tmp_path / 'out').exists()


def bad_value(domain):
    """A value just outside a flags.DOMAINS bound."""
    if domain[0] in '[(':
        low, high = (float(v) for v in domain[1:-1].split(','))
        return str(-1 if low == 0 and high > 1e6 else int(high) + 1 if domain.endswith(']')
                   else high)
    op, bound = domain.split()
    bound = float(bound)
    return str(int(bound) - 1 if bound == int(bound) and op == '>=' else bound)


ENTRY_OF = {'sample_num_npz': 'sample', 'truncation': 'sample', 'kid_feats': 'moments',
            'chunk_size': 'make_hdf5'}


@pytest.mark.parametrize('key', sorted(flags.DOMAINS))
def test_numeric_flag_outside_its_domain(data_root, tmp_path, capsys, key):
    value = bad_value(flags.DOMAINS[key])
    assert not flags.in_domain(float(value), flags.DOMAINS[key])
    out = tmp_path / 'out'
    entry = ENTRY_OF.get(key, 'train')
    if entry == 'train':
        main, argv = train.main, run_flags(data_root, str(out), NAME, '--total_itrs', '1')
    elif entry == 'sample':
        main, argv = sample.main, sample_argv(data_root, out, '--sample_npz')
    elif entry == 'moments':
        main, argv = calculate_inception_moments.main, ['--dataset', 'S32', '--data_root',
                                                         str(out)]
    else:
        main, argv = make_hdf5.main, ['--dataset', 'S32', '--data_root', str(out)]
    line = exits_with_one_line(main, argv + [f'--{key}', value], capsys)
    assert f'--{key} must be {flags.DOMAINS[key]}' in line
    assert not out.exists()


@pytest.mark.parametrize('flag,value', [('--G_lr', 'nan'), ('--D_B2', 'inf'),
                                        ('--ema_decay=-inf', None)])
def test_non_finite_flag_values(data_root, tmp_path, capsys, flag, value):
    argv = run_flags(data_root, str(tmp_path / 'out'), NAME) + [flag] + ([value] if value else [])
    assert flag.split('=')[0] in exits_with_one_line(train.main, argv, capsys)


@pytest.mark.parametrize('flag,value', [
    ('--G_attn', 'x'), ('--D_attn', '64_'), ('--norm_style', 'xx'), ('--norm_style', 'gn_ch_0'),
    ('--logstyle', '%q'), ('--logstyle', '%s%s%s'), ('--logstyle', '%(x)s'),
    ('--logstyle', '%999999999d'), ('--logstyle', '{}'), ('--device', 'foo'),
    ('--device', 'cuda:99')])
def test_string_flags_of_a_fixed_shape(data_root, tmp_path, capsys, flag, value):
    """A string flag the models or the logs parse is refused at start-up unless it has the
    shape they parse (an unbounded %-width would make every .log line gigabytes)."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1') + [flag, value]
    assert flag in exits_with_one_line(train.main, argv, capsys)
    assert not out.exists()


@pytest.mark.parametrize('value', ['64', '16_32_64', '0'])
def test_attention_flags_the_models_parse(value):
    """What the pattern lets through is what BigGAN's constructor parses."""
    flags.check_flags({'G_attn': value, 'D_attn': value, 'norm_style': 'gn_grp_2',
                       'logstyle': '%3.3e'})
    G = BigGAN.Generator(G_ch=8, dim_z=8, resolution=64, G_attn=value, n_classes=2,
                         norm_style='gn_grp_2', skip_init=True)
    D = BigGAN.Discriminator(D_ch=8, resolution=64, D_attn=value, n_classes=2, skip_init=True)
    z, y = torch.randn(2, 8), torch.tensor([0, 1])
    assert D(G(z, G.shared(y)), y).shape == (2, 1)


@pytest.mark.parametrize('extra,expect', [
    (['--sample_trunc_curves', '0_0.1_1'], 'start > 0'),
    (['--sample_trunc_curves', '1_0_2'], 'step > 0'),
    (['--sample_trunc_curves', 'a_b'], 'start_step_end'),
    # Not finite: an OverflowError or ValueError traceback counting the values (round 12).
    (['--sample_trunc_curves', '0.1_0.1_inf'], 'finite numbers'),
    (['--sample_trunc_curves', '0.1_0.1_1e309'], 'finite numbers'),
    (['--sample_trunc_curves', '0.1_nan_1'], 'finite numbers'),
    (['--sample_trunc_curves', 'nan_0.1_1'], 'finite numbers'),
    (['--sample_inception_metrics', '--num_inception_images', '9'], 'at least 10')])
def test_sampling_ranges(data_root, run_dir, capsys, extra, expect):
    line = exits_with_one_line(sample.main, sample_argv(data_root, run_dir, *extra), capsys)
    assert expect in line


def test_data_folders_without_images(tmp_path, capsys):
    """train.py on an image folder without images, or with a class of none or one."""
    (tmp_path / 'empty').mkdir()
    from PIL import Image
    folders = {}
    for name, sizes in (('one_empty_class', (2, 0)), ('one_image_class', (2, 1))):
        folders[name] = tmp_path / name
        for cls, n in zip('ab', sizes):
            (folders[name] / cls).mkdir(parents=True)
            for i in range(n):
                Image.new('RGB', (8, 8)).save(folders[name] / cls / f'{i}.png')
    for root, expect in [
            (tmp_path / 'empty', 'no class folders and no images'),
            (folders['one_empty_class'], f"class folder {folders['one_empty_class'] / 'b'} "
                                         f'holds 0 images; a class needs at least 2'),
            (folders['one_image_class'], f"class folder {folders['one_image_class'] / 'b'} "
                                         f'holds 1 image; a class needs at least 2')]:
        argv = run_flags(str(tmp_path), str(tmp_path / 'out'), NAME) + [
            '--dataset', 'mine', '--dataset_root', str(root), '--resolution', '32',
            '--n_classes', '2']
        assert expect in exits_with_one_line(train.main, argv, capsys)
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------
# 3. Nothing is lost when a run dies.

def dead_pid():
    """The pid of a process that has exited."""
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_stale_temporaries_removed_at_start(data_root, tmp_path):
    """At start-up a run removes this host's temporary files whose writer is gone, and keeps
    those of running writers and of other hosts."""
    out = tmp_path / 'out'
    folder = out / 'weights' / NAME
    sheets = out / 'samples' / NAME / '2'
    folder.mkdir(parents=True)
    sheets.mkdir(parents=True)
    live = subprocess.Popen(['sleep', '60'])
    try:
        dead = files.temp_path(str(folder / 'G.pth')).rsplit('-', 1)[0] + f'-{dead_pid()}'
        running = dead.rsplit('-', 1)[0] + f'-{live.pid}'
        other = str(folder / f'D.pth.tmp-otherhost-{dead_pid()}')
        sheet = files.temp_path(str(sheets / 'samples0.jpg')).rsplit('-', 1)[0] + '-1'
        scratch = dead.replace('G.pth', 'samples.npz.parts')
        for path in (dead, running, other, sheet):
            open(path, 'w').close()
        os.makedirs(scratch)
        train.run(vars(utils.prepare_parser().parse_args(run_flags(
            data_root, str(out), NAME, '--total_itrs', '1', '--save_every', '0'))))
        assert not os.path.exists(dead) and not os.path.exists(scratch)
        assert os.path.exists(running) and os.path.exists(other)
        # pid 1 runs (init), so a file claiming it is kept.
        assert os.path.exists(sheet)
    finally:
        live.kill()


def test_make_hdf5_removes_its_own_stale_partial(tmp_path):
    out = tmp_path / 'S32.hdf5'
    stale = files.temp_path(str(out)).rsplit('-', 1)[0] + f'-{dead_pid()}'
    someone_elses = files.temp_path(str(tmp_path / 'other.hdf5')).rsplit(
        '-', 1)[0] + f'-{dead_pid()}'
    for path in (stale, someone_elses):
        open(path, 'w').close()
    s32 = tmp_path / 'S32'
    s32.mkdir()
    np.savez(s32 / 'S32_seed0.npz', imgs=np.zeros((20, 32, 32, 3), np.uint8),
             labels=np.arange(20) % 10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, 'S32_DEFAULT_PER_CLASS', 2)
        make_hdf5.main(['--dataset', 'S32', '--data_root', str(tmp_path), '--no_progress',
                        '--num_workers', '0'])
    assert out.exists() and not os.path.exists(stale)
    assert os.path.exists(someone_elses)  # another output's temporary is not ours to judge


def test_kills_during_saves_leave_no_litter(data_root, tmp_path):
    """SIGKILL a run that saves every iteration, several times; each restart removes what the
    killed one left, and the latest checkpoint always loads."""
    out = tmp_path / 'out'
    argv = [sys.executable, os.path.join(ROOT, 'train.py')] + run_flags(
        data_root, str(out), NAME, '--save_every', '1', '--total_itrs', '100000')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    folder = out / 'weights' / NAME
    for attempt in range(3):
        proc = subprocess.Popen(argv + (['--resume'] if attempt else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.time() + 120
        while not (folder / 'state_dict.pth').exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0 + 0.37 * attempt)  # a few more saves, then a kill somewhere in one
        proc.kill()
        proc.wait()
        G, D, G_ema = tiny_models(tiny_config('--ema'), 0)
        utils.load_weights(G, D, {}, str(out / 'weights'), NAME, G_ema=G_ema)
    train.run(vars(utils.prepare_parser().parse_args(run_flags(
        data_root, str(out), NAME, '--save_every', '1', '--resume',
        '--total_itrs', str(checkpoints.torch_load(str(folder / 'state_dict.pth'))['itr'] + 1)))))
    leftovers = [p for p in glob.glob(str(out / '**'), recursive=True) if '.tmp-' in p]
    assert not leftovers


def poison_at(itr, nets):
    """A wrapper for train_fns.GAN_training_function whose step fills nets' weights with NaN
    before iteration itr."""
    real = train.train_fns.GAN_training_function

    def make(G, D, GD, z_, y_, ema, state_dict, config, precision=None, **kwargs):
        step = real(G, D, GD, z_, y_, ema, state_dict, config, precision, **kwargs)
        models = {'G': G, 'D': D, 'G_ema': ema.target if ema else None}

        def train_(x, y):
            if state_dict['itr'] == itr:
                with torch.no_grad():
                    for name in nets:
                        next(models[name].parameters()).fill_(float('nan'))
            return step(x, y)
        return train_
    return make


def test_nan_stops_run_and_keeps_last_checkpoint(data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--save_every', '2', '--total_itrs', '6')
    monkeypatch.setattr(train.train_fns, 'GAN_training_function', poison_at(3, ['D']))
    line = exits_with_one_line(train.main, argv, capsys)
    assert 'diverged at iteration 3' in line and f"{out / 'weights' / NAME} (itr 2)" in line
    assert line.endswith(f'(--resume --experiment_name {NAME} --G_lr ... --D_lr ...)')
    saved = checkpoints.torch_load(str(out / 'weights' / NAME / 'state_dict.pth'))
    assert saved['itr'] == 2
    for name in ('G', 'D', 'G_ema'):
        weights = checkpoints.torch_load(str(out / 'weights' / NAME / f'{name}.pth'))
        assert checkpoints.first_nonfinite(weights) is None


def test_a_resume_with_new_rates_of_a_built_name_says_to_name_the_run(data_root, tmp_path,
                                                                       capsys):
    """Without --experiment_name the name is built from the flags, rates included: the
    advised --resume --G_lr looked in another folder and said 'train first' (the outside
    attacker's round 10). It says why and what to pass; the divergence line names the run."""
    out = tmp_path / 'out'
    train.main(run_flags(data_root, str(out), '', '--total_itrs', '1'))
    built = next(line for line in capsys.readouterr().out.splitlines()
                 if line.startswith('Experiment name is ')).split()[-1]
    line = exits_with_one_line(train.main, run_flags(
        data_root, str(out), '', '--total_itrs', '2', '--resume', '--G_lr', '1e-5'), capsys)
    assert line.startswith('error: nothing to resume at ') and '--experiment_name' in line
    train.main(run_flags(data_root, str(out), built, '--total_itrs', '2', '--resume',
                         '--G_lr', '1e-5'))
    assert "--G_lr 1e-05 overrides the checkpoint's" in capsys.readouterr().out


def test_a_divergence_before_any_checkpoint_advises_a_new_start(data_root, tmp_path, capsys,
                                                                monkeypatch):
    """Diverged at iteration 1: the line said 'the last checkpoint, none (...), is left as it
    was: resume from it', from nothing (the outside attacker's round 8)."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--save_every', '2', '--total_itrs', '6')
    monkeypatch.setattr(train.train_fns, 'GAN_training_function', poison_at(1, ['D']))
    line = exits_with_one_line(train.main, argv, capsys)
    assert line.endswith('no checkpoint was saved before it: start again with lower learning '
                         'rates') and 'resume' not in line


def test_a_diverged_step_is_neither_shown_nor_logged(data_root, tmp_path, capsys):
    """Round 9's G: rates of 1e38 diverge at iteration 1, and the progress line and the loss
    logs showed `nan` as that iteration's losses before the stop's line."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--save_every', '1', '--total_itrs', '3',
                     '--G_lr', '1e38', '--D_lr', '1e38')
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert 'training diverged at iteration 1' in captured.err
    # Only the stop's own line names the losses.
    others = [line for line in (captured.out + captured.err).splitlines()
              if 'training diverged' not in line]
    assert others and not [line for line in others if 'nan' in line.lower()]
    logs = tree(out / 'logs')
    assert logs and not [name for name, data in logs.items() if b'nan' in data.lower()]


def test_an_inf_loss_with_finite_weights_stops_unless_a_scaler_skipped_it(tmp_path):
    """fp32, rates of 3e38 after a run at 1e12: D_loss_real inf, the weights still finite;
    the run went on, showing `+inf` and logging `9: inf` (the outside attacker's round 10).
    Without a GradScaler the step was taken: the run stops. With one (fp16) the step was
    skipped: training goes on, and the losses are not logged."""
    nets = {'G': torch.nn.Linear(2, 2), 'D': torch.nn.Linear(2, 2)}
    metrics = {'G_loss': 1.0, 'D_loss_real': float('inf'), 'D_loss_fake': 0.5}
    root = str(tmp_path)
    assert checkpoints.check_finite_step(dict(metrics, D_loss_real=2.0), nets, 9, root, NAME)
    assert not checkpoints.check_finite_step(metrics, nets, 9, root, NAME, scaled=True)
    with pytest.raises(checkpoints.StopRun, match='diverged at iteration 9 .*D_loss_real inf.*; '
                                                  'the step was taken with them'):
        checkpoints.check_finite_step(metrics, nets, 9, root, NAME)
    with torch.no_grad():
        nets['D'].weight[0, 0] = float('nan')
    with pytest.raises(checkpoints.StopRun, match='D.weight is NaN or Inf'):
        checkpoints.check_finite_step(metrics, nets, 9, root, NAME, scaled=True)


HUGE = '1' + '0' * 320  # an int past float range


@pytest.mark.parametrize('main,argv,why', [
    (train.main, ['--dataset', 'S32', '--batch_size', HUGE], 'beyond int64'),
    (train.main, ['--dataset', 'S32', '--dim_z', HUGE], 'beyond int64'),
    (train.main, ['--dataset', 'S32', '--G_ch', HUGE], '--G_ch (321 digits) is beyond int64'),
    (train.main, ['--dataset', 'S32', '--total_itrs', str(2 ** 63)], 'is beyond int64'),
    (sample.main, ['--dataset', 'S32', '--sample_trunc_curves', '1_1_1e308'],
     'take about 10^299 GB')])
def test_a_count_past_float_range_is_one_line(main, argv, why, tmp_path, capsys):
    """An int flag of 321 digits, or a size past float range: OverflowError tracebacks in
    the flag check (math.isfinite on the int) and in the size's GB figure (the outside
    attacker's round 10); a --G_ch past int64 reached torch's sizes (TypeError)."""
    roots = ['--base_root', str(tmp_path)]
    assert why in exits_with_one_line(main, argv + roots, capsys)
    assert not any(tmp_path.iterdir())


def edit_in_set(folder, name, edit):
    """edit(weights) on folder/name.pth, its digest in the set's record updated: the file
    reaches the checks after the record's."""
    weights = checkpoints.torch_load(str(folder / f'{name}.pth'))
    edit(weights)
    torch.save(weights, folder / f'{name}.pth')
    record = checkpoints.torch_load(str(folder / 'state_dict.pth'))
    record['files'][f'{name}.pth'] = checkpoints.file_digest(str(folder / f'{name}.pth'))
    torch.save(record, folder / 'state_dict.pth')


def test_a_missing_parameter_is_refused_where_buffers_may_be(data_root, run_dir, capsys):
    """sample.py loads G_ema as the release did, not strictly (buffers may be missing), and
    loaded one without a conv weight silently, which then kept its random start (the outside
    attacker's round 10)."""
    key = 'blocks.0.0.conv1.weight'
    edit_in_set(run_dir / 'weights' / NAME, 'G_ema', lambda weights: weights.pop(key))
    line = exits_with_one_line(sample.main, sample_argv(data_root, run_dir, '--use_ema'),
                               capsys)
    assert f'missing keys: {key}' in line and 'G_ema.pth does not match' in line


def test_nan_pixels_from_finite_weights_are_never_written(data_root, run_dir, capsys):
    """G_ema.pth with every spectral-norm vector zeroed (finite; the record updated): each
    image was NaN, written as black pixels to samples.npz and the sheets, exit 0 (the outside
    attacker's round 10). Now one line naming the file not written, and none is."""
    def zero_sn_vectors(weights):
        for key, value in weights.items():
            if key.rsplit('.', 1)[-1].startswith('u') and key[-1].isdigit():
                value.zero_()
    edit_in_set(run_dir / 'weights' / NAME, 'G_ema', zero_sn_vectors)
    before = tree(run_dir / 'samples')
    line = exits_with_one_line(sample.main, sample_argv(data_root, run_dir, '--use_ema',
                                                        '--sample_npz', '--sample_num_npz',
                                                        '8'), capsys)
    assert line.startswith('error: G drew NaN or Inf pixels, so ') and 'damaged' in line
    assert tree(run_dir / 'samples') == before


def test_nan_in_ema_only_is_never_saved(data_root, tmp_path, capsys, monkeypatch):
    """Finite losses but a NaN G_ema: the save refuses and the run stops."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--save_every', '2', '--total_itrs', '6')
    # The EMA keeps the NaN: 0 * NaN is NaN, whatever the decay.
    monkeypatch.setattr(train.train_fns, 'GAN_training_function', poison_at(3, ['G_ema']))
    line = exits_with_one_line(train.main, argv, capsys)
    assert 'not saving iteration 4' in line and 'G_ema' in line and '(itr 2)' in line
    assert checkpoints.torch_load(str(out / 'weights' / NAME / 'state_dict.pth'))['itr'] == 2


@pytest.mark.parametrize('failing,before', [
    (9, 'the previous checkpoint there is whole'),
    # The first set: the line said so too, of a checkpoint that was never there (round 7).
    (3, 'there was no checkpoint there before')])
def test_full_disk_during_save(data_root, tmp_path, capsys, monkeypatch, failing, before):
    """ENOSPC while writing the second checkpoint: the first stays whole and loadable, no
    partial file is left, the run stops with one line that says which; or while writing the
    first, and the line says there was none."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--save_every', '2', '--total_itrs', '6',
                     '--num_save_copies', '0')
    real, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == failing:  # the third file of the set
            with open(f, 'wb') as half:
                half.write(b'\0' * 100)
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', full_disk)
    line = exits_with_one_line(train.main, argv, capsys)
    assert 'No space left on device' in line and before in line
    monkeypatch.undo()
    if failing == 3:
        folder = out / 'weights' / NAME
        assert 'iteration 2' in line and (not folder.exists() or os.listdir(folder) == [])
        return
    assert 'iteration 4' in line
    folder = out / 'weights' / NAME
    assert sorted(os.listdir(folder)) == sorted(f'{n}.pth' for n in CHECKPOINT_FILES)
    G, D, G_ema = tiny_models(tiny_config('--ema'), 0)
    state = {}
    utils.load_weights(G, D, state, str(out / 'weights'), NAME, G_ema=G_ema)
    assert state['itr'] == 2


FAIL_ON_RANK1 = '''
import sys
sys.path.insert(0, {root!r})
import train, train_fns
real = train_fns.GAN_training_function
def failing(G, D, GD, z_, y_, ema, state_dict, config, precision=None, **kwargs):
    step = real(G, D, GD, z_, y_, ema, state_dict, config, precision, **kwargs)
    def train_(x, y):
        import torch.distributed as dist
        if dist.get_rank() == 1 and state_dict['itr'] == 4:
            raise RuntimeError('injected failure on rank 1')
        return step(x, y)
    return train_
train_fns.GAN_training_function = failing
train.main()
'''


def test_torchrun_rank_failure_ends_the_job(data_root, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    script = tmp_path / 'fail.py'
    script.write_text(FAIL_ON_RANK1.format(root=ROOT))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
           '2', str(script)] + run_flags(data_root, str(out), NAME, '--save_every', '2',
                                          '--total_itrs', '100')
    start = time.time()
    proc = subprocess.run(cmd, cwd=str(out), env={**os.environ, 'OMP_NUM_THREADS': '1'},
                          capture_output=True, text=True, timeout=240)
    took = time.time() - start
    assert proc.returncode != 0
    assert 'injected failure on rank 1' in proc.stderr + proc.stdout
    assert took < 120, took  # bounded: no hang in a collective
    state = {}
    utils.load_weights(None, None, state, str(out / 'weights'), NAME, load_optim=False)
    assert state['itr'] == 2


# ----------------------------------------------------------------------------
# 4. Outputs get normal file modes.

def test_outputs_respect_umask(data_root, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / 'out'
        train.run(vars(utils.prepare_parser().parse_args(run_flags(
            data_root, str(out), NAME, '--total_itrs', '2', '--save_every', '2'))))
        sample.main(sample_argv(data_root, out, '--sample_npz', '--sample_num_npz', '4'))
        inception_utils.save_inception_moments(str(tmp_path / 'm.npz'), np.zeros(2), np.eye(2),
                                               'torchvision')
        make_hdf5.write_hdf5(str(tmp_path / 'x.hdf5'),
                             [(np.zeros((2, 3, 8, 8), np.uint8), np.zeros(2), [])], 2, 8,
                             {'compression': False, 'compression_filter': 'lzf',
                              'chunk_size': 2, 'no_progress': True, 'skip_bad': False})
        files = [p for p in glob.glob(str(tmp_path / '**'), recursive=True) if os.path.isfile(p)]
        assert len(files) > 20
        modes = {os.path.relpath(p, str(tmp_path)): oct(os.stat(p).st_mode & 0o777)
                 for p in files}
        assert set(modes.values()) == {'0o644'}, modes
    finally:
        os.umask(old)


def test_host_name_in_temp_pattern():
    """Temporary names carry this host, so a shared file system's other nodes are left be."""
    name = files.temp_path('/x/G.pth')
    m = files._TEMP.match(os.path.basename(name))
    assert m and m['target'] == 'G.pth' and int(m['pid']) == os.getpid()
    assert m['host'] == files._HOST and m['host'][:1] == socket.gethostname()[:1]


def test_sigterm_unwinds_and_cleans_up(tmp_path):
    """run_cli turns SIGTERM into an unwinding exit (status 143) so temporary files go."""
    target = tmp_path / 'big.bin'

    def run(config):
        with files.atomic_open(str(target)) as f:
            f.write(b'x')
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    parser = flags.new_parser('t')
    with pytest.raises(SystemExit) as info:
        flags.run_cli(run, parser, [])
    assert info.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


def test_planted_symlink_cannot_redirect_a_write(tmp_path):
    """A symlink planted under the temporary name a write will use is replaced, not followed."""
    victim = tmp_path / 'victim'
    victim.write_text('precious')
    target = tmp_path / 'G.pth'
    os.symlink(victim, files.temp_path(str(target)))
    with files.atomic_open(str(target)) as f:
        f.write(b'new')
    assert victim.read_text() == 'precious' and target.read_bytes() == b'new'
    assert sorted(os.listdir(tmp_path)) == ['G.pth', 'victim']


def test_unusable_hdf5_files(tmp_path, capsys):
    """An HDF5 file without the datasets, with mismatched ones, or not HDF5 at all: one line."""
    import h5py
    files = {'no_imgs.hdf5': "no 'imgs' and 'labels'", 'mismatch.hdf5': 'are not N x 3',
             'garbage.hdf5': 'file signature not found'}
    with h5py.File(tmp_path / 'no_imgs.hdf5', 'w') as f:
        f['labels'] = np.zeros(8, np.int64)
    with h5py.File(tmp_path / 'mismatch.hdf5', 'w') as f:
        f['imgs'] = np.zeros((8, 3, 32, 32), np.uint8)
        f['labels'] = np.zeros(5, np.int64)
    (tmp_path / 'garbage.hdf5').write_bytes(b'not hdf5')
    for name, expect in files.items():
        argv = run_flags(str(tmp_path), str(tmp_path / 'out'), NAME) + [
            '--dataset', 'mine', '--dataset_root', str(tmp_path / name), '--resolution', '32',
            '--n_classes', '10']
        line = exits_with_one_line(train.main, argv, capsys)
        assert expect in line and name in line
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('value', ['FOO', '', ' , '])
def test_metrics_flag_checked_even_without_tests(data_root, tmp_path, capsys, value):
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1', '--metrics', value)
    assert '--metrics' in exits_with_one_line(train.main, argv, capsys)
    assert not out.exists()


def test_make_hdf5_refuses_a_fifo_named_like_an_image(tmp_path, capsys):
    """A FIFO named x.png would block make_hdf5's reader forever."""
    from PIL import Image
    folder = tmp_path / 'imgs' / 'a'
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f'{i}.png')
    os.mkfifo(folder / 'x.png')
    with pytest.raises(SystemExit) as info:
        make_hdf5.main(['--dataset', 'mine', '--dataset_root', str(tmp_path / 'imgs'),
                        '--resolution', '32', '--data_root', str(tmp_path / 'out'),
                        '--num_workers', '0'])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
    assert len(errors) == 1 and 'x.png' in errors[0] and 'not a regular file' in errors[0]
    assert not glob.glob(str(tmp_path / 'out' / '*.hdf5'))


@pytest.mark.parametrize('flag,where', [('--G', '32'), ('--D', '16')])
def test_attention_on_too_few_channels_is_refused_before_writing(data_root, tmp_path, capsys,
                                                                 flag, where):
    """At 32 px every stage has 4 x ch channels, so ch 1 leaves attention 4 channels, and 4 // 8
    query channels: nothing to attend with (the first forward failed on an empty reshape)."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1') + [
        f'{flag}_ch', '1', f'{flag}_attn', where]
    line = exits_with_one_line(train.main, argv, capsys)
    assert 'self-attention needs at least 8 channels where it sits, got 4' in line
    assert not out.exists()


# (flags given, the flags that switch on what they act through, as the note names them) --
# written out here, not read from flags.py.
ROLLBACK = ['--collapse_watch', '--on_collapse', 'rollback']
KID = 'KID among the metrics (--kid) and --test_every > 0'
HDF5_SHUFFLED = 'an HDF5 training set, shuffled (--shuffle or --use_multiepoch_sampler)'
INERT = [(['--LC_start', '5'], ['--LC', '0.1'], '--LC > 0'),
         (['--LC_ema_decay', '0.5'], ['--LC', '0.1'], '--LC > 0'),
         (['--R1_every', '4'], ['--R1', '1'], '--R1 > 0'),
         (['--CR_augment', 'translation'], ['--CR', '1'], '--CR > 0'),
         (['--ema_decay', '0.9'], ['--ema'], '--ema'),
         (['--ema_start', '7'], ['--ema'], '--ema'),
         (['--use_ema'], ['--ema'], '--ema'),
         (['--G_depth', '3'], ['--model', 'BigGANdeep'], '--model BigGANdeep'),
         (['--shared_dim', '7'], ['--G_shared'], '--G_shared'),
         (['--num_standing_accumulations', '5'], ['--accumulate_stats'], '--accumulate_stats'),
         (['--G_fp16'], ['--amp', 'fp16'], '--amp fp16 (here --amp bf16)'),
         (['--num_save_copies', '4', '--save_every', '0'], ['--save_every', '5'],
          '--save_every > 0'),
         (['--which_best', 'FID', '--test_every', '0'], ['--test_every', '5'],
          '--test_every > 0'),
         (['--max_rollbacks', '1'], ROLLBACK, ' '.join(ROLLBACK)),
         (['--collapse_lr_scale', '0.25'], ROLLBACK, ' '.join(ROLLBACK)),
         (['--metrics', 'IS', '--test_every', '0'], ['--test_every', '5'], '--test_every > 0'),
         (['--kid', '--test_every', '0'], ['--test_every', '5'], '--test_every > 0'),
         (['--no_fid', '--test_every', '0'], ['--test_every', '5'], '--test_every > 0'),
         (['--inception_backend', 'tf_fid', '--test_every', '0'], ['--test_every', '5'],
          '--test_every > 0'),
         (['--inception_weights', 'w.pth', '--test_every', '0'], ['--test_every', '5'],
          '--test_every > 0'),
         (['--kid_subsets', '50'], ['--kid'], KID),
         (['--kid_subset_size', '50'], ['--metrics', 'FID,KID'], KID),
         (['--prdc_k', '3'], ['--metrics', 'PRDC'], 'PRDC among --metrics and --test_every > 0'),
         (['--intra_fid_per_class', '3'], ['--metrics', 'IS,intraFID'],
          'intraFID among --metrics and --test_every > 0'),
         (['--chunk_window', '4', '--dataset', 'C10', '--shuffle'], ['--dataset_root', 'my.hdf5'],
          HDF5_SHUFFLED),
         (['--chunk_window', '4', '--dataset_root', 'my.hdf5'], ['--shuffle'], HDF5_SHUFFLED),
         (['--chunk_window', '4', '--dataset_root', 'my.hdf5'], ['--use_multiepoch_sampler'],
          HDF5_SHUFFLED)]


@pytest.mark.parametrize('given,through,named', INERT, ids=[g[0] for g, _, _ in INERT])
def test_a_flag_that_acts_through_an_off_flag_is_named(given, through, named):
    """Given without what it acts through, a flag changes nothing: one note names it; with
    that flag on, or at its default, there is no note."""
    context = ['--amp', 'bf16'] if given == ['--G_fp16'] else []  # what turns it off
    parse = utils.prepare_parser().parse_args
    flag = given[:1] if len(given) == 1 or given[1].startswith('--') else given[:2]
    assert flags.inert_flags(vars(parse(given + context))) == [
        f"note: {' '.join(flag)} has no effect without {named}"]
    assert flags.inert_flags(vars(parse(given + context + through))) == []
    assert flags.inert_flags(vars(parse([]))) == []


@pytest.mark.parametrize('flag,named,reading', [
    ('--pbar', ['mine', 'tqdm'], 'the tqdm bar'),
    ('--G_param', ['SN', 'plain'], 'the plain layers, without spectral norm'),
    ('--D_param', ['SN', 'plain'], 'the plain layers, without spectral norm'),
    ('--which_train_fn', ['GAN'], 'the dummy step, which trains nothing')])
def test_a_release_string_outside_its_values_is_named(flag, named, reading):
    """The release read these strings by one or two values and any other as a fallback (a
    typo, --pbar foo, ran silently with tqdm): a note says which, and the run goes on as the
    release's did; the values named give no note."""
    parse = utils.prepare_parser().parse_args
    assert flags.inert_flags(vars(parse([flag, 'foo']))) == [
        f"note: {flag} 'foo' is none of {', '.join(named)}: read as {reading}, as the release "
        f'read any other value']
    assert all(flags.inert_flags(vars(parse([flag, v]))) == [] for v in named)


@pytest.mark.parametrize('value,refused', [('1e-46', True), ('7e-46', True), ('1e-45', False),
                                           ('1e-300', True)])
def test_a_positive_flag_that_is_0_in_float32_is_refused(value, refused):
    """--adam_eps 1e-46 passed the '> 0' domain in float64 and is 0 in float32, in which
    Adam divides by it: NaN at the first step. The boundary is numpy's float32 rounding."""
    assert (np.float32(float(value)) == 0) == refused  # the independent rounding
    config = {'adam_eps': float(value)}
    if refused:
        with pytest.raises(utils.ConfigError, match=f'--adam_eps {float(value)!r} is 0 in '
                                                    'float32'):
            flags.check_flags(config)
    else:
        flags.check_flags(config)


def test_train_prints_the_note_of_an_inert_flag(data_root, tmp_path, capsys):
    train.main(run_flags(data_root, str(tmp_path / 'out'), NAME, '--total_itrs', '1',
                         '--save_every', '0', '--R1_every', '4'))
    assert 'note: --R1_every 4 has no effect without --R1 > 0' in capsys.readouterr().out


TOOLS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'tools', '*.py')))

# (tool, arguments, what its one line says): the outside attacker's round 7, each a
# traceback, a run of minutes or argparse's usage text before.
TOOL_REFUSALS = [
    ('bench_make_hdf5', ['--sizes', '50', '10', '--n_images', '4'], 'the smallest side first'),
    ('bench_metrics', ['--n', '4', '--k', str(2 ** 63 - 1), '--n_large', '0'], 'must be below'),
    ('bench_plot_logs', ['--points', str(2 ** 40)], 'log points take'),
    ('bench_hdf5_read', ['--workers', '0,-1'], 'must be worker counts'),
    # A StopIteration traceback, or figures of 0 images/s (round 8).
    ('bench_hdf5_read', ['--n_images', '8', '--res', '8'], 'leaves no timed batch'),
    ('bench_hdf5_read', ['--n_images', '8', '--res', '8', '--batch_size', '4'],
     'leaves no timed batch'),
    ('bench_fid', ['--dim', str(2 ** 31 - 1)], 'covariances take'),
    ('benchmark', ['--itrs', '0'], 'must be [1, 1000000], got 0'),
    # Counts that cost only time, held to a ceiling (round 8: an OverflowError; 10 minutes).
    ('benchmark', ['--budget', '3.5e38', '--itrs', '1'], 'must be [0, 86400]'),
    ('bench_finite_check', ['--itrs', str(2 ** 63 - 1), '--reps', '1'], 'must be [12, 1000000]'),
    ('syncbn_error', ['--size', '0'], 'must be >= 1'),
    ('measure_variety', ['--images_per_class', str(2 ** 31 - 1)], 'images take'),
    # Sizes no memory holds (round 14): every benchmark mode started and failed in turn; an
    # IndexError and an allocator traceback.
    ('benchmark', ['--config', 's32', '--batch_size', '99999999999', '--ch', '4'],
     'images of 32 x 32'),
    ('benchmark', ['--config', 's32', '--modes', 'fp32,bogus', '--ch', '4'],
     "unknown mode part(s) ['bogus']"),
    ('bench_metrics', ['--dim', '1000000000'], 'features of 1000000000 dimensions take'),
    ('syncbn_error', ['--channels', '1000000000000'], 'the layer cases of 8 x 1000000000000'),
    # Round 15: a 200000-px image drawn until the kernel killed the tool (rc 137); a batch of
    # 10^9 images a traceback; 10^9 images generated or written for a minute and more.
    ('bench_make_hdf5', ['--sizes', '100000', '200000', '--n_images', '4'],
     'a generated image of 200000 px take'),
    ('bench_make_hdf5', ['--n_images', '1000000000'], 'images and their HDF5 files need'),
    ('bench_hdf5_read', ['--n_images', '1000000000', '--res', '512'], 'need about'),
    ('check_pretrained', ['--batch', '1000000000'], 'a batch of 1000000000 images')]


@pytest.mark.parametrize('tool,argv,why', TOOL_REFUSALS, ids=[t for t, _, _ in TOOL_REFUSALS])
def test_a_tool_refuses_what_it_cannot_do_in_one_line(tool, argv, why, tmp_path):
    """Every tool parses with flags.ToolParser and runs through flags.run_cli: a value it
    cannot use is one line and exit status 2, and nothing is written."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', f'{tool}.py'), *argv],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert (done.returncode, len(err)) == (2, 1) and why in err[0], (done.returncode, err[-3:])
    assert os.listdir(tmp_path) == []


class Captured(Exception):
    """Raised in place of parse_args, carrying the parser a tool built."""


def tool_parser(name, monkeypatch):
    """The argparse parser tools/<name>.py builds, captured as it starts to parse."""
    import argparse
    import importlib
    module = importlib.import_module(f'tools.{name}')

    def capture(self, *args, **kwargs):
        raise Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', capture)
    monkeypatch.setattr(sys, 'argv', [name])
    with pytest.raises(Captured) as info:
        (getattr(module, 'prepare_parser', None) or module.main)().parse_args()
    return info.value.args[0]


@pytest.mark.parametrize('name', [t for t in TOOLS if t != '__init__'])
def test_every_count_a_tool_takes_is_held_to_a_domain(name, monkeypatch, capsys):
    """Each number a tool's own flags take (not train.py's, which check_flags holds) has a
    bound or a list of choices, and a value outside it is argparse's one line and exit status
    2, not a traceback later (--itrs 5 of bench_finite_check.py was an IndexError after its
    runs)."""
    parser = tool_parser(name, monkeypatch)
    monkeypatch.undo()
    shared = {spec.get('dest', flag[2:]) for flag, spec in flags.FLAGS.items()}
    own = [a for a in parser._actions if a.dest not in shared and not a.choices
           and a.type in (int, float) or getattr(a.type, 'domain', None)]
    for action in own:
        assert getattr(action.type, 'domain', None), (name, action.option_strings)
        low = bad_value(action.type.domain)
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            n = action.nargs if isinstance(action.nargs, int) else 1
            parser.parse_args([action.option_strings[0]] + [low] * n)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and f'must be {action.type.domain}' in err[-1], err


# Each entry point: what it requires, and one of its integer flags.
ENTRY_POINTS = {'train': ([], '--seed'), 'sample': ([], '--seed'), 'evaluate': (['x'], '--seed'),
                'make_hdf5': ([], '--batch_size'), 'calculate_inception_moments': ([], '--seed'),
                'plot_logs': (['--experiment_name', 'x'], '--smooth'),
                'convert_pretrained': (['--hf_dir', 'x'], '--resolution')}


@pytest.mark.parametrize('name', sorted(ENTRY_POINTS))
@pytest.mark.parametrize('wrong', ['unknown flag', 'wrong type'])
def test_a_command_line_argparse_refuses_is_one_line(name, wrong, capsys):
    """What argparse itself refuses (an unknown flag, a value of the wrong type) is one line
    and exit status 2 from every entry point, as every other refusal: not argparse's usage
    text (59 lines for train.py's flags) before it."""
    import importlib
    required, int_flag = ENTRY_POINTS[name]
    argv, why = ((['--no_such_flag'], 'unrecognized arguments: --no_such_flag')
                 if wrong == 'unknown flag' else ([int_flag, 'abc'], "invalid int value: 'abc'"))
    line = exits_with_one_line(importlib.import_module(name).main, required + argv, capsys)
    assert line.startswith('error: ') and why in line and line.endswith('(see --help)')


# The tools that import numpy (directly or through torch, scipy, h5py) before they parse.
HEAVY_TOOLS = ['tools/bench_fid', 'tools/bench_finite_check', 'tools/bench_hdf5_read',
               'tools/bench_make_hdf5', 'tools/bench_plot_logs', 'tools/check_pretrained',
               'tools/compare_s32', 'tools/measure_variety', 'tools/syncbn_error']


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize('name', sorted(ENTRY_POINTS) + HEAVY_TOOLS)
def test_a_ctrl_c_during_the_imports_is_one_line(name, signum, tmp_path):
    """Ctrl-C or SIGTERM while an entry point's imports load (seconds, before run_cli can
    catch it) is the one line a run's signal gives, and the process still ends as by the
    signal: not a 50-line traceback from inside torch's import, and not silence (SIGTERM
    killed the process without a word: the outside attacker's round 13). The signal comes
    from a numpy that sends it as it is imported, ahead on the path of the real one."""
    (tmp_path / 'numpy.py').write_text(f'import os\nos.kill(os.getpid(), {int(signum)})\n')
    done = subprocess.run([sys.executable, os.path.join(ROOT, f'{name}.py'), '--help'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': str(tmp_path)})
    assert (done.returncode, done.stderr, done.stdout) == (-signum,
                                                           f'stopped by signal {signum}\n', '')


# syncbn_error.py imports torch only after it parses its flags.
@pytest.mark.parametrize('name', sorted(ENTRY_POINTS) + HEAVY_TOOLS[:-1])
def test_a_python_without_the_requirements_is_one_line(name, tmp_path):
    """Run by a Python that lacks the requirements (the system's, PYTHON unset in a launch
    script), an entry point ended with ModuleNotFoundError's traceback (the outside
    attacker's round 13): now one line naming the interpreter and what to do, exit 2. A
    torch and a numpy that are not there stand in, ahead on the path of the real ones."""
    for module in ('torch', 'numpy'):
        (tmp_path / f'{module}.py').write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    done = subprocess.run([sys.executable, os.path.join(ROOT, f'{name}.py'), '--help'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': str(tmp_path)})
    assert (done.returncode, done.stdout) == (2, '')
    assert re.fullmatch(f"error: {re.escape(sys.executable)} has no module '(torch|numpy)': "
                        r'install the requirements into it \(pip install -r requirements.txt\) '
                        r'or run the Python they are installed in \(e.g. .venv/bin/python\)\n',
                        done.stderr), done.stderr


def test_check_pretrained_sizes_its_models_before_building_them():
    """tools/check_pretrained.py --channel_width 10^12: a 26-line RuntimeError from the
    allocator (the outside attacker's round 13). Now one line, exit 2, before any model; its
    defaults pass the check."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'check_pretrained.py'),
                           '--sizes', '128', '--channel_width', str(10 ** 12)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, '')
    assert re.fullmatch(r'error: the 128px models of --channel_width 1000000000000 take about '
                        r'10\^\d+ GB, more than the .* GB of memory available; use a smaller '
                        r'--channel_width or fewer --sizes\n', done.stderr), done.stderr
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import check_pretrained
    check_pretrained.check_sizes(argparse.Namespace(sizes=[128, 256, 512], channel_width=128,
                                                    z_dim=128, num_classes=1000, float64=True,
                                                    batch=2))


def test_a_missing_module_that_is_no_requirement_keeps_its_traceback(tmp_path):
    """Only the requirements get the line: any other missing module is a bug to see whole."""
    (tmp_path / 'numpy.py').write_text(
        "raise ModuleNotFoundError(\"No module named 'nothere'\", name='nothere')\n")
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'sample.py'), '--help'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': str(tmp_path)})
    assert done.returncode == 1 and done.stderr.startswith('Traceback')
    assert "ModuleNotFoundError: No module named 'nothere'" in done.stderr


@pytest.mark.parametrize('extra,why', [
    (['--no_G_shared', '--dim_z', '16'], '--hier joins z to the shared class embedding: add '
                                         '--G_shared'),
    (['--hier', '--G_shared', '--dim_z', '3'], '--dim_z 3 is fewer than the 4 chunks --hier '
                                               'splits z into at 32 px'),
    (['--G_lr', '1e308'], '--G_lr 1e+308 is beyond float32'),
    (['--SN_eps', '1e39'], '--SN_eps 1e+39 is beyond float32'),
    (['--adam_eps', '1e-46'], '--adam_eps 1e-46 is 0 in float32')])
def test_a_model_the_flags_cannot_run_is_refused_before_writing(data_root, tmp_path, capsys,
                                                                extra, why):
    """Flags that build a G whose first forward fails (--hier without a shared embedding to
    join z to, or z cut into chunks of 0) or values beyond float32, in which every layer
    and optimizer computes (an IndexError, a split error or an overflow in the first step,
    after metalog.txt was written)."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1') + extra
    if '--no_G_shared' in argv:  # the tiny flags share the embedding
        argv = [a for a in argv if a not in ('--no_G_shared', '--G_shared')]
    assert why in exits_with_one_line(train.main, argv, capsys)
    assert not out.exists()


def run_limited(argv, limit_kb):
    """An entry point in a child under `ulimit -f limit_kb`: (exit status, stderr lines)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kb * 1024, limit_kb * 1024))
    done = subprocess.run([sys.executable] + argv, cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    return done.returncode, done.stderr.strip().splitlines()


def test_a_file_size_limit_is_one_line_naming_what_and_where(data_root, run_dir, tmp_path):
    """Writes that a full disk or a size limit (ulimit -f) stops: refused up front where
    the size is known (sample.py's npz, make_hdf5.py's uncompressed file: make_hdf5 ended in
    h5py's traceback and a segfault), or one line naming the file when a write fails (the S32
    cache: '[Errno 27] File too large'), exit 2, nothing left behind."""
    from PIL import Image
    noise = np.random.default_rng(0)
    for c in 'ab':
        (tmp_path / 'imgs' / c).mkdir(parents=True)
        for i in range(4):  # noise: compressed, the file still outgrows the limit
            Image.fromarray(noise.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / 'imgs' / c / f'{i}.png')
    fresh = tmp_path / 'fresh'
    cases = [
        (['sample.py'] + sample_argv(data_root, run_dir, '--sample_npz', '--sample_num_npz',
                                     '64', '--samples_root', str(tmp_path / 's')),
         'past this process\'s file size limit', tmp_path / 's'),
        (['make_hdf5.py', '--dataset', 'mine', '--dataset_root', str(tmp_path / 'imgs'),
          '--resolution', '64', '--n_classes', '2', '--data_root', str(tmp_path / 'h'),
          '--num_workers', '0'], 'past this process\'s file size limit', tmp_path / 'h'),
        # Compressed, its size is known only as it is written: the write fails, and the line
        # names the file (then h5py's clean-up at exit crashed: rc 139).
        (['make_hdf5.py', '--dataset', 'mine', '--dataset_root', str(tmp_path / 'imgs'),
          '--resolution', '128', '--n_classes', '2', '--data_root', str(tmp_path / 'hc'),
          '--num_workers', '0', '--compression', '--no_progress'],
         f"cannot write {tmp_path / 'hc' / 'ILSVRC128.hdf5'}: a file size limit is reached",
         tmp_path / 'hc'),
        (run_flags(str(fresh / 'data'), str(fresh), NAME, '--total_itrs', '1'),
         f"cannot write {fresh / 'data' / 'S32' / 'S32_seed0.npz'}: a file size limit is "
         f'reached', fresh / 'weights', 10_000),  # a checkpoint fits, the cache does not
        # A checkpoint set past the limit: refused before training, not at the first save
        # (the outside attacker's round 7: 'unexpected pos 9408 vs 9302' after the steps).
        (run_flags(data_root, str(tmp_path / 'c'), NAME, '--total_itrs', '1'),
         'checkpoints need files of', tmp_path / 'c')]
    for argv, why, untouched, *limit in cases:
        if argv[0] not in ('sample.py', 'make_hdf5.py'):
            argv = ['train.py'] + argv
        code, err = run_limited(argv, limit[0] if limit else 20)
        assert code == 2 and len(err) == 1 and why in err[0], (argv[0], code, err[-3:])
        assert not untouched.exists() or not any(untouched.rglob('*.*')), argv[0]



def test_a_sheet_past_the_file_size_limit_keeps_the_old_one(data_root, run_dir, tmp_path):
    """sample.py --sample_sheets under `ulimit -f 1`: PIL wrote the JPEG to the descriptor
    from C and ignored the short write, so a sheet cut at 1 KiB replaced the good one, exit 0
    and no line (the outside attacker's round 14). Writers through files.atomic_open now see
    no descriptor, and the failed write is one line; the old sheet is kept."""
    sheet = tmp_path / 's' / NAME / '-1' / 'samples0.jpg'
    sheet.parent.mkdir(parents=True)
    sheet.write_bytes(b'the good sheet')
    argv = ['sample.py'] + sample_argv(data_root, run_dir, '--sample_sheets', '--samples_root',
                                       str(tmp_path / 's'))
    argv = [a for a in argv if a != '--sample_random']
    code, err = run_limited(argv, 1)
    assert code == 2 and len(err) == 1 and 'a file size limit is reached' in err[0], (code, err)
    assert str(sheet) in err[0] and sheet.read_bytes() == b'the good sheet'
    assert sorted(os.listdir(sheet.parent)) == ['samples0.jpg']

def test_a_dangling_link_as_a_root_is_one_line(data_root, tmp_path, capsys):
    """--weights_root a symlink to a folder that does not exist: makedirs said only
    '[Errno 17] File exists'; now the line names the link and its target, nothing written."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'weights').symlink_to(tmp_path / 'nowhere')
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1')
    line = exits_with_one_line(train.main, argv, capsys)
    assert f"{out / 'weights'} is a symbolic link to {tmp_path / 'nowhere'}" in line
    assert sorted(os.listdir(out)) == ['weights'] and not (tmp_path / 'nowhere').exists()


def test_a_fresh_start_over_a_run_keeps_that_run(data_root, run_dir, capsys):
    """train.py without --resume on an experiment that holds a run: the release started over
    in place (its checkpoints replaced, its logs reset; with --num_save_copies 0 nothing of it
    was left), silently (the outside attacker's round 7). The fresh start still happens, and
    the old run is moved whole, byte for byte, to exp.replaced1 in every root."""
    before = tree(run_dir)
    train.main(run_flags(data_root, str(run_dir), NAME, '--total_itrs', '1'))
    assert ('note: experiment exp held a run (last checkpoint: '
            f"{run_dir / 'weights' / NAME} (itr 3)) and this one starts over (no --resume): "
            'that run is kept as experiment exp.replaced1 in every root') in (
        capsys.readouterr().out)
    after = tree(run_dir)
    moved = {path.replace(f'{NAME}.replaced1', NAME, 1): data for path, data in after.items()
             if f'{NAME}.replaced1' in path}
    assert moved == before
    state = {}
    G, D, G_ema = tiny_models(tiny_config('--ema'), 0)
    utils.load_weights(G, D, state, str(run_dir / 'weights'), f'{NAME}.replaced1', G_ema=G_ema)
    assert state['itr'] == 3
    assert checkpoints.torch_load(str(run_dir / 'weights' / NAME / 'state_dict.pth'))['itr'] == 1


def test_a_fresh_start_over_a_run_of_a_long_name_keeps_it_too(data_root, tmp_path, capsys):
    """A 250-character experiment name trains; a fresh start over it failed on
    'File name too long' for <name>.replaced1 (the outside attacker's round 9): the kept
    name is shortened to fit 255 bytes."""
    name = 'a' * 250
    out = tmp_path / 'out'
    for _ in range(2):
        train.main(run_flags(data_root, str(out), name, '--total_itrs', '1'))
    kept = 'a' * 235 + '.replaced1'  # room for the test log's _log.jsonl
    assert f'that run is kept as experiment {kept} in every root' in capsys.readouterr().out
    assert sorted(os.listdir(out / 'weights')) == sorted([name, kept])
    assert checkpoints.torch_load(str(out / 'weights' / kept / 'state_dict.pth'))['itr'] == 1


def test_a_fresh_start_over_a_run_in_one_folder_for_every_root_keeps_it(data_root, tmp_path,
                                                                        capsys):
    """--weights_root, --logs_root and --samples_root one folder: the run's folder was moved
    for the first root, and the second's move then failed ('No such file or directory', the
    outside attacker's round 10). It moves once."""
    same = str(tmp_path / 'R')
    argv = run_flags(data_root, str(tmp_path / 'out'), NAME, '--total_itrs', '1') + [
        '--weights_root', same, '--logs_root', same, '--samples_root', same]
    train.main(argv)
    before = tree(tmp_path / 'R' / NAME)
    train.main(argv)
    assert 'that run is kept as experiment exp.replaced1 in every root' in (
        capsys.readouterr().out)
    assert tree(tmp_path / 'R' / f'{NAME}.replaced1') == before
    assert checkpoints.torch_load(f'{same}/{NAME}/state_dict.pth')['itr'] == 1


def test_sheets_alone_are_kept_and_a_move_that_fails_moves_nothing(data_root, run_dir,
                                                                   tmp_path, capsys,
                                                                   monkeypatch):
    """The outside attacker's round 9: sheets without checkpoints or logs were overwritten in
    place; a move that failed part-way (an immutable sheet) left the run split across exp and
    exp.replaced1. Now sheets alone are a run too, and a failed move is undone: one line, the
    run where it was."""
    out = tmp_path / 'out'
    (out / 'samples' / NAME / '2').mkdir(parents=True)
    (out / 'samples' / NAME / '2' / 'samples0.jpg').write_bytes(b'OLD')
    train.main(run_flags(data_root, str(out), NAME, '--total_itrs', '1'))
    assert (out / 'samples' / f'{NAME}.replaced1' / '2' / 'samples0.jpg').read_bytes() == b'OLD'
    capsys.readouterr()
    before = tree(run_dir)
    real = os.rename

    def immutable_sheets(src, dst, *args, **kwargs):
        if f'{os.sep}samples{os.sep}' in str(src) and 'replaced' in str(dst):
            raise PermissionError(errno.EPERM, 'Operation not permitted', str(src))
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, 'rename', immutable_sheets)
    line = exits_with_one_line(train.main, run_flags(data_root, str(run_dir), NAME,
                                                     '--total_itrs', '1'), capsys)
    assert 'cannot be set aside as exp.replaced1 (Operation not permitted' in line
    assert 'nothing was moved' in line
    monkeypatch.undo()
    assert tree(run_dir) == before
    assert not any((run_dir / root / f'{NAME}.replaced1').exists()
                   for root in ('weights', 'logs', 'samples'))


def test_resuming_a_finished_run_says_so_and_writes_nothing(data_root, run_dir, capsys):
    """--resume --total_itrs 2 of a run at iteration 3: exit 0 with no line at all, which a
    user (or a requeued job's log) cannot tell from a run that trained."""
    before = tree(run_dir)
    train.main(run_flags(data_root, str(run_dir), NAME, '--resume', '--total_itrs', '2'))
    assert 'nothing to train: the checkpoint is at iteration 3, --total_itrs 2' in (
        capsys.readouterr().out)
    assert tree(run_dir) == before
    # Or past its epochs (the outside attacker's round 8: epoch 100 of --num_epochs 100).
    path = run_dir / 'weights' / NAME / 'state_dict.pth'
    state = torch.load(path, weights_only=True)
    state['epoch'] = 1000
    torch.save(state, path)
    before = tree(run_dir)
    train.main(run_flags(data_root, str(run_dir), NAME, '--resume', '--total_itrs', '9'))
    assert 'nothing to train: the checkpoint is at epoch 1000, --num_epochs 1000' in (
        capsys.readouterr().out)
    assert tree(run_dir) == before


def test_a_loop_of_links_as_a_root_is_named_a_loop(data_root, tmp_path, capsys):
    """--weights_root a link in a loop (w -> w2 -> w): the line said 'a symbolic link to w2,
    which does not exist; create that folder', which cannot be done (the outside attacker's
    round 7)."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'weights').symlink_to(out / 'w2')
    (out / 'w2').symlink_to(out / 'weights')
    line = exits_with_one_line(train.main, run_flags(data_root, str(out), NAME, '--total_itrs',
                                                     '1'), capsys)
    assert f"{out / 'weights'} is a symbolic link in a loop of links" in line
    assert sorted(os.listdir(out)) == ['w2', 'weights']


def test_a_log_replaced_by_a_link_is_not_written_through(data_root, run_dir, tmp_path, capsys):
    """A resumed run's log replaced by a symlink to a file outside the roots: lines were
    appended through it. Now the run stops with one line naming the link, and the file it
    points to is unchanged; so do both loggers, and a FIFO in a log's place is refused, not
    waited on."""
    where = run_dir / 'logs' / NAME / 'G_loss.log'
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep\n')
    where.unlink()
    where.symlink_to(victim)
    argv = run_flags(data_root, str(run_dir), NAME, '--resume', '--total_itrs', '4')
    line = exits_with_one_line(train.main, argv, capsys)
    assert f'{where} is a symbolic link' in line and victim.read_text() == 'keep\n'
    (tmp_path / 'logs').mkdir()
    (tmp_path / 'logs' / 'm.jsonl').symlink_to(victim)
    (tmp_path / 'logs' / 'x.log').symlink_to(victim)
    os.mkfifo(tmp_path / 'logs' / 'y.log')
    for log, why in [(lambda: utils.MetricsLogger(str(tmp_path / 'logs' / 'm.jsonl')).log(itr=1),
                      'is a symbolic link'),
                     (lambda: utils.MyLogger(str(tmp_path / 'logs')).log(1, x=1.0),
                      'is a symbolic link'),
                     (lambda: utils.MyLogger(str(tmp_path / 'logs')).log(1, y=1.0),
                      'is not a regular file')]:
        with pytest.raises(files.FileError, match=why):
            log()
    assert victim.read_text() == 'keep\n'


def test_a_log_hard_linked_to_an_outside_file_is_not_appended_to(data_root, run_dir, tmp_path,
                                                                  capsys):
    """A resumed run's log replaced by a hard link to a file outside the roots (one inode, two
    names): the resume appended its lines to the outside file (the outside attacker's round
    13). Now it stops with one line naming the log, and the outside file is unchanged; so do
    both loggers."""
    where = run_dir / 'logs' / NAME / 'G_loss.log'
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep\n')
    where.unlink()
    os.link(victim, where)
    argv = run_flags(data_root, str(run_dir), NAME, '--resume', '--total_itrs', '4')
    line = exits_with_one_line(train.main, argv, capsys)
    assert f'{where} is a hard link' in line and victim.read_text() == 'keep\n'
    (tmp_path / 'logs').mkdir()
    os.link(victim, tmp_path / 'logs' / 'm.jsonl')
    os.link(victim, tmp_path / 'logs' / 'x.log')
    for log in [lambda: utils.MetricsLogger(str(tmp_path / 'logs' / 'm.jsonl')).log(itr=1),
                lambda: utils.MyLogger(str(tmp_path / 'logs')).log(1, x=1.0)]:
        with pytest.raises(files.FileError, match='is a hard link'):
            log()
    assert victim.read_text() == 'keep\n'



@pytest.mark.parametrize('plant', ['symlink', 'hard link', 'fifo'])
def test_a_bad_log_stops_a_resume_before_anything_is_written(data_root, run_dir, tmp_path,
                                                             capsys, plant):
    """A resumed run's last-written log replaced by a link or a FIFO: the refusal came when
    that log was first written, after the iteration had trained, the other logs got its lines
    and metalog.txt was rewritten (round 14). Every log is now checked at start-up: one line,
    and the run's files are byte for byte as they were."""
    logs = run_dir / 'logs' / NAME
    where = logs / sorted(p for p in os.listdir(logs) if p.endswith('.log'))[-1]
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep\n')
    where.unlink()
    if plant == 'symlink':
        where.symlink_to(victim)
    elif plant == 'hard link':
        os.link(victim, where)
    else:
        os.mkfifo(where)
    before = {k: v for k, v in tree(run_dir).items() if not k.endswith('.train.lock')}
    line = exits_with_one_line(train.main, resume_argv(data_root, run_dir), capsys)
    assert str(where) in line, line
    after = {k: v for k, v in tree(run_dir).items() if not k.endswith('.train.lock')}
    assert after == before and victim.read_text() == 'keep\n'


def outside_folder(tmp_path, name='outside'):
    """A folder outside every root, with one file in it; returns it."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / 'keep.txt').write_text('keep\n')
    return folder


@pytest.mark.parametrize('where', ['samples/exp/4', 'samples/exp', 'logs/exp', 'weights/exp'])
def test_a_folder_linked_inside_a_root_is_not_written_through(data_root, run_dir, tmp_path,
                                                               capsys, where):
    """A folder below a root replaced by a symbolic link to a folder outside the roots: sheets
    (samples/exp/4, the next save's) and a resumed run's files were written through it. Now
    training stops at start-up with one line naming the link, and the folder outside is
    unchanged (the outside attacker's round 12). weights/exp is moved outside first, so the
    resume reads its own checkpoint through the link and refuses only to write there."""
    outside = outside_folder(tmp_path)
    link = run_dir / where
    if link.exists():
        for entry in link.iterdir():
            entry.rename(outside / entry.name)
        link.rmdir()
    link.symlink_to(outside)
    before = tree(outside)
    line = exits_with_one_line(train.main, resume_argv(data_root, run_dir), capsys)
    assert f'{link} is a symbolic link' in line and 'pass the folder it names' in line
    assert tree(outside) == before


def test_sample_and_plot_logs_do_not_write_through_a_linked_folder(data_root, run_dir,
                                                                  tmp_path, capsys):
    """sample.py's samples folder and plot_logs.py's run folder linked outside the roots: one
    line each, nothing written outside (plot_logs.py wrote losses.png through the link)."""
    import plot_logs
    outside = outside_folder(tmp_path)
    shutil.rmtree(run_dir / 'samples' / NAME)
    (run_dir / 'samples' / NAME).symlink_to(outside)
    line = exits_with_one_line(sample.main, sample_argv(data_root, run_dir), capsys)
    assert f"{run_dir / 'samples' / NAME} is a symbolic link" in line
    logs = outside_folder(tmp_path, 'outside_logs')
    (logs / 'G_loss.log').write_text('1: 1.0\n2: 2.0\n')
    (run_dir / 'logs' / 'lnk').symlink_to(logs)
    before = tree(outside), tree(logs)
    line = exits_with_one_line(plot_logs.main, ['--experiment_name', 'lnk', '--logs_root',
                                                str(run_dir / 'logs')], capsys)
    assert f"{run_dir / 'logs' / 'lnk'} is a symbolic link" in line
    assert (tree(outside), tree(logs)) == before
    # Among several runs (a pattern), the linked one stops plotting before any run's figure.
    own = tree(run_dir / 'logs')
    line = exits_with_one_line(plot_logs.main, ['--experiment_name', '*', '--logs_root',
                                                str(run_dir / 'logs')], capsys)
    assert f"{run_dir / 'logs' / 'lnk'} is a symbolic link" in line
    assert (tree(outside), tree(logs), tree(run_dir / 'logs')) == (*before, own)


def test_own_folder_refuses_a_link_or_file_at_every_depth(tmp_path):
    """files.own_folder, through which every folder written below a root is made: a link at
    any depth below the root, or a file where a folder goes, is refused; a linked folder
    deeper inside, with deep; the root itself may be a link (the user's choice)."""
    real = tmp_path / 'real'
    real.mkdir()
    (tmp_path / 'root').symlink_to(real, target_is_directory=True)
    root = str(tmp_path / 'root')
    assert files.own_folder(root, 'a', 'b', 'c') == os.path.join(root, 'a', 'b', 'c')
    assert (real / 'a' / 'b' / 'c').is_dir()
    outside = outside_folder(tmp_path)
    for depth in range(3):
        names = ['x', 'y', 'z']
        files.own_folder(root, *names[:depth])
        link = os.path.join(root, *names[:depth + 1])
        os.symlink(outside, link)
        with pytest.raises(files.FileError, match=f'{link} is a symbolic link'):
            files.own_folder(root, *names)
        os.remove(link)
        open(link, 'w').close()
        with pytest.raises(files.FileError, match='is a file where a folder is written'):
            files.own_folder(root, *names)
        os.remove(link)
    os.symlink(outside, os.path.join(root, 'a', 'b', 'deep'))
    files.own_folder(root, 'a')
    with pytest.raises(files.FileError, match='deep is a symbolic link'):
        files.own_folder(root, 'a', deep=True)
    with pytest.raises(files.FileError, match='holds a path separator'):
        files.own_folder(root, 'a/../..')
    assert os.listdir(outside) == ['keep.txt']


def test_a_copy_slot_from_the_state_stays_within_the_copies(data_root, run_dir, capsys):
    """state_dict.pth's save_num of 2**62 (a count like any other, so it loads) wrote a whole
    _copy4611686018427387904 set that rotation never replaced; the slot is now held within
    --num_save_copies (2 here: copy0 and copy1 only). (10**20, past int64, is refused.)"""
    path = run_dir / 'weights' / NAME / 'state_dict.pth'
    state = torch.load(path, weights_only=True)
    state['save_num'] = 2 ** 62
    torch.save(state, path)
    train.main(resume_argv(data_root, run_dir, '--num_save_copies', '2'))
    names = os.listdir(run_dir / 'weights' / NAME)
    assert {n.split('_copy')[1][0] for n in names if '_copy' in n} == {'0', '1'}
    assert not [n for n in names if '_copy46' in n]


def test_more_workers_than_memory_holds_are_refused(data_root, tmp_path, capsys):
    """--num_workers 100000 (torch warned, then forked for minutes): each worker is a process
    of its own, at least datasets.WORKER_NBYTES, so the count is held to memory at start-up."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1') + ['--num_workers',
                                                                        '100000']
    line = exits_with_one_line(train.main, argv, capsys)
    assert '100000 data-loader worker processes' in line and 'lower --num_workers' in line
    assert not out.exists()


@pytest.mark.parametrize('extra,why', [
    (['--model', 'BigGANdeep', '--G_depth', '100000000'], '--G_depth must be [1, 1000]'),
    (['--shared_dim', '9223372036854775807'], 'take inf GB'),
])
def test_a_model_too_deep_or_wide_to_even_size_is_refused_at_once(data_root, tmp_path, capsys,
                                                                  extra, why):
    """A depth of 10^8 (sizing it built 10^8 blocks on the meta device: no output for minutes)
    and a width past int64 (torch's 'Storage size calculation overflowed' traceback)."""
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--total_itrs', '1') + extra
    assert why in exits_with_one_line(train.main, argv, capsys)
    assert not out.exists()


def test_a_model_flag_the_checkpoint_overrides_is_named(data_root, run_dir, capsys):
    """sample.py --config_from_name --G_ch 16 on a G_ch 4 run: the checkpoint's 4 is used, as
    documented, and a note now says the 16 given was not (it was silent)."""
    sample.main(sample_argv(data_root, run_dir, '--config_from_name', '--G_ch', '16'))
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith('note:')]
    assert notes == ["note: --G_ch 16 is the checkpoint's 4 under --config_from_name (model "
                     "flags come from the checkpoint)"]


def test_a_second_training_of_the_same_experiment_is_refused(data_root, run_dir, capsys):
    """Two train.py on one experiment at once interleaved its logs (the second's reset wiped
    the first's lines) and checkpoints; the experiment's lock, held by the first for its whole
    run, now refuses the second with one line before it touches a file."""
    lock = run_dir / 'logs' / NAME / '.train.lock'
    # Another process holds the experiment's lock, as a run in progress does.
    holder = subprocess.Popen([sys.executable, '-c', (
        'import fcntl, sys, time\n'
        'f = open(sys.argv[1], "a")\n'
        'fcntl.flock(f, fcntl.LOCK_EX)\n'
        'print("held", flush=True)\n'
        'time.sleep(120)\n'), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        before = tree(run_dir)
        line = exits_with_one_line(train.main, resume_argv(data_root, run_dir), capsys)
    finally:
        holder.kill()
        holder.wait()
    assert f'experiment {NAME} is in use by another process (it holds {lock})' in line
    assert tree(run_dir) == before
    train.main(resume_argv(data_root, run_dir))  # released: the run goes on


def test_a_signal_stop_prints_no_clean_up_tracebacks_after_its_line(tmp_path):
    """SIGTERM during calculate_inception_moments.py with loader workers: after the line, the
    loader's clean-up at exit printed a 20-line 'Exception ignored in ... DataLoader worker
    killed by signal' (the outside attacker's round 15). What fails in clean-up after a signal
    stop is not shown; the run's own line is the last one."""
    script = tmp_path / 'entry.py'
    script.write_text(
        'import argparse, sys\n'
        f'sys.path.insert(0, {ROOT!r})\n'
        'import flags\n'
        'class Workers:\n'
        '    def __del__(self):\n'
        "        raise RuntimeError('DataLoader worker (pid 1) is killed by signal')\n"
        'def run(config):\n'
        '    sys.modules[__name__].held = Workers()  # cleaned up at exit\n'
        '    raise KeyboardInterrupt(15)\n'
        'flags.run_cli(run, argparse.ArgumentParser(), [])\n')
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (143, 'stopped by signal 15\n'), done.stderr
