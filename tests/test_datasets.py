"""Tests for datasets.py: S32, ImageFolder's index and layout checks, HDF5 and CIFAR."""

import os
import time

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import datasets as dset
import flags

N_PER_CLASS = 40


@pytest.fixture(scope='module')
def s32_small():
    """A small S32 draw shared by the sanity tests."""
    return dset.make_s32(num_per_class=N_PER_CLASS, seed=0)


def test_make_s32_shapes_and_balance(s32_small):
    imgs, labels = s32_small
    assert imgs.shape == (10 * N_PER_CLASS, 32, 32, 3)
    assert imgs.dtype == np.uint8 and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [N_PER_CLASS] * 10
    # Images have content: foreground and background both present.
    assert imgs.max() > 200 and imgs.min() < 40


def test_make_s32_deterministic(s32_small):
    imgs, labels = dset.make_s32(num_per_class=N_PER_CLASS, seed=0)
    np.testing.assert_array_equal(imgs, s32_small[0])
    np.testing.assert_array_equal(labels, s32_small[1])
    other, _ = dset.make_s32(num_per_class=N_PER_CLASS, seed=1)
    assert not np.array_equal(other, imgs)


def test_make_s32_classes_separable(s32_small):
    """A nearest-class-mean classifier on raw pixels must do far better than chance."""
    imgs, labels = s32_small
    x = imgs.reshape(len(imgs), -1).astype(np.float32) / 255
    train, test = np.arange(len(x)) % 2 == 0, np.arange(len(x)) % 2 == 1
    means = np.stack([x[train & (labels == c)].mean(0) for c in range(10)])
    # Class means differ pairwise by a visible margin.
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[~np.eye(10, dtype=bool)].min() > 1.0
    pred = np.argmin(((x[test][:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[test]).mean() > 0.6


def test_s32_dataset_caches_and_behaves_like_cifar(tmp_path, monkeypatch):
    root = tmp_path / 'S32'
    ds = dset.S32(root=str(root), index_filename='S32_imgs.npz', num_per_class=5)
    cache = root / 'S32_seed0_n5.npz'
    assert cache.exists()
    assert not [p for p in os.listdir(root) if p.startswith('.tmp_')]
    assert len(ds) == 50 and isinstance(ds.labels, np.ndarray)
    img, label = ds[3]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (32, 32)
    assert isinstance(label, int) and label == ds.labels[3]
    # The second construction reads the cache instead of regenerating.
    mtime = cache.stat().st_mtime_ns

    def no_regeneration(*args, **kwargs):
        raise AssertionError('S32 regenerated although its cache exists')
    monkeypatch.setattr(dset, 'make_s32', no_regeneration)
    ds2 = dset.S32(root=str(root), transform=np.asarray, num_per_class=5)
    assert cache.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(ds2[3][0], np.asarray(img))


def test_s32_default_file_name(tmp_path, monkeypatch):
    # Keep the test fast: the default-size draw is replaced by a tiny one.
    monkeypatch.setattr(dset, 'make_s32', lambda n, seed: (
        np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64)))
    dset.S32(root=str(tmp_path), seed=3)
    assert (tmp_path / 'S32_seed3.npz').exists()


# ----------------------------------------------------------------------------
# ImageFolder.

def _make_folder(root, classes=('a', 'b', 'c'), per_class=3, size=(20, 14)):
    """Write a tiny root/<class>/<image>.png tree."""
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, c, f'{i}.png'))


def test_image_folder_index_and_items(tmp_path):
    _make_folder(tmp_path)
    ds = dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz', n_classes=3)
    assert (tmp_path / 'X_imgs.npz').exists()
    assert len(ds) == 9 and ds.classes == ['a', 'b', 'c']
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    img, label = ds[4]
    assert img.mode == 'RGB' and label == 1
    assert ds.imgs[4] == (str(tmp_path / 'b' / '1.png'), 1)


def test_image_folder_cache_reused_and_invalidated(tmp_path, monkeypatch):
    _make_folder(tmp_path)
    dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    calls = []
    real = dset.make_dataset
    monkeypatch.setattr(dset, 'make_dataset',
                        lambda *a: calls.append(1) or real(*a))
    assert len(dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')) == 9
    assert calls == []  # served from the cache
    # Adding an image changes its class folder's mtime: the index is rebuilt.
    time.sleep(0.01)
    Image.new('RGB', (5, 5)).save(tmp_path / 'b' / 'new.png')
    os.utime(tmp_path / 'b', ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    ds = dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    assert calls == [1] and len(ds) == 10
    # A new class folder changes the signature too.
    _make_folder(tmp_path, classes=('d',), per_class=2)
    ds = dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    assert len(calls) == 2 and ds.classes == ['a', 'b', 'c', 'd']
    # Edits inside a folder nested in a class folder are seen too.
    (tmp_path / 'c' / 'more').mkdir()
    Image.new('RGB', (5, 5)).save(tmp_path / 'c' / 'more' / '0.png')
    assert len(dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')) == 13
    assert len(calls) == 3
    assert len(dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')) == 13
    assert len(calls) == 3
    Image.new('RGB', (5, 5)).save(tmp_path / 'c' / 'more' / '1.png')
    os.utime(tmp_path / 'c' / 'more', ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    ds = dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    assert len(calls) == 4 and len(ds) == 14
    assert (str(tmp_path / 'c' / 'more' / '1.png'), 2) in ds.imgs


def test_image_folder_load_in_mem_applies_transform_once(tmp_path):
    _make_folder(tmp_path, per_class=2)
    seen = []
    ds = dset.ImageFolder(str(tmp_path), transform=lambda im: seen.append(1) or im.size,
                          load_in_mem=True)
    assert len(seen) == 6 and ds[0][0] == (20, 14) and len(seen) == 6


def test_folder_layout_errors(tmp_path):
    flat = tmp_path / 'flat'
    flat.mkdir()
    Image.new('RGB', (4, 4)).save(flat / 'x.png')
    with pytest.raises(ValueError, match='no class subfolders'):
        dset.ImageFolder(str(flat))
    # The classic mistake: data_root/ImageNet/train/<class>/<image>.
    deep = tmp_path / 'deep'
    _make_folder(str(deep / 'train'))
    with pytest.raises(ValueError, match='one level too deep'):
        dset.ImageFolder(str(deep), n_classes=3)
    with pytest.raises(ValueError, match='one level too deep'):
        dset.ImageFolder(str(deep))
    ok = tmp_path / 'ok'
    _make_folder(str(ok))
    with pytest.raises(ValueError, match='found 3 class folders .* has 1000 classes'):
        dset.ImageFolder(str(ok), n_classes=1000)
    # The error message is a single line.
    with pytest.raises(ValueError) as info:
        dset.ImageFolder(str(ok), n_classes=5)
    assert '\n' not in str(info.value)



def test_classes_with_fewer_than_two_images_refused(tmp_path, monkeypatch):
    """A class needs two images: one or none is refused in one line naming the class folder,
    however the index was built."""
    _make_folder(tmp_path, classes=('a', 'c'), per_class=2)
    _make_folder(tmp_path, classes=('b',), per_class=1)
    with pytest.raises(dset.DatasetError) as info:
        dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    assert str(info.value) == (f'class folder {tmp_path / "b"} holds 1 image; a class needs '
                               f'at least 2: add images or remove the folder')
    assert not (tmp_path / 'X_imgs.npz').exists()
    # Two classes at fault: both named with their counts.
    (tmp_path / 'd').mkdir()
    with pytest.raises(dset.DatasetError, match=r"2 class folders of .* hold fewer than 2 "
                                                r"images \('b' \(1\), 'd' \(0\)\)"):
        dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    (tmp_path / 'd').rmdir()
    # An index cached without the rule (as an older version wrote it) is held to it too.
    with monkeypatch.context() as m:
        m.setattr(dset, 'check_layout', lambda *a: None)
        assert len(dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')) == 5
    assert (tmp_path / 'X_imgs.npz').exists()
    with pytest.raises(dset.DatasetError, match='holds 1 image;'):
        dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz')
    # Two images are enough.
    Image.new('RGB', (5, 5)).save(tmp_path / 'b' / 'second.png')
    os.utime(tmp_path / 'b', ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    assert dset.ImageFolder(str(tmp_path), index_filename='X_imgs.npz').labels.tolist() == [
        0, 0, 1, 1, 2, 2]

# ----------------------------------------------------------------------------
# ILSVRC_HDF5.

def _make_h5(path, n=24, res=8):
    """Write a small HDF5 in make_hdf5.py's format; returns (imgs, labels)."""
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (n, 3, res, res), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 5
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs, chunks=(5, 3, res, res))
        f.create_dataset('labels', data=labels)
    return imgs, labels


@pytest.mark.parametrize('load_in_mem', [False, True])
def test_hdf5_dataset_items(tmp_path, load_in_mem):
    path = str(tmp_path / 'ILSVRC8.hdf5')
    imgs, _ = _make_h5(path)
    ds = dset.ILSVRC_HDF5(path, load_in_mem=load_in_mem, index_filename='I8_imgs.npz')
    assert len(ds) == 24
    x, y = ds[7]
    expect = ((torch.from_numpy(imgs[7]).float() / 255) - 0.5) * 2
    assert torch.equal(x, expect) and y == 2 and isinstance(y, int)
    ds = dset.ILSVRC_HDF5(path, transform=lambda t: t + 10)
    assert torch.equal(ds[7][0], expect + 10)


def test_hdf5_dataset_multiworker(tmp_path):
    path = str(tmp_path / 'ILSVRC8.hdf5')
    imgs, labels = _make_h5(path)
    ds = dset.ILSVRC_HDF5(path)
    ds[0]  # a handle opened in the parent must not leak into the workers
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    np.testing.assert_array_equal(((x / 2 + 0.5) * 255).round().byte().numpy(), imgs)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_hdf5_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='make_hdf5.py'):
        dset.ILSVRC_HDF5(str(tmp_path / 'ILSVRC128.hdf5'))


# ----------------------------------------------------------------------------
# CIFAR.

@pytest.mark.parametrize('cls, folder', [(dset.CIFAR10, 'cifar-10-batches-py'),
                                         (dset.CIFAR100, 'cifar-100-python')])
def test_cifar_missing_files_name_the_path(tmp_path, cls, folder):
    with pytest.raises(FileNotFoundError, match=folder):
        cls(root=str(tmp_path), transform=None, load_in_mem=False,
            index_filename='C10_imgs.npz')
    assert os.listdir(tmp_path) == []  # nothing downloaded


def _s32_cache(root, **arrays):
    """An S32 cache at root holding arrays (default: a small valid one)."""
    rng = np.random.default_rng(0)
    base = {'imgs': rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
            'labels': np.arange(6) % 10}
    base.update(arrays)
    path = os.path.join(root, 'S32_seed0_n6.npz')  # the cache of 6 images per class
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize('arrays,why', [
    ({'imgs': np.zeros((6, 32, 32, 3), np.float16)}, 'holds images of float16'),
    ({'imgs': np.zeros((6, 32, 32, 4), np.uint8)}, 'not uint8 N x 32 x 32 x 3'),
    ({'labels': None}, 'lacks its imgs or labels array'),
    ({'labels': np.arange(5)}, 'not 6 integers'),
    ({'labels': np.full(6, 10)}, 'labels outside 0-9'),
    ({'labels': np.zeros(6, np.float32)}, 'holds labels of float32'),
    # Round 15: no images was refused with advice to make it again with make_hdf5.py.
    ({'imgs': np.zeros((0, 32, 32, 3), np.uint8), 'labels': np.zeros(0, np.int64)},
     'holds no images'),
    ('truncated', 'S32 cache')])
def test_a_damaged_s32_cache_is_one_line(tmp_path, arrays, why):
    """An S32 cache holding float16, 4-channel or label-less arrays, or truncated: tracebacks
    from PIL, numpy or zipfile at start-up or the first batch (the outside attacker's round 14).
    Each is now one line naming the file."""
    if arrays == 'truncated':
        path = _s32_cache(str(tmp_path))
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    else:
        path = _s32_cache(str(tmp_path), **arrays)
    with pytest.raises(flags.ConfigError) as err:
        dset.load_s32(str(tmp_path), num_per_class=6)
    assert why in str(err.value) and path in str(err.value) and '\n' not in str(err.value)
