"""Reading HDF5 files for training: chunk layouts, the chunk-aware sampler, the slow-layout
warning and the --load_in_mem memory check."""
import os
import sys

import h5py
import numpy as np
import pytest
import torch

import datasets as dset
import files
import make_hdf5
import train
import train_fns
import utils
from helpers import ROOT, assert_same, run_flags

N, RES = 60, 8


def images(n=N, res=RES, seed=0):
    """Random uint8 images and class-sorted labels."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 3, res, res), dtype=np.uint8)
    return imgs, (np.arange(n) * 5 // n).astype(np.int64)


def write(path, imgs, labels, compression='none', chunk=None):
    """Write through make_hdf5.py's writer (chunk None: its default)."""
    config = {'compression': compression != 'none', 'compression_filter': compression,
              'chunk_size': chunk, 'skip_bad': False, 'no_progress': True}
    batches = ((imgs[i:i + 16], labels[i:i + 16], []) for i in range(0, len(labels), 16))
    make_hdf5.write_hdf5(str(path), batches, len(labels), imgs.shape[-1], config)
    return str(path)


def reference(img):
    """The release's normalisation of a uint8 image, as the release wrote it."""
    return ((torch.from_numpy(img).float() / 255) - 0.5) * 2


# ----------------------------------------------------------------------------
# Layouts.

LAYOUTS = [('none', 500), ('none', 1), ('none', None), ('lzf', 500), ('lzf', 7), ('lzf', None),
           ('gzip', 1), ('gzip', 13)]


def test_every_chunk_layout_gives_the_same_images(tmp_path):
    imgs, labels = images()
    contiguous = tmp_path / 'contiguous.hdf5'
    with h5py.File(contiguous, 'w') as f:  # no chunks at all
        f.create_dataset('imgs', data=imgs)
        f.create_dataset('labels', data=labels)
    paths = [str(contiguous)] + [write(tmp_path / f'{c}_{k}.hdf5', imgs, labels, c, k)
                                 for c, k in LAYOUTS]
    batches = []
    for path in paths:
        ds = dset.ILSVRC_HDF5(path)
        for i in range(N):
            x, y = ds[i]
            assert y == labels[i] and torch.equal(x, reference(imgs[i])), (path, i)
        loader = dset.get_data_loaders('S32', dataset_root=path, batch_size=8, num_workers=0,
                                       pin_memory=False, seed=3)[0]
        batches.append([(x, y) for x, y in loader])
    # The full shuffle does not depend on the layout: the same batches from every file.
    for other in batches[1:]:
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(batches[0], other))


def test_make_hdf5_default_chunks(tmp_path):
    """Release layout (500) uncompressed, ~32 KB compressed chunks, labels one chunk a block."""
    imgs, labels = images(n=1200, res=32)
    with h5py.File(write(tmp_path / 'plain.hdf5', imgs, labels), 'r') as f:
        assert f['imgs'].chunks == (500, 3, 32, 32) and f['labels'].chunks == (500,)
    with h5py.File(write(tmp_path / 'lzf.hdf5', imgs, labels, 'lzf'), 'r') as f:
        assert f['imgs'].chunks == (10, 3, 32, 32) and f['imgs'].compression == 'lzf'
        assert f['labels'].chunks == (500,)
        np.testing.assert_array_equal(f['imgs'][:], imgs)
        np.testing.assert_array_equal(f['labels'][:], labels)
    assert make_hdf5.default_chunk(True, 128) == make_hdf5.default_chunk(True, 256) == 1
    assert make_hdf5.default_chunk(True, 64) == 2 and make_hdf5.default_chunk(None, 128) == 500


@pytest.mark.parametrize('in_place', [False, True])
def test_make_hdf5_rewrites_a_release_file(tmp_path, in_place):
    imgs, labels = images(n=130, res=32)
    old = write(tmp_path / 'old.hdf5', imgs, labels, 'lzf', 50)
    out = old if in_place else str(tmp_path / 'new.hdf5')
    make_hdf5.main(['--dataset_root', old, '--output', out, '--compression', '--no_progress'])
    with h5py.File(out, 'r') as f:
        assert f['imgs'].chunks == (10, 3, 32, 32) and f['imgs'].compression == 'lzf'
        np.testing.assert_array_equal(f['imgs'][:], imgs)
        np.testing.assert_array_equal(f['labels'][:], labels)
    assert sorted(os.listdir(tmp_path)) == sorted({'old.hdf5', os.path.basename(out)})


def test_compressed_files_cache_their_chunks(tmp_path):
    """Compressed: each process's cache holds max(window, 1) chunks; plain: reads bypass it."""
    imgs, labels = images(n=200, res=64)
    big = write(tmp_path / 'big.hdf5', imgs, labels, 'lzf', 100)  # 1.2 MB chunks
    for window, chunks in ((0, 1), (3, 3)):
        loader = dset.get_data_loaders('S32', dataset_root=big, num_workers=0,
                                       chunk_window=window)[0]
        ds = loader.dataset
        ds[0]
        nslots, nbytes = ds._file.id.get_access_plist().get_cache()[1:3]
        assert nbytes == chunks * 100 * 3 * 64 * 64 and nslots > 100 * chunks
        assert ds._imgs() is ds._imgs()  # one handle, so its cache survives between reads
    plain = dset.ILSVRC_HDF5(write(tmp_path / 'plain.hdf5', imgs, labels))
    assert plain.cache == {} and not plain.compressed


# ----------------------------------------------------------------------------
# uint8 batches, made floats where they are used.

def as_bits(x):
    """A float32 tensor's bit patterns, so that equality means bit-identical (-0.0 != 0.0)."""
    assert x.dtype == torch.float32
    return x.contiguous().view(torch.int32)


def test_to_float_is_the_release_formula():
    """Every pixel value gives the release's float32 ((x / 255) - 0.5) * 2, computed here
    with numpy; floats pass through untouched; any layout keeps its shape."""
    v = np.arange(256, dtype=np.float32)
    expect = torch.from_numpy((v / np.float32(255) - np.float32(0.5)) * np.float32(2))
    got = dset.to_float(torch.arange(256, dtype=torch.uint8))
    assert torch.equal(as_bits(got), as_bits(expect))
    batch = torch.from_numpy(images(n=4)[0])
    for x in (batch, batch.contiguous(memory_format=torch.channels_last), batch[:, :, ::2]):
        y = dset.to_float(x)
        assert y.shape == x.shape and torch.equal(as_bits(y), as_bits(reference(x.numpy())))
    floats = reference(batch.numpy())
    assert dset.to_float(floats) is floats


@pytest.mark.parametrize('load_in_mem', [False, True])
def test_raw_items_are_the_stored_pixels(tmp_path, load_in_mem):
    imgs, labels = images()
    path = write(tmp_path / 'f.hdf5', imgs, labels, 'lzf')
    raw = dset.ILSVRC_HDF5(path, raw=True, load_in_mem=load_in_mem)
    floats = dset.ILSVRC_HDF5(path, load_in_mem=load_in_mem)  # the default: the release's
    for i in (0, 17, N - 1):
        x, y = raw[i]
        assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(imgs[i]))
        assert y == labels[i] and torch.equal(as_bits(dset.to_float(x)), as_bits(floats[i][0]))
        x.zero_()  # an item is the caller's own: the in-memory array is untouched
        assert torch.equal(raw[i][0], torch.from_numpy(imgs[i]))
    # A transform gets the uint8 tensor.
    flipped = dset.ILSVRC_HDF5(path, raw=True, transform=lambda t: t.flip(-1))
    assert torch.equal(flipped[3][0], torch.from_numpy(imgs[3]).flip(-1))


@pytest.mark.parametrize('workers, load_in_mem, window', [(0, False, 0), (1, False, 2),
                                                          (0, True, 0)])
def test_loader_ships_uint8_that_become_the_old_floats(tmp_path, workers, load_in_mem, window):
    """With raw=True get_data_loaders' batches of an HDF5 file are uint8, and to_float gives the
    batches of the float loader (raw=False, the release's) and of ILSVRC_HDF5's items."""
    imgs, labels = images()
    path = write(tmp_path / 'f.hdf5', imgs, labels, 'gzip', 4)

    def batches(raw):
        loader = dset.get_data_loaders(
            'S32', dataset_root=path, batch_size=8, num_workers=workers, pin_memory=False,
            load_in_mem=load_in_mem, chunk_window=window, seed=2, raw=raw)[0]
        return [(x, y) for x, y in loader]
    raw, old = batches(True), batches(False)
    items = dset.ILSVRC_HDF5(path)
    order = dset.epoch_order(N, 0, 2, True, 4, window)
    assert len(raw) == N // 8 and all(x.dtype == torch.uint8 for x, _ in raw)
    for b, ((x, y), (x_old, y_old)) in enumerate(zip(raw, old)):
        expect = torch.stack([items[i][0] for i in order[8 * b:8 * b + 8]])
        assert torch.equal(as_bits(dset.to_float(x)), as_bits(x_old))
        assert torch.equal(as_bits(x_old), as_bits(expect)) and torch.equal(y, y_old)


@pytest.mark.slow
@pytest.mark.parametrize('extra', [[], ['--load_in_mem', '--channels_last'],
                                   ['--num_workers', '1']])
def test_step_gets_the_release_floats(data_root, tmp_path, monkeypatch, extra):
    """train.py on an HDF5 file hands the step the floats ILSVRC_HDF5 gives by default (the
    release's), bit for bit, in the sampler's order."""
    s32 = dset.S32(os.path.join(data_root, 'S32'))
    imgs = s32.data[:24].transpose(0, 3, 1, 2).copy()
    path = write(tmp_path / 's32.hdf5', imgs, s32.labels[:24], 'gzip')
    seen = []
    make_step = train_fns.GAN_training_function

    def recording(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def train_step(x, y):
            seen.append((x.clone(), y.clone()))
            return step(x, y)
        return train_step
    monkeypatch.setattr(train_fns, 'GAN_training_function', recording)
    flags = run_flags(data_root, str(tmp_path / 'out'), 's', '--dataset_root', path,
                      '--resolution', '32', '--n_classes', '10', '--total_itrs', '2',
                      '--save_every', '0', *extra)
    train.run(vars(utils.prepare_parser().parse_args(flags)))
    items = dset.ILSVRC_HDF5(path)
    order = dset.epoch_order(24, 0, 0)[:8]
    assert len(seen) == 2
    x, y = (torch.cat(t) for t in zip(*seen))
    assert torch.equal(as_bits(x), as_bits(torch.stack([items[i][0] for i in order])))
    assert torch.equal(y, torch.tensor([items[i][1] for i in order]))


# ----------------------------------------------------------------------------
# The chunk-aware order.

def windows_of(order, chunk, window):
    """Each position's window: chunks numbered in order of first appearance, W at a time."""
    first = {}
    for i in order:
        first.setdefault(i // chunk, len(first))
    return [first[i // chunk] // window for i in order]


@pytest.mark.parametrize('n, chunk, window', [(1000, 7, 3), (1003, 10, 4), (50, 1, 5),
                                              (64, 64, 2)])
def test_chunk_window_order(n, chunk, window):
    order = dset.epoch_order(n, 2, 5, True, chunk, window)
    assert sorted(order) == list(range(n))  # every image exactly once
    win = windows_of(order, chunk, window)
    assert win == sorted(win)  # a window's chunks are read out before the next window's
    if n > chunk * window:  # chunks are shuffled, and so are the images inside windows
        chunks = list(dict.fromkeys(i // chunk for i in order))
        assert chunks != sorted(chunks)
        assert order[:chunk * window] != sorted(order[:chunk * window])
        if chunk > 1:  # a window's chunks are interleaved, not read one after another
            assert [i // chunk for i in order[:chunk]] != [order[0] // chunk] * chunk
    assert order == dset.epoch_order(n, 2, 5, True, chunk, window)  # deterministic
    assert order != dset.epoch_order(n, 3, 5, True, chunk, window)  # per epoch
    assert order != dset.epoch_order(n, 2, 6, True, chunk, window)  # and per seed


def test_full_shuffle_unchanged():
    """Without a window the order is the seeded randperm checkpoints already rely on."""
    g = torch.Generator().manual_seed(7 * 1_000_003 + 4)
    assert dset.epoch_order(500, 4, 7) == torch.randperm(500, generator=g).tolist()
    assert dset.epoch_order(500, 4, 7, True, 50, 0) == dset.epoch_order(500, 4, 7)


class Chunked(torch.utils.data.Dataset):
    """len n, stored in chunks of `chunk_len`; items are their indices."""

    def __init__(self, n, chunk):
        self.n, self.chunk_len = n, chunk

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_epoch_sampler_resumes_mid_epoch_and_splits_ranks():
    ds = Chunked(203, 10)
    full = dset.EpochSampler(ds, seed=1, chunk_window=3)
    full.set_epoch(4)
    order = list(full)
    assert order == dset.epoch_order(203, 4, 1, True, 10, 3) and order != sorted(order)
    resumed = dset.EpochSampler(ds, seed=1, chunk_window=3)
    resumed.set_epoch(4, start=57)
    assert list(resumed) == order[57:] and len(resumed) == 203 - 57
    ranks = []
    for rank in range(2):
        s = dset.EpochSampler(ds, seed=1, rank=rank, world_size=2, chunk_window=3)
        s.set_epoch(4)
        ranks.append(list(s))
        s.set_epoch(4, start=20)
        assert list(s) == ranks[-1][20:]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(order[:202])


def test_multi_epoch_sampler_resumes_and_splits_ranks():
    ds, bs = Chunked(90, 8), 4
    stream = list(dset.MultiEpochSampler(ds, 3, batch_size=bs, seed=2, chunk_window=2))
    for e in range(3):
        assert stream[90 * e:90 * (e + 1)] == dset.epoch_order(90, e, 2, True, 8, 2)
    assert list(dset.MultiEpochSampler(ds, 3, start_itr=29, batch_size=bs, seed=2,
                                       chunk_window=2)) == stream[29 * bs:]
    ranks = [list(dset.MultiEpochSampler(ds, 3, start_itr=5, batch_size=bs, seed=2, rank=r,
                                         world_size=2, chunk_window=2)) for r in range(2)]
    assert ranks[0] == stream[5 * bs * 2::2] and ranks[1] == stream[5 * bs * 2 + 1::2]


@pytest.mark.slow
def test_train_resume_is_bit_exact_with_chunk_window(data_root, tmp_path, monkeypatch):
    """On an HDF5 file with --chunk_window: 3 + resume + 3 iterations (an epoch boundary
    inside) equal 6 in one run, and the batches follow the chunk-aware order."""
    s32 = dset.S32(os.path.join(data_root, 'S32'))
    imgs = s32.data[:22].transpose(0, 3, 1, 2).copy()
    path = write(tmp_path / 's32.hdf5', imgs, s32.labels[:22], 'lzf', 4)
    seen = []
    real = train.training_batches

    def recording(*args):
        for x, y, bar in real(*args):
            seen.append(x.clone())
            yield x, y, bar

    def run(out, itrs, *extra):
        flags = run_flags(data_root, str(out), 'w', '--dataset_root', path, '--resolution',
                          '32', '--n_classes', '10', '--chunk_window', '2', '--save_every',
                          '3', '--total_itrs', str(itrs), *extra)
        return train.run(vars(utils.prepare_parser().parse_args(flags)))

    monkeypatch.setattr(train, 'training_batches', recording)
    run(tmp_path / 'split', 3)
    state = run(tmp_path / 'split', 6, '--resume')
    resumed, seen[:] = list(seen), []
    run(tmp_path / 'once', 6)
    assert state['itr'] == 6 and state['epoch'] == 1
    assert all(torch.equal(a, b) for a, b in zip(resumed, seen)) and len(seen) == 6
    # 22 images, 5 batches of 4 per epoch: epoch 0's are the first 20 of its order, as
    # stored (the loader ships uint8; test_step_gets_the_release_floats checks the floats).
    order = dset.epoch_order(22, 0, 0, True, 4, 2)[:20]
    assert torch.equal(torch.cat(seen[:5]), torch.from_numpy(imgs[order]))
    for name in ('G', 'D', 'G_ema', 'G_optim', 'D_optim'):
        a = torch.load(tmp_path / 'split' / 'weights' / 'w' / f'{name}.pth', weights_only=True)
        b = torch.load(tmp_path / 'once' / 'weights' / 'w' / f'{name}.pth', weights_only=True)
        assert_same(a, b, name)


# ----------------------------------------------------------------------------
# The slow-layout warning.

def loader_warnings(path, capsys, **kwargs):
    """The stderr lines of building a shuffled loader over path."""
    capsys.readouterr()
    dset.get_data_loaders('S32', dataset_root=path, num_workers=0, shuffle=True, **kwargs)
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_big_compressed_chunks_warn_once_in_one_line(tmp_path, capsys):
    imgs, labels = images(n=200, res=32)
    slow = write(tmp_path / 'slow.hdf5', imgs, labels, 'gzip', 100)  # 307 KB chunks
    lines = loader_warnings(slow, capsys)
    assert len(lines) == 1 and lines[0].startswith('warning: ')
    line = lines[0]
    assert slow in line and '0.3 MB' in line and '--chunk_window' in line
    assert (f'python make_hdf5.py --dataset_root {slow} --output {slow} --compression '
            f'--compression_filter gzip') in line
    assert loader_warnings(slow, capsys) == []  # once per file
    # The suggested rewrite makes the warning go away.
    make_hdf5.main(line.split('`')[1].split()[2:] + ['--no_progress'])
    dset._warned_slow.clear()
    assert loader_warnings(slow, capsys) == []


def test_release_written_file_loads_and_reads_in_windows(tmp_path, monkeypatch, capsys):
    """A file written the release's way (tools/bench_make_hdf5.py rebuilds its writer: LZF,
    500-image chunks, grown batch by batch) warns, and --chunk_window reads it in its order."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    import bench_make_hdf5
    imgs, labels = images(n=1100, res=32)
    floats = torch.from_numpy(imgs).float() / 255 * 2 - 1
    path = str(tmp_path / 'release.hdf5')
    bench_make_hdf5.release_write(((floats[i:i + 256], torch.from_numpy(labels[i:i + 256]))
                                   for i in range(0, 1100, 256)), path, 1100, 32, True)
    with h5py.File(path, 'r') as f:
        assert f['imgs'].chunks[0] == 500 and f['imgs'].compression == 'lzf'
        stored = f['imgs'][:]
    assert len(loader_warnings(path, capsys)) == 1
    loader = dset.get_data_loaders('S32', dataset_root=path, batch_size=100, num_workers=0,
                                   pin_memory=False, chunk_window=1, seed=1)[0]
    seen = torch.cat([dset.to_float(x) for x, _ in loader])
    order = dset.epoch_order(1100, 0, 1, True, 500, 1)
    assert torch.equal(seen, torch.stack([reference(stored[i]) for i in order]))


@pytest.mark.parametrize('compression, chunk, kwargs', [
    ('lzf', 100, {'chunk_window': 4}), ('lzf', 100, {'load_in_mem': True}),
    ('lzf', 100, {'shuffle': False}), ('lzf', 80, {}), ('none', 200, {}), ('lzf', None, {})])
def test_no_warning_when_reading_is_fast(tmp_path, capsys, compression, chunk, kwargs):
    imgs, labels = images(n=200, res=32)
    path = write(tmp_path / 'f.hdf5', imgs, labels, compression, chunk)
    capsys.readouterr()
    dset.get_data_loaders('S32', dataset_root=path, num_workers=0,
                          **{'shuffle': True, **kwargs})
    assert [line for line in capsys.readouterr().err.splitlines()
            if line.startswith('warning')] == []


# ----------------------------------------------------------------------------
# --load_in_mem's memory check.

@pytest.fixture
def memory(monkeypatch):
    """Set the available memory datasets sees: memory(bytes)."""
    def fake(nbytes):
        monkeypatch.setattr(files, "available_memory", lambda: nbytes)
    return fake


def test_load_in_mem_says_what_it_takes(tmp_path, memory, capsys):
    imgs, labels = images()
    path = write(tmp_path / 'f.hdf5', imgs, labels)
    memory(files.MEM_HEADROOM + imgs.nbytes)
    ds = dset.ILSVRC_HDF5(path, load_in_mem=True)
    assert ds.data.nbytes == imgs.nbytes
    out = capsys.readouterr().out
    taken = f'{imgs.nbytes / 1e3:.0f} kB'  # below 10 MB sizes print in kB
    assert f'--load_in_mem: the {N} images of {path} take {taken}; 2.1 GB available' in out


def test_load_in_mem_refuses_what_does_not_fit(tmp_path, memory, monkeypatch):
    imgs, labels = images()
    path = write(tmp_path / 'f.hdf5', imgs, labels)
    memory(files.MEM_HEADROOM + imgs.nbytes - 1)
    with pytest.raises(utils.ConfigError, match='--load_in_mem needs') as info:
        dset.ILSVRC_HDF5(path, load_in_mem=True)
    assert '\n' not in str(info.value)
    # Every torchrun process of the machine loads its own copy.
    memory(files.MEM_HEADROOM + 3 * imgs.nbytes)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    with pytest.raises(utils.ConfigError, match='x 4 processes'):
        dset.ILSVRC_HDF5(path, load_in_mem=True)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '3')
    dset.ILSVRC_HDF5(path, load_in_mem=True)


def test_image_folder_load_in_mem_checks_before_loading(tmp_path, memory):
    from PIL import Image
    for c in 'ab':
        os.makedirs(tmp_path / c)
        for i in range(3):
            Image.new('RGB', (10, 6)).save(tmp_path / c / f'{i}.png')
    calls = []

    def transform(img):
        calls.append(1)
        return torch.zeros(3, 8, 8)
    per_item = 3 * 8 * 8 * 4 + dset.ITEM_OVERHEAD
    memory(files.MEM_HEADROOM + 6 * per_item - 1)
    with pytest.raises(utils.ConfigError, match='6 images of'):
        dset.ImageFolder(str(tmp_path), transform=transform, load_in_mem=True)
    assert len(calls) == 1  # refused after sizing one image, before loading the rest
    memory(files.MEM_HEADROOM + 6 * per_item)
    assert len(dset.ImageFolder(str(tmp_path), transform=transform, load_in_mem=True).data) == 6


@pytest.mark.slow
def test_train_refuses_load_in_mem_with_one_line(data_root, tmp_path, memory, capsys):
    imgs, labels = images(res=32)
    path = write(tmp_path / 'f.hdf5', imgs, labels)
    memory(10 ** 9)
    out = tmp_path / 'out'
    argv = run_flags(data_root, str(out), 'x', '--dataset_root', path, '--resolution', '32',
                     '--n_classes', '10', '--load_in_mem', '--total_itrs', '1')
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith('error: --load_in_mem needs ')
    assert ' kB for ' in err[0]
    assert not out.exists()


def write_files(root, files):
    """Write {relative path: text} under root."""
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), 'w') as f:
            f.write(text)


def test_available_memory_reads_meminfo_and_cgroup_limits(tmp_path):
    write_files(tmp_path, {
        'meminfo': 'MemTotal:  100 kB\nMemFree:  5 kB\nMemAvailable:   4000000 kB\n',
        'self_v2': '0::/job/step\n',
        # v2: the job's limit binds (10 GB - (9 GB - 2 GB inactive cache) = 3 GB); the step
        # has none.
        'v2/job/memory.max': '10000000000\n', 'v2/job/memory.current': '9000000000\n',
        'v2/job/memory.stat': 'anon 1\ninactive_file 2000000000\nactive_file 5\n',
        'v2/job/step/memory.max': 'max\n',
        'self_v1': '4:memory:/docker/abc\n3:cpu:/x\n',
        # v1 without a cgroup namespace: the mount root is the container's own cgroup.
        'v1/memory/memory.limit_in_bytes': '2000000000\n',
        'v1/memory/memory.usage_in_bytes': '1500000000\n',
        'v1/memory/memory.stat': 'cache 1\ntotal_inactive_file 500000000\n',
    })
    t = str(tmp_path)

    def avail(root, self_cgroup):
        return files.available_memory(f'{t}/meminfo', f'{t}/{root}', f'{t}/{self_cgroup}')
    assert avail('none', 'none') == 4000000 * 1024
    assert avail('v2', 'self_v2') == 3000000000
    assert avail('v1', 'self_v1') == 1000000000
    # Without /proc/meminfo: the free pages os.sysconf reports.
    pages = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    got = files.available_memory(f'{t}/missing', f'{t}/none', f'{t}/none')
    assert abs(got - pages) < 0.2 * pages
    real = files.available_memory()
    assert real is not None and real > 0


@pytest.mark.slow
def test_read_benchmark_runs(tmp_path, monkeypatch, capsys):
    """tools/bench_hdf5_read.py end to end on a tiny file: every figure of its table."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    import bench_hdf5_read
    monkeypatch.setattr(sys, 'argv', [
        'bench', '--n_images', '300', '--res', '32', '--workers', '0', '--seconds', '0.01',
        '--compressions', 'none,gzip', '--chunk_window', '2', '--dir', str(tmp_path)])
    bench_hdf5_read.main()
    table = capsys.readouterr().out.split('|---|')[1].splitlines()[1:]
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in table]
    # The release layout's 500 images per chunk stop at the 300 images there are.
    assert [r[:2] for r in rows] == [['none', '300'], ['gzip', '300'], ['gzip', '10']]
    assert rows[1][7] and not rows[2][7]  # chunk-aware figures for the big compressed chunks
    assert all(float(r[i].split()[0].replace(',', '')) > 0 for r in rows for i in (3, 5, 6, 8))
    assert os.listdir(tmp_path) == []
