"""Start-up validation: what training and the metrics will read is checked before anything is
written (one line, exit 2, logs and folders untouched), and an image that fails later, inside a
loader worker, ends the run with one line naming it and the last checkpoint unchanged."""
import os
import signal
import stat
import struct
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image

import calculate_inception_moments
import datasets
import files
import flags
import train
from helpers import run_flags

NAME = 'exp'


def tree(folder):
    """{relative path: bytes, or None for a folder} of everything under folder."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = None
        for n in names:
            with open(os.path.join(root, n), 'rb') as f:
                out[os.path.relpath(os.path.join(root, n), folder)] = f.read()
    return out


def with_old_logs(out):
    """A previous run's log in out/logs, which a refused start must leave as it is."""
    old = os.path.join(out, 'logs', NAME)
    os.makedirs(old)
    with open(os.path.join(old, 'G_loss.log'), 'w') as f:
        f.write('1: 1.000e+00\n')


@pytest.fixture
def data_root(tmp_path):
    """An empty --data_root: every run here reads its data from --dataset_root."""
    (tmp_path / 'data').mkdir()
    return str(tmp_path / 'data')


class Waited(BaseException):
    """Raised by the alarm: a BaseException, so that no handler for read errors (an OSError
    rebuilds a cache) can take it for one."""


@pytest.fixture
def alarm():
    """A refusal must come at once: a read that waits (a FIFO) fails the test after 20 s."""
    def ring(signum, frame):
        raise Waited('waited on the file')
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refused(entry, argv, capsys):
    """Run entry's CLI on argv; return its one stderr line, asserting exit status 2."""
    with pytest.raises(SystemExit) as e:
        flags.run_cli(entry.run, entry.prepare_parser() if hasattr(entry, 'prepare_parser')
                      else train.utils.prepare_parser(), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


def train_refuses(argv, out, capsys):
    """train.py refuses argv in one line and writes nothing under out; returns the line."""
    before = tree(out)
    line = refused(train, argv, capsys)
    assert tree(out) == before
    return line


# ----------------------------------------------------------------------------
# HDF5 files: labels, dtype and shape.

def write_h5(path, n=8, shape=(3, 32, 32), dtype=np.uint8, labels=None):
    """A small HDF5 in make_hdf5.py's layout; labels default to 0..n-1 mod 10."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n,) + shape).astype(dtype)
    labels = np.arange(n) % 10 if labels is None else labels
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs)
        f.create_dataset('labels', data=labels)
    return str(path)


BAD_HDF5 = {
    'label -1': dict(labels=np.array([0, 1, 2, 3, -1, 5, 6, 7])),
    'label 10 of 10 classes': dict(labels=np.array([0, 1, 2, 3, 10, 5, 6, 7])),
    'label beyond int64': dict(labels=np.array([0, 1, 2, 2 ** 63, 4, 5, 6, 7], np.uint64)),
    'float labels': dict(labels=np.arange(8) + 0.5),
    'float32 pixels': dict(dtype=np.float32),
    'uint16 pixels': dict(dtype=np.uint16),
    'not square': dict(shape=(3, 32, 16)),
    'another resolution': dict(shape=(3, 16, 16)),
}
WHAT = {'label -1': 'labels run from -1', 'label 10 of 10 classes': 'labels run from 0 to 10',
        'label beyond int64': 'labels', 'float labels': 'float64 labels',
        'float32 pixels': 'float32 images', 'uint16 pixels': 'uint16 images',
        'not square': 'images of 3 x 32 x 16', 'another resolution': 'images of 3 x 16 x 16'}


@pytest.mark.parametrize('case', BAD_HDF5)
def test_train_refuses_bad_hdf5_before_writing(case, data_root, tmp_path, capsys):
    out = str(tmp_path / 'out')
    with_old_logs(out)
    path = write_h5(tmp_path / 'data.hdf5', **BAD_HDF5[case])
    argv = run_flags(data_root, out, NAME, '--dataset_root', path, '--total_itrs', '2')
    line = train_refuses(argv, out, capsys)
    assert path in line and WHAT[case] in line


@pytest.mark.slow
def test_a_good_hdf5_trains(data_root, tmp_path):
    """The same file with good labels and pixels passes the checks and trains."""
    out = str(tmp_path / 'out')
    path = write_h5(tmp_path / 'data.hdf5')
    flags.run_cli(train.run, train.utils.prepare_parser(),
                  run_flags(data_root, out, NAME, '--dataset_root', path, '--total_itrs', '1'))
    assert os.path.exists(os.path.join(out, 'weights', NAME, 'G.pth'))


def test_moments_refuse_bad_hdf5_before_writing(tmp_path, capsys):
    """calculate_inception_moments.py checks the same before loading Inception."""
    path = write_h5(tmp_path / 'data.hdf5', labels=np.arange(8) + 3)
    weights = tmp_path / 'weights.pth'
    weights.write_bytes(b'never read')
    root = tmp_path / 'data'
    root.mkdir()
    line = refused(calculate_inception_moments, [
        '--dataset', 'mine', '--dataset_root', path, '--resolution', '32', '--n_classes', '8',
        '--data_root', str(root), '--inception_backend', 'tf_fid', '--inception_weights',
        str(weights), '--num_workers', '0', '--device', 'cpu'], capsys)
    assert 'labels run from 3 to 10' in line and os.listdir(root) == []


C32 = {'dataset': 'mine', 'resolution': 32, 'n_classes': 10}


def test_check_training_set_directly(tmp_path):
    """The one check, on each dataset class: labels and first-item shape."""
    good = datasets.ILSVRC_HDF5(write_h5(tmp_path / 'a.hdf5'))
    datasets.check_training_set(good, dict(C32, n_classes=10))
    with pytest.raises(datasets.DatasetError, match='labels run from 0 to 7, but the dataset '
                                                    'has 5 classes'):
        datasets.check_training_set(good, dict(C32, n_classes=5))
    with pytest.raises(datasets.DatasetError, match='model takes 3 x 64 x 64'):
        datasets.check_training_set(datasets.limit_data(good, 4), dict(C32, resolution=64))


def test_first_item_check_draws_no_random_numbers(tmp_path):
    """The shape check of a non-HDF5 set loads its first item with augmentation on, and the
    training run's random streams are where they were."""
    import torch
    root = image_folder(tmp_path / 'images')
    ds = datasets.get_dataset('mine', dataset_root=root, augment=True, resolution=32,
                              n_classes=2)
    torch.manual_seed(1)
    np.random.seed(1)
    datasets.check_training_set(ds, C32)
    after = torch.rand(3), np.random.rand(3)
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(after[0], torch.rand(3)) and np.array_equal(after[1], np.random.rand(3))
    with pytest.raises(datasets.DatasetError, match='images yields images of 3 x 32 x 32, but '
                                                    'the model takes 3 x 64 x 64'):
        datasets.check_training_set(ds, dict(C32, resolution=64))


@pytest.mark.parametrize('kind', ['hdf5', 'image'])
def test_fifos_are_refused_not_waited_on(kind, data_root, tmp_path, capsys, alarm):
    """A FIFO where an HDF5 file or an image is expected: one line, no hang."""
    out = str(tmp_path / 'out')
    if kind == 'hdf5':
        root = str(tmp_path / 'data.hdf5')
        os.mkfifo(root)
        extra = ['--dataset_root', root]
    else:
        root = image_folder(tmp_path / 'images')
        fifo = os.path.join(root, 'class0', '0.png')  # the first item, read at start-up
        os.remove(fifo)
        os.mkfifo(fifo)
        extra = ['--dataset', 'mine', '--dataset_root', root, '--resolution', '32',
                 '--n_classes', '2']
    line = train_refuses(run_flags(data_root, out, NAME, *extra, '--total_itrs', '1'), out,
                         capsys)
    assert 'not a regular file' in line


# ----------------------------------------------------------------------------
# Image folders: images that fail to decode, at start-up and inside loader workers.

def image_folder(root, classes=2, per_class=4):
    """root/class{c}/{i}.png, 32 x 32 random RGB."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f'class{c}'))
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                os.path.join(root, f'class{c}', f'{i}.png'))
    return str(root)


def png_chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def bomb_png(path, side=20000):
    """A 200-byte PNG declaring side x side pixels (400 M: PIL refuses it as a decompression
    bomb when it is opened)."""
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n'
                + png_chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 1, 0, 0, 0, 0))
                + png_chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + png_chunk(b'IEND', b''))


def truncated_png(path):
    """A real PNG cut in half."""
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])


def test_a_large_image_under_pils_limit_decodes_without_its_warning(tmp_path, monkeypatch):
    """An image of more pixels than PIL's warning threshold but fewer than its refusal's
    (150 M of 89 M and 179 M): make_hdf5.py converted it, with PIL's DecompressionBombWarning
    on stderr twice (the outside attacker's round 13). Every route decodes it (the same
    pixels as PIL's own) without the warning; the threshold is lowered to keep it small."""
    import warnings

    import evaluate
    import make_hdf5
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # the warning past 1000, refused past 2000
    path = tmp_path / 'big.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        expected = np.asarray(Image.open(path).convert('RGB'))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter('always')
        loaded = np.asarray(datasets.default_loader(str(path)))
        square = make_hdf5.load_square(str(path), 30)
        batch = next(evaluate._folder_batches([str(path)], 4))
    assert shown == [], [str(w.message) for w in shown]
    assert np.array_equal(loaded, expected)
    assert np.array_equal(batch[0].numpy(), expected.transpose(2, 0, 1))
    assert np.array_equal(square, expected[:, 5:35].transpose(2, 0, 1))


FOLDER_FLAGS = ['--dataset', 'mine', '--resolution', '32', '--n_classes', '2']


@pytest.mark.parametrize('damage', [bomb_png, truncated_png])
def test_bad_first_image_is_refused_at_start(damage, data_root, tmp_path, capsys):
    out = str(tmp_path / 'out')
    with_old_logs(out)
    root = image_folder(tmp_path / 'images')
    bad = os.path.join(root, 'class0', '0.png')
    damage(bad)
    line = train_refuses(run_flags(data_root, out, NAME, *FOLDER_FLAGS, '--dataset_root', root,
                                   '--total_itrs', '1'), out, capsys)
    assert f'image {bad} cannot be read' in line


@pytest.mark.slow
@pytest.mark.parametrize('damage, workers', [(bomb_png, 1), (truncated_png, 0)])
def test_bad_image_in_training_keeps_the_checkpoint(damage, workers, data_root, tmp_path,
                                                    capsys):
    """A run saves at 2; an image it reads after resuming (in a loader worker, or not) cannot
    be decoded: one line naming it, exit 2, and every checkpoint file as it was."""
    out = str(tmp_path / 'out')
    root = image_folder(tmp_path / 'images')
    argv = run_flags(data_root, out, NAME, *FOLDER_FLAGS, '--dataset_root', root,
                     '--save_every', '2', '--num_workers', str(workers))
    flags.run_cli(train.run, train.utils.prepare_parser(), argv + ['--total_itrs', '2'])
    weights = os.path.join(out, 'weights', NAME)
    saved = tree(weights)
    assert 'G.pth' in saved and 'state_dict.pth' in saved
    bad = os.path.join(root, 'class1', '3.png')  # not the first item, which start-up reads
    damage(bad)
    line = refused(train, argv + ['--total_itrs', '4', '--resume'], capsys)
    assert f'image {bad} cannot be read' in line
    assert tree(weights) == saved


# ----------------------------------------------------------------------------
# Inception moments: shape against the network's features, finite, symmetric, PSD.

def covariance(d, n, seed=0):
    """np.cov of n random d-dimensional rows (rank n - 1 when n <= d): a real covariance."""
    return np.cov(np.random.default_rng(seed).standard_normal((n, d)), rowvar=False)


def rotated(eigenvalues, seed=0):
    """A symmetric matrix with these eigenvalues in a random basis."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    m = (q * np.asarray(eigenvalues, float)) @ q.T
    return (m + m.T) / 2


def nan_at(m, i, j):
    m = m.copy()
    m[i, j] = np.nan
    return m


D = 8  # FakeInception's pool features
BAD_MOMENTS = {
    'sigma of another size': (dict(sigma=np.eye(D + 1)), 'not (D,) and (D, D)'),
    'mu of two dimensions': (dict(mu=np.zeros((D, 1))), 'not (D,) and (D, D)'),
    'NaN in sigma': (dict(sigma=nan_at(np.eye(D), 2, 3)), 'NaN or Inf'),
    'Inf in mu': (dict(mu=np.full(D, np.inf)), 'NaN or Inf'),
    'not symmetric': (dict(sigma=np.eye(D) + np.triu(np.ones((D, D)), 1)), 'not symmetric'),
    'one eigenvalue -0.01 of 1': (dict(sigma=rotated([1] * (D - 1) + [-0.01])),
                                  'not positive semi-definite'),
    'negative diagonal': (dict(sigma=-np.eye(D)), 'not positive semi-definite'),
    'KID features of another width': (dict(feats=np.zeros((5, D + 1), np.float32)),
                                      'KID features have shape (5, 9)'),
    'NaN in KID features': (dict(feats=np.full((5, D), np.nan, np.float32)),
                            'KID features hold NaN'),
    'a negative image count': (dict(count=np.array(-5)), 'of -5 images'),
}


def write_moments(folder, name='S32', **arrays):
    """{name}_inception_moments.npz in folder, good moments unless arrays replace them."""
    good = {'mu': np.zeros(D), 'sigma': covariance(D, 50),
            'feats': np.zeros((5, D), np.float32), 'backend': np.array('torchvision')}
    path = os.path.join(folder, f'{name}_inception_moments.npz')
    np.savez(path, **{**good, **arrays})
    return path


@pytest.mark.parametrize('case', BAD_MOMENTS)
def test_bad_moments_are_refused_when_loaded(case, tmp_path):
    import inception_utils
    arrays, what = BAD_MOMENTS[case]
    path = write_moments(str(tmp_path), **arrays)
    with pytest.raises(inception_utils.InceptionMomentsError) as e:
        inception_utils.load_inception_moments('S32', str(tmp_path), need_feats=True)
    line = str(e.value)
    assert line.startswith(f'Inception moments {path}: ') and what in line and '\n' not in line
    assert 'calculate_inception_moments.py --dataset S32' in line


@pytest.mark.parametrize('d, n', [(64, 20), (256, 40), (64, 200)])
def test_real_covariances_pass_also_rank_deficient_and_float32(d, n, tmp_path):
    """np.cov of fewer rows than features (eigenvalues at 0, some a rounding error below), and
    the same stored as float32, are accepted unchanged."""
    import inception_utils
    sigma = covariance(d, n)
    for stored in (sigma, sigma.astype(np.float32)):
        write_moments(str(tmp_path), mu=np.ones(d), sigma=stored, feats=np.zeros((3, d)))
        got = inception_utils.load_inception_moments('S32', str(tmp_path))
        assert np.array_equal(got['sigma'], stored.astype(np.float64))
    if n <= d:  # there the tolerance is needed
        assert np.linalg.eigvalsh(sigma.astype(np.float32).astype(np.float64)).min() < 0


@pytest.fixture
def fake_inception(monkeypatch):
    """Inception replaced by conftest's 8-feature stand-in."""
    import inception_utils
    from conftest import FakeInception
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())


def metrics_run(data_root, out, path):
    return run_flags(data_root, out, NAME, '--dataset_root', path, '--total_itrs', '2',
                     '--test_every', '2', '--num_inception_images', '10', '--G_batch_size', '10')


@pytest.mark.parametrize('arrays, what', [
    (dict(sigma=-np.eye(D)), 'not positive semi-definite'),
    (dict(sigma=nan_at(np.eye(D), 0, 0)), 'NaN or Inf'),
    (dict(mu=np.zeros(5), sigma=np.eye(5), feats=np.zeros((5, 5))),
     'hold 5 features, but the torchvision Inception network gives 8')])
def test_train_refuses_bad_moments_before_writing(arrays, what, data_root, tmp_path, capsys,
                                                  fake_inception):
    """A run that would test against these moments (and log FID nan or a negative FID, or crash
    at its first test) stops at start-up instead."""
    out = str(tmp_path / 'out')
    with_old_logs(out)
    write_moments(data_root, **arrays)
    h5 = write_h5(tmp_path / 'data.hdf5', n=16)
    assert what in train_refuses(metrics_run(data_root, out, h5), out, capsys)


@pytest.mark.slow
def test_train_logs_the_fid_of_good_moments(data_root, tmp_path, fake_inception):
    """The control: the same run with good moments logs a finite, non-negative FID."""
    import json
    out = str(tmp_path / 'out')
    write_moments(data_root)
    h5 = write_h5(tmp_path / 'data.hdf5', n=16)
    flags.run_cli(train.run, train.utils.prepare_parser(), metrics_run(data_root, out, h5))
    with open(os.path.join(out, 'logs', f'{NAME}_log.jsonl')) as f:
        fid = json.loads(f.readline())['FID']
    assert np.isfinite(fid) and fid >= 0


def test_fid_of_non_finite_samples_is_refused(tmp_path, fake_inception):
    """Samples whose features hold NaN get no FID: MetricsError, not a logged NaN."""
    import torch

    import inception_utils
    import metrics
    write_moments(str(tmp_path))
    measure = inception_utils.prepare_metrics('S32', data_root=str(tmp_path))
    good = measure(lambda: (torch.rand(10, 3, 4, 4), torch.zeros(10)), 10, prints=False)
    assert np.isfinite(good['FID']) and good['FID'] >= 0
    with pytest.raises(metrics.MetricsError, match='hold NaN or Inf'):
        measure(lambda: (torch.full((10, 3, 4, 4), float('nan')), torch.zeros(10)), 10,
                prints=False)


def test_valid_fid():
    """FID a rounding error below 0 is 0; NaN, Inf or clearly negative is refused."""
    import inception_utils
    import metrics
    eye = np.eye(4)
    assert inception_utils.valid_fid(-1e-9, eye, eye) == 0.0
    assert inception_utils.valid_fid(3.5, eye, eye) == 3.5
    for bad in (float('nan'), float('inf'), -2045.0, -1e-3):
        with pytest.raises(metrics.MetricsError, match='no distance'):
            inception_utils.valid_fid(bad, eye, eye)


# ----------------------------------------------------------------------------
# --tensorboard: its folder is checked at start-up.

@pytest.mark.parametrize('blocked', ['tb', ''])
def test_tensorboard_folder_that_cannot_be_written_is_refused_at_start(blocked, data_root,
                                                                       tmp_path, capsys):
    """logs_root/exp/tb (or logs_root/exp) is a file: one line, exit 2, nothing written (the
    event writer, which creates its folder at its first write, would fail in its own thread
    after the first iteration)."""
    pytest.importorskip('tensorboard')
    out = str(tmp_path / 'out')
    logs = os.path.join(out, 'logs')
    os.makedirs(os.path.join(logs, NAME) if blocked else logs)
    with open(os.path.join(logs, NAME, blocked) if blocked else os.path.join(logs, NAME),
              'w') as f:
        f.write('in the way')
    h5 = write_h5(tmp_path / 'data.hdf5')
    line = train_refuses(run_flags(data_root, out, NAME, '--dataset_root', h5, '--total_itrs',
                                   '2', '--tensorboard'), out, capsys)
    assert '--tensorboard folder' in line and 'is a file' in line


# ----------------------------------------------------------------------------
# The data path's caches are opened only as regular files.

def test_a_fifo_as_the_image_index_is_refused_not_waited_on(tmp_path, alarm):
    """A FIFO where the index goes: not read (no wait), and not replaced by the rebuilt index
    (files.check_target: no atomic write replaces a FIFO, round 15), but one line saying to
    remove it; once removed, the index is built."""
    root = image_folder(tmp_path / 'images')
    index = os.path.join(root, 'mine_imgs.npz')
    os.mkfifo(index)
    with pytest.raises(files.FileError, match=f'{index}: it is a FIFO, which this project '
                                              f'never replaces with a file; remove it'):
        datasets.ImageFolder(root, index_filename='mine_imgs.npz')
    assert stat.S_ISFIFO(os.lstat(index).st_mode)
    os.remove(index)
    assert len(datasets.ImageFolder(root, index_filename='mine_imgs.npz')) == 8
    assert os.path.isfile(index)


def test_a_fifo_as_the_s32_cache_is_refused(tmp_path, alarm):
    os.mkfifo(tmp_path / 'S32_seed0.npz')
    with pytest.raises(flags.ConfigError,
                       match='not a regular file'):
        datasets.load_s32(str(tmp_path))


def test_an_hdf5_read_error_names_the_file_and_image(tmp_path):
    """The file is cut after the dataset was opened: reading an image raises ImageReadError
    naming the file and the index, the error train.py ends the run with in one line."""
    path = write_h5(tmp_path / 'data.hdf5', n=64)
    ds = datasets.ILSVRC_HDF5(path)
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(datasets.ImageReadError) as e:
        ds[63]
    assert str(e.value).startswith(f'{path}: image 63 cannot be read (')
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('what,load_in_mem', [('labels', False), ('imgs', True)])
def test_a_damaged_chunk_read_at_start_up_names_the_file(tmp_path, what, load_in_mem):
    """A chunk whose checksum fails (fletcher32, one byte flipped), read whole at start-up
    (the labels; the images with --load_in_mem), is one line naming the file and the dataset
    with what to do, not h5py's bare 'filter returned failure during read'."""
    path = str(tmp_path / 'I32.hdf5')
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=np.zeros((8, 3, 32, 32), np.uint8), chunks=(2, 3, 32, 32),
                         fletcher32=what == 'imgs')
        f.create_dataset('labels', data=np.arange(8) % 2, chunks=(2,),
                         fletcher32=what == 'labels')
    with h5py.File(path, 'r') as f:
        offset = f[what].id.get_chunk_info(1).byte_offset
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(datasets.FileError, match=rf"I32.hdf5: '{what}' cannot be read \(.*"
                                                 r"filter.*\); the file is damaged: write"):
        datasets.ILSVRC_HDF5(path, load_in_mem=load_in_mem)


def test_an_empty_training_set_says_so(data_root, tmp_path, capsys):
    """An HDF5 file of 0 images: the line said to lower the batch flags, which no value can
    make trainable; it now says the set is empty and how to make it."""
    path = str(tmp_path / 'I32.hdf5')
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', shape=(0, 3, 32, 32), dtype=np.uint8)
        f.create_dataset('labels', shape=(0,), dtype=np.int64)
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), NAME, '--dataset', 'I32_hdf5', '--dataset_root',
                     path, '--n_classes', '10', '--total_itrs', '1')
    with pytest.raises(SystemExit):
        train.main(argv)
    assert 'holds no images: make it again (make_hdf5.py)' in capsys.readouterr().err
    assert not out.exists()
