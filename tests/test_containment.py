"""Containment: every path component taken from a flag is one plain name, refused at start-up
with exit 2 and nothing created; the stale-temp sweep stays inside the run's own folders."""
import os
import random

import pytest

import calculate_inception_moments
import convert_pretrained
import files
import make_hdf5
import plot_logs
import sample
import train
import utils
from helpers import TINY_FLAGS

PIECES = ['a', 'run', '.', '..', '/', '\x00', '\n', '\t', '\x7f', '\x1b', 'b.c', '']
GOOD = ['run1', 'BigGAN_C10_seed0_Gch64_Dch64_bs50', 'a.b', '..a', 'a..', '-x', 'é']


def bad_names(n=240, seed=0):
    """n distinct names that each hold a separator, a control character, or are '', '.', '..'."""
    rng = random.Random(seed)
    names = {'', '.', '..', '/', '/etc', 'a/../..', '../../x', '../x', 'a/b', '\x00', 'a\x00b'}
    while len(names) < n:
        name = ''.join(rng.choice(PIECES) for _ in range(rng.randint(1, 5)))
        if name in ('', '.', '..') or '/' in name or any(ord(c) < 32 or ord(c) == 127
                                                         for c in name):
            names.add(name)
    return sorted(names)


def snapshot(folder):
    """Every path under folder."""
    return {os.path.join(r, x) for r, ds, fs in os.walk(folder) for x in ds + fs}


@pytest.mark.parametrize('name', bad_names())
def test_check_name_refuses(name):
    with pytest.raises(files.FileError):
        files.check_name(name, '--experiment_name')


@pytest.mark.parametrize('name', GOOD)
def test_check_name_keeps_good_names(name):
    assert files.check_name(name, 'x') == name


def entry_argv(entry, tmp, flag, name):
    roots = ['--weights_root', str(tmp / 'w' / 'r'), '--logs_root', str(tmp / 'l' / 'r'),
             '--samples_root', str(tmp / 's' / 'r')]
    if entry is convert_pretrained:
        return ['--hf_dir', str(tmp / 'missing'), '--truncation', '0.5', '--weights_root',
                str(tmp / 'w' / 'r'), '--experiment_name', name]
    return TINY_FLAGS + ['--data_root', str(tmp / 'data')] + roots + [flag, name]


@pytest.mark.parametrize('entry,flag', [(train, '--experiment_name'), (train, '--name_suffix'),
                                        (train, '--load_weights'),
                                        (sample, '--experiment_name'),
                                        (sample, '--load_weights'),
                                        (convert_pretrained, '--experiment_name')])
def test_entry_points_refuse_before_creating(entry, flag, tmp_path, capsys):
    work = tmp_path / 'inner'
    work.mkdir()
    # Stale-looking temps in the roots and above them: a sweep that escaped would delete them.
    for folder in (tmp_path, work, work / 'w', work / 'w' / 'r', work / 's' / 'r'):
        stale_temp(str(folder))
    for name in random.Random(1).sample([b for b in bad_names() if b], 8):
        before = snapshot(tmp_path)
        with pytest.raises(SystemExit) as e:
            entry.main(entry_argv(entry, work, flag, name))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and 'plain name' in err
        assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_sample_config_from_name_refuses(tmp_path, capsys):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        sample.main(entry_argv(sample, tmp_path, '--experiment_name', '../../x')
                    + ['--config_from_name'])
    assert e.value.code == 2 and 'plain name' in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def stale_temp(folder, target='G.pth'):
    """A temp file named as a writer on this host with a dead pid would leave it."""
    pid = 2 ** 22 + 12345
    while True:
        try:
            os.kill(pid, 0)
            pid += 1
        except ProcessLookupError:
            break
        except PermissionError:
            pid += 1
    path = os.path.join(folder, os.path.basename(files.temp_path(os.path.join(folder, target))))
    path = path.replace(str(os.getpid()), str(pid))
    os.makedirs(folder, exist_ok=True)
    open(path, 'w').close()
    return path


def test_sweep_stays_in_the_experiment(tmp_path):
    root = tmp_path / 'weights'
    own = stale_temp(str(root / 'run1'))
    parent = stale_temp(str(root))
    sibling = stale_temp(str(root / 'run2'))
    above = stale_temp(str(tmp_path))
    files.remove_stale_temps(str(root / 'run1'), recursive=True)
    assert not os.path.exists(own)  # the sweep does work on the run's own folder
    assert all(os.path.exists(p) for p in (parent, sibling, above))


def test_an_empty_root_is_refused_and_base_root_says_what_it_replaces(capsys):
    """--data_root '' joined to paths in the current folder (the 154 MB S32 cache landed in
    the source tree); --base_root replaced an explicit --data_root silently (a second cache
    under base_root/data). The outside attacker's round 7."""
    parse = utils.prepare_parser().parse_args
    for key in ('data_root', 'weights_root', 'logs_root', 'samples_root'):
        with pytest.raises(utils.ConfigError, match=f'--{key} is empty'):
            utils.prepare_config(vars(parse([f'--{key}', ''])))
    # Every entry point checks its own roots so (make_hdf5.py wrote ./S32 and ./S32.hdf5, the
    # outside attacker's round 8).
    for main, argv in [(make_hdf5.main, ['--dataset', 'S32', '--data_root', '']),
                       (calculate_inception_moments.main, ['--dataset', 'S32', '--data_root', '']),
                       (plot_logs.main, ['--experiment_name', 'x', '--logs_root', ''])]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert (e.value.code, capsys.readouterr().err) == (
            2, f"error: {argv[-2]} is empty: give a folder ('.' for the current one)\n")
    config = utils.update_config_roots(vars(parse(['--base_root', 'b', '--data_root', 'mine'])))
    assert (config['data_root'], config['weights_root']) == ('b/data', 'b/weights')
    assert capsys.readouterr().out.splitlines() == [
        "note: --data_root mine is replaced by b/data under --base_root (the release's rule: "
        'every root under it)']
    utils.update_config_roots(vars(parse(['--base_root', 'b'])))  # the defaults: no note
    assert capsys.readouterr().out == ''


@pytest.mark.parametrize('kind', ['fifo', 'device', 'folder', 'socket'])
def test_no_atomic_write_replaces_what_is_no_file(tmp_path, kind):
    """An atomic write renames its finished file over the target: a FIFO or a device node
    there (/dev/null) became a regular file (the outside attacker's round 15). files.check_target,
    which every atomic write goes through, refuses it first; a regular file or a link may be
    replaced."""
    import socket
    import stat
    target = tmp_path / 'out.bin'
    if kind == 'fifo':
        os.mkfifo(target)
    elif kind == 'device':
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == 'folder':
        target.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
    before = os.lstat(target).st_mode
    with pytest.raises(files.FileError, match=f'cannot write output {target}: it is a'):
        with files.atomic_open(str(target)) as f:
            f.write(b'x')
    assert os.lstat(target).st_mode == before and os.listdir(tmp_path) == ['out.bin']
    link = tmp_path / 'link.bin'
    link.symlink_to(tmp_path / 'elsewhere')
    with files.atomic_open(str(link)) as f:
        f.write(b'x')
    assert not link.is_symlink() and link.read_bytes() == b'x'


def test_calculate_inception_moments_checks_its_output_before_reading(tmp_path, capsys):
    """Its moments file's path a folder: refused only after every image went through Inception
    (round 15); now at start-up, with nothing read."""
    (tmp_path / 'S32_inception_moments.npz').mkdir()
    with pytest.raises(SystemExit) as info:
        calculate_inception_moments.main(['--dataset', 'S32', '--data_root', str(tmp_path),
                                          '--inception_weights', str(tmp_path / 'none.pth')])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and 'it is a folder' in err[0], err
    assert sorted(os.listdir(tmp_path)) == ['S32_inception_moments.npz']
