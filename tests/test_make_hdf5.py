"""Tests for make_hdf5.py: exact pixels, HDF5 layout, atomic output, bad images, S32."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import datasets as dset
import make_hdf5
from helpers import ROOT

RES = 16


def _save(path, mode, size, rng):
    """Write one image of the given PIL mode and (w, h) size with random content."""
    w, h = size
    if mode == 'I;16':
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        img = Image.fromarray(arr)
        assert img.mode.startswith('I')
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        img = Image.fromarray(arr.squeeze(-1) if bands == 1 else arr, mode=mode)
    img.save(path)


# (class, file name, mode, size): odd sizes, both orientations, up- and downscaling.
IMAGES = [
    ('a', '0.png', 'RGB', (37, 23)),
    ('a', '1.jpg', 'RGB', (23, 37)),
    ('a', '2.png', 'L', (41, 41)),
    ('b', '0.png', 'RGBA', (19, 30)),
    ('b', '1.jpg', 'CMYK', (33, 17)),
    ('b', '2.tif', 'CMYK', (16, 21)),
    ('c', '0.png', 'I;16', (29, 18)),
    ('c', '1.png', 'P', (9, 13)),
    ('c', '2.bmp', 'RGB', (16, 16)),
]


@pytest.fixture
def folder(tmp_path):
    """data_root with a small three-class image folder under ImageNet/."""
    rng = np.random.default_rng(0)
    root = tmp_path / 'ImageNet'
    for cls, name, mode, size in IMAGES:
        os.makedirs(root / cls, exist_ok=True)
        _save(root / cls / name, mode, size, rng)
    return tmp_path


def _release_pixels(path, res):
    """The release's pixels, from torchvision's own transforms on the PIL image."""
    with open(path, 'rb') as f:
        img = Image.open(f)
        if img.mode.startswith('I;16'):  # the release saturated these at 255: scaled here
            img = Image.fromarray(np.round(np.asarray(img) / 257).astype(np.uint8), 'L')
        img = img.convert('RGB')
    img = TF.center_crop(img, min(img.size))
    img = T.Resize(res)(img)
    return np.asarray(img).transpose(2, 0, 1)


def _convert(data_root, *extra):
    """Run make_hdf5 on data_root/ImageNet as a 3-class dataset at RES."""
    make_hdf5.main(['--dataset', f'I{RES}', '--data_root', str(data_root),
                    '--n_classes', '3', '--batch_size', '4', '--no_progress',
                    *extra])
    return data_root / f'ILSVRC{RES}.hdf5'


@pytest.mark.parametrize('workers', ['0', '2'])
def test_pixels_exactly_those_of_the_release_transform(folder, workers):
    out = _convert(folder, '--num_workers', workers, '--chunk_size', '4')
    paths = sorted(str(p) for p in (folder / 'ImageNet').glob('*/*'))
    with h5py.File(out, 'r') as f:
        imgs, labels = f['imgs'][:], f['labels'][:]
    assert imgs.dtype == np.uint8 and imgs.shape == (len(IMAGES), 3, RES, RES)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(imgs[i], _release_pixels(path, RES), err_msg=path)
    # Only the final file and the folder index are left behind.
    assert sorted(os.listdir(folder)) == ['ILSVRC16.hdf5', 'ImageNet']
    assert (folder / 'ImageNet' / f'I{RES}_imgs.npz').exists()


# The release's --compression meant LZF; gzip is ours, only when asked for.
@pytest.mark.parametrize('flags, filt', [([], 'lzf'), (['--compression_filter', 'gzip'], 'gzip')])
def test_hdf5_round_trip_chunked_and_compressed(folder, flags, filt):
    plain = _convert(folder, '--num_workers', '0', '--chunk_size', '4')
    with h5py.File(plain, 'r') as f:
        assert f['imgs'].compression is None
        expect_imgs, expect_labels = f['imgs'][:], f['labels'][:]
    out = _convert(folder, '--num_workers', '0', '--chunk_size', '4', '--compression', *flags)
    with h5py.File(out, 'r') as f:
        assert f['imgs'].chunks == (4, 3, RES, RES)
        assert f['imgs'].compression == filt and f['labels'].compression == filt
        np.testing.assert_array_equal(f['imgs'][:], expect_imgs)
        np.testing.assert_array_equal(f['labels'][:], expect_labels)
    ds = dset.ILSVRC_HDF5(str(out))
    x, y = ds[5]
    assert y == 1 and tuple(x.shape) == (3, RES, RES)
    np.testing.assert_array_equal(((x + 1) / 2 * 255).round().byte().numpy(),
                                  expect_imgs[5])


def test_interrupted_run_leaves_no_final_file(folder, monkeypatch):
    out = folder / f'ILSVRC{RES}.hdf5'
    out.write_bytes(b'previous complete file')

    def boom(self, imgs, labels):
        raise KeyboardInterrupt

    monkeypatch.setattr(make_hdf5.ChunkWriter, 'add', boom)
    with pytest.raises(SystemExit) as info:  # Ctrl-C: one line and the shell's status 130
        _convert(folder, '--num_workers', '0')
    assert info.value.code == 130
    # The old file is untouched and no temporary file is left over.
    assert out.read_bytes() == b'previous complete file'
    assert sorted(os.listdir(folder)) == ['ILSVRC16.hdf5', 'ImageNet']


def _break_images(folder):
    """Truncate one JPEG and replace one PNG with garbage; returns their paths."""
    jpg = folder / 'ImageNet' / 'a' / '1.jpg'
    jpg.write_bytes(jpg.read_bytes()[:len(jpg.read_bytes()) // 2])
    png = folder / 'ImageNet' / 'c' / '1.png'
    png.write_bytes(b'not an image at all')
    return jpg, png


def _exit_line(info, capsys):
    """The one stderr line of a run that exited with status 2."""
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize('workers', ['0', '2'])
def test_bad_image_stops_the_run_with_its_path(folder, workers, capsys):
    jpg, _ = _break_images(folder)
    with pytest.raises(SystemExit) as info:
        _convert(folder, '--num_workers', workers)
    line = _exit_line(info, capsys)
    assert str(jpg) in line and '--skip_bad' in line
    assert sorted(os.listdir(folder)) == ['ImageNet']


@pytest.mark.slow
def test_skip_bad_skips_and_reports(folder, capsys):
    jpg, png = _break_images(folder)
    out = _convert(folder, '--num_workers', '0', '--skip_bad', '--chunk_size', '4')
    with h5py.File(out, 'r') as f:
        assert f['imgs'].shape == (len(IMAGES) - 2, 3, RES, RES)
        assert f['labels'][:].tolist() == [0, 0, 1, 1, 1, 2, 2]
        good = folder / 'ImageNet' / 'c' / '2.bmp'
        np.testing.assert_array_equal(f['imgs'][-1], _release_pixels(good, RES))
    text = capsys.readouterr().out
    assert 'skipped 2 unreadable images' in text
    assert str(jpg) in text and str(png) in text


def test_folder_layout_error_exits_cleanly(tmp_path, capsys):
    deep = tmp_path / 'ImageNet' / 'train'
    for cls in 'abc':
        os.makedirs(deep / cls)
        Image.new('RGB', (8, 8)).save(deep / cls / 'x.png')
    with pytest.raises(SystemExit) as info:
        _convert(tmp_path, '--num_workers', '0')
    assert 'one level too deep' in _exit_line(info, capsys)
    assert not list(tmp_path.glob('*.hdf5*'))



def test_one_image_class_exits_cleanly(folder, capsys):
    """A class folder with one image: one line naming it, exit 2, no file written."""
    for name in ('1.jpg', '2.tif'):
        os.remove(folder / 'ImageNet' / 'b' / name)
    with pytest.raises(SystemExit) as info:
        _convert(folder, '--num_workers', '0')
    line = _exit_line(info, capsys)
    assert line.startswith('error: class folder ') and os.path.join('ImageNet', 'b') in line
    assert 'holds 1 image;' in line
    assert not list(folder.glob('*.hdf5*')) and not list(folder.glob('.*hdf5*'))

def test_refuses_hdf5_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        make_hdf5.main(['--dataset', 'I128_hdf5', '--data_root', str(tmp_path)])
    assert 'already an HDF5' in _exit_line(info, capsys)


def test_s32_conversion(tmp_path, monkeypatch):
    monkeypatch.setattr(dset, 'S32_DEFAULT_PER_CLASS', 7)
    make_hdf5.main(['--dataset', 'S32', '--data_root', str(tmp_path),
                    '--no_progress', '--chunk_size', '16'])
    imgs, labels = dset.make_s32(num_per_class=7, seed=0)
    with h5py.File(tmp_path / 'S32.hdf5', 'r') as f:
        np.testing.assert_array_equal(f['imgs'][:], imgs.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(f['labels'][:], labels)
        assert f['imgs'].chunks == (16, 3, 32, 32)


def test_benchmark_compares_against_the_release_round_trip(tmp_path, monkeypatch):
    """tools/bench_make_hdf5.py's two converters, on a folder smaller than one release chunk."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tools'))
    import bench_make_hdf5 as bench
    root = str(tmp_path / 'images')
    bench.make_folder(root, 12, 3, sizes=(20, 40))
    index = f'I{RES}_imgs.npz'
    files = {}
    for name, convert in (('release', bench.release_convert), ('ours', bench.ours_convert)):
        files[name] = str(tmp_path / f'{name}.hdf5')
        assert convert(root, files[name], RES, 5, 0, index, False) == 12
    with h5py.File(files['release'], 'r') as a, h5py.File(files['ours'], 'r') as b:
        np.testing.assert_array_equal(a['labels'][:], b['labels'][:])
        release, ours = a['imgs'][:].astype(int), b['imgs'][:].astype(int)
    # Truncating v/255 normalised and back gives v or v - 1, never anything else.
    assert set(np.unique(ours - release)) == {0, 1}


@pytest.mark.parametrize('dataset,res,name', [
    ('I128', 128, 'ILSVRC128.hdf5'), ('I32', 32, 'ILSVRC32.hdf5'), ('S32', 32, 'S32.hdf5'),
    ('I512', 512, 'ILSVRC512.hdf5'), ('I128', 64, 'ILSVRC64.hdf5'), ('C10', 32, 'ILSVRC32.hdf5')])
def test_output_names(dataset, res, name):
    """The file the {dataset}_hdf5 loader reads; ILSVRC{res}.hdf5 for any other resolution."""
    config = {'output': '', 'dataset': dataset, 'data_root': 'data'}
    assert make_hdf5.output_path(config, res) == os.path.join('data', name)
    if dataset + '_hdf5' in dset.DATASETS and res == dset.DATASETS[dataset].resolution:
        assert dset.DATASETS[dataset + '_hdf5'].root == name


@pytest.mark.parametrize('extra, expect', [
    (['--resolution', '100000'], 'decoded images of 100000 x 100000'),   # 30 GB an image
    (['--resolution', '8192', '--batch_size', '1'], 'free in')])          # 200 MB an image
def test_sizes_the_flags_ask_for_are_checked_before_decoding(folder, capsys, monkeypatch,
                                                             extra, expect):
    """A --resolution whose decoded batches exceed memory, or whose uncompressed file exceeds
    the output disk (here a disk of 1 GB free), is refused in one line before any image is
    decoded; nothing is written."""
    import shutil
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage(p)._replace(free=2 ** 30))
    with pytest.raises(SystemExit) as info:
        _convert(folder, '--num_workers', '0', *extra)
    assert expect in _exit_line(info, capsys)
    assert sorted(os.listdir(folder)) == ['ImageNet']


def test_an_image_gone_behind_its_index_says_how_to_relist(folder, capsys):
    """An indexed image removed with its folder's mtime put back (the index is trusted while
    mtimes are unchanged): the line's advice now includes deleting the index, which brings
    the folder's real listing back (fixing or --skip_bad could not)."""
    _convert(folder)
    gone, cls = folder / 'ImageNet' / 'c' / '2.bmp', folder / 'ImageNet' / 'c'
    stamp = os.stat(cls).st_mtime_ns
    gone.unlink()
    os.utime(cls, ns=(stamp, stamp))
    with pytest.raises(SystemExit) as info:
        _convert(folder)
    index = f'I{RES}_imgs.npz'
    assert f'delete its {index} to list it again' in _exit_line(info, capsys)
    os.remove(folder / 'ImageNet' / index)
    with h5py.File(_convert(folder), 'r') as f:
        assert len(f['labels']) == len(IMAGES) - 1


@pytest.mark.parametrize('mode,kind', [('F', 'floating-point'), ('I', '32-bit integer')])
def test_pixels_of_no_stated_range_are_refused_with_the_path(folder, capsys, mode, kind):
    """A float TIFF was stored black and a 16-bit PNG saturated (the outside attacker's round
    10); pixels whose range no file states stop the run in one line naming the file."""
    path = folder / 'ImageNet' / 'a' / 'x.tif'
    values = np.random.default_rng(0).random((20, 20))
    Image.fromarray(values.astype(np.float32) if mode == 'F'
                    else (values * 1000).astype(np.int32)).save(path)
    with pytest.raises(SystemExit) as info:
        _convert(folder, '--num_workers', '0')
    line = _exit_line(info, capsys)
    assert str(path) in line and kind in line and 'convert it to 8 bits' in line


def test_more_workers_than_cores_add_no_warning_to_a_refusal(folder):
    """With make_hdf5.py's default 16 workers on a machine of fewer cores, torch's four-line
    warning about the worker count stood before the one line of a refusal (the outside
    attacker's round 14: a text file named .png). Run as a child so the warning would reach its
    stderr."""
    if (os.cpu_count() or 1) >= 16:
        pytest.skip('torch warns only when the workers outnumber the cores')
    bad = folder / 'ImageNet' / 'a' / 'zz.png'
    bad.write_text('not an image')
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'make_hdf5.py'), '--dataset',
                          f'I{RES}', '--data_root', str(folder), '--n_classes', '3',
                          '--batch_size', '4', '--no_progress', '--num_workers', '16'],
                         capture_output=True, text=True, timeout=300, cwd=folder)
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run.stderr
    assert str(bad) in run.stderr and not (folder / f'ILSVRC{RES}.hdf5').exists()


@pytest.mark.parametrize('kind,why', [('folder', 'is a folder'), ('fifo', 'it is a FIFO'),
                                      ('device', 'it is a device')])
def test_an_output_that_is_no_file_is_refused_before_any_image_is_decoded(folder, capsys,
                                                                          monkeypatch, kind, why):
    """--output naming an existing folder was refused only once every image was decoded (the
    outside attacker's round 14); a FIFO or a device node there (/dev/null) was replaced by the
    finished file, exit 0 (round 15). Each is refused before any image is decoded, the node
    left as it was (files.check_target, which every atomic write goes through)."""
    import stat
    out = folder / 'out'
    if kind == 'folder':
        out.mkdir()
    elif kind == 'fifo':
        os.mkfifo(out)
    else:
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of its own
    decoded = []
    monkeypatch.setattr(dset, 'decode_image', lambda *a, **k: decoded.append(a) or 1 / 0)
    with pytest.raises(SystemExit) as info:
        _convert(folder, '--output', str(out), '--num_workers', '0')
    line = _exit_line(info, capsys)
    assert str(out) in line and why in line and decoded == []
    mode = os.lstat(out).st_mode
    assert {'folder': stat.S_ISDIR, 'fifo': stat.S_ISFIFO, 'device': stat.S_ISCHR}[kind](mode)
