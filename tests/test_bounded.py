"""Declared sizes are checked before allocation and every parser is linear (issue 19).

Each crafted file declares far more than it holds (or than any machine has); the readers must
refuse it in one line (FileError, which the CLIs print and exit 2 on) quickly and without
allocating what it declares.
"""
import io
import os
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import files
import tf_bundle
from tf_bundle import field, varint

# ----------------------------------------------------------------------------
# TensorFlow bundles.

def test_a_megabyte_of_varints_parses_in_linear_time():
    """A 1 MB protobuf message of varint fields, against the values it was built from."""
    rng = np.random.default_rng(0)
    values = [int(v) for v in rng.integers(0, 1 << 62, 120000, dtype=np.int64)]
    values[::7] = [int(v) for v in rng.integers(0, 128, len(values[::7]))]
    buf = b''.join(field(1, 0, v) for v in values)
    assert len(buf) > 1 << 20
    start = time.perf_counter()
    parsed = tf_bundle.parse_message(buf)
    # A hang guard, not a speed target: a quadratic parser needs hours here.
    assert time.perf_counter() - start < 30
    assert parsed == {1: values}


def test_a_megabyte_long_varint_is_refused_at_once():
    """One varint of 1 MB of continuation bytes: the old reader grew a big integer for 34 s."""
    buf = b'\xff' * (1 << 20) + b'\x01'
    start = time.perf_counter()
    with pytest.raises(files.FileError, match='longer than 10 bytes'):
        tf_bundle.read_varint(buf, 0)
    with pytest.raises(files.FileError):
        tf_bundle.parse_message(b'\x08' + buf)
    assert time.perf_counter() - start < 30


def test_varints_round_trip_at_the_64_bit_edge():
    for value in (0, 1, 127, 128, 1 << 63, (1 << 64) - 1):
        encoded = varint(value)
        assert len(encoded) <= tf_bundle.MAX_VARINT
        assert tf_bundle.read_varint(encoded, 0) == (value, len(encoded))
    with pytest.raises(files.FileError, match='truncated'):
        tf_bundle.read_varint(varint(1 << 40)[:-1], 0)


def bundle(tmp_path, entry, data=b'\0' * 64):
    """A one-tensor bundle 'w' whose BundleEntryProto is entry (bytes), data as its data file."""
    prefix = str(tmp_path / 'ckpt')
    header = field(1, 0, 1) + field(3, 2, field(1, 0, 1))
    with open(prefix + '.index', 'wb') as f:
        tf_bundle.write_table(f, [(b'', header), (b'w', entry)])
    with open(prefix + '.data-00000-of-00001', 'wb') as f:
        f.write(data)
    return prefix


def entry(dims, size, offset=0, dtype=1):
    shape = b''.join(field(2, 2, field(1, 0, d)) for d in dims)
    return (field(1, 0, dtype) + field(2, 2, shape) + (field(4, 0, offset) if offset else b'')
            + field(5, 0, size))


@pytest.mark.parametrize('dims, size, offset, message', [
    ((1 << 38,), 1 << 40, 0, 'declares'),               # a 1 TB tensor in a 64-byte file
    ((10 ** 9, 10 ** 9), 4 * 10 ** 18, 0, 'declares'),  # a 10^9 x 10^9 shape
    ((0, 10 ** 12, 10 ** 12), 0, 0, 'declares'),        # empty, but no such shape fits
    ((4,), 16, 1 << 62, 'truncated'),                   # an offset far past the end
    (((1 << 64) - 1,), 1 << 40, 0, 'declares'),          # -1 as TensorFlow's int64 varint
    ((1,) * 100000, 4, 0, '100000 dimensions'),         # more dimensions than numpy builds
])
def test_huge_declared_tensors_are_refused_before_reading(tmp_path, dims, size, offset,
                                                           message):
    b = tf_bundle.Bundle(bundle(tmp_path, entry(dims, size, offset)))
    with pytest.raises(files.FileError, match=message):
        b['w']


def test_size_and_shape_disagreeing_is_refused(tmp_path):
    b = tf_bundle.Bundle(bundle(tmp_path, entry((4,), 12)))
    with pytest.raises(tf_bundle.BundleError, match='do not hold'):
        b['w']
    assert np.array_equal(tf_bundle.Bundle(bundle(tmp_path, entry((4,), 16)))['w'],
                          np.zeros(4, np.float32))


def index_with_footer(tmp_path, index_offset, index_size, body=b''):
    """An index file: body, then a footer whose index handle is (index_offset, index_size)."""
    path = tmp_path / 'ckpt.index'
    handles = varint(0) + varint(0) + varint(index_offset) + varint(index_size)
    path.write_bytes(body + handles + b'\0' * (40 - len(handles))
                     + struct.pack('<Q', tf_bundle.MAGIC))
    return str(path)


@pytest.mark.parametrize('offset, size', [(0, 1 << 40), (1 << 62, 10), (0, (1 << 64) - 1)])
def test_footer_declaring_huge_blocks_is_refused(tmp_path, offset, size):
    path = index_with_footer(tmp_path, offset, size)
    with pytest.raises(files.FileError, match='truncated table block'):
        tf_bundle.read_table(path)


def block_of(entries, restarts=(0,)):
    """A raw (checksummed) table block from (shared, non_shared bytes, value) triples."""
    body = b''.join(varint(shared) + varint(len(key)) + varint(len(value)) + key + value
                    for shared, key, value in entries)
    body += b''.join(struct.pack('<I', r) for r in restarts) + struct.pack('<I', len(restarts))
    return body + b'\0' + struct.pack('<I', tf_bundle.mask_crc(tf_bundle.crc32c(body + b'\0')))


def test_repeated_long_keys_are_refused_in_linear_time():
    """One 256 KiB key, then 100000 entries of four bytes each repeating it: rebuilding those
    keys would copy 26 GB; the block is refused instead."""
    block = block_of([(0, b'k' * (1 << 18), b'')] + [(1 << 18, b'', b'')] * 100000)
    start = time.perf_counter()
    with pytest.raises(tf_bundle.BundleError, match='repeat'):
        tf_bundle.block_entries(block[:-5])
    assert time.perf_counter() - start < 30  # copying 26 GB would take minutes


@pytest.mark.parametrize('body, restarts, message', [
    (varint(5) + varint(1) + varint(0) + b'a', 1, 'runs past'),  # shares more than it has
    (varint(0) + varint(1) + varint(1 << 40) + b'a', 1, 'runs past'),  # a 1 TB value
    (varint(0) + varint(1) + varint(0) + b'a', 1000, 'restart'),  # more restarts than bytes
])
def test_malformed_block_entries_are_refused(body, restarts, message):
    block = body + struct.pack('<I', 0) + struct.pack('<I', restarts)
    with pytest.raises(tf_bundle.BundleError, match=message):
        tf_bundle.block_entries(block)


def test_index_naming_one_block_many_times_is_refused(tmp_path):
    """Every handle of the index points at the same data block: reading it once per handle
    would multiply the work by the number of handles."""
    data = block_of([(0, b'a', b'x')])
    handle = varint(0) + varint(len(data) - 5)
    index = block_of([(0, bytes([i]), handle) for i in range(1, 100)],
)
    path = index_with_footer(tmp_path, len(data), len(index) - 5, data + index)
    with pytest.raises(tf_bundle.BundleError, match='overlaps'):
        tf_bundle.read_table(path)


# ----------------------------------------------------------------------------
# Inception moments (.npz).

def npz_declaring(path, n, compression):
    """A moments .npz whose sigma.npy header declares an n x n float64 array but holds 64
    bytes of data; mu is honest."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {'descr': '<f8', 'fortran_order': False, 'shape': (n, n)})
    mu = io.BytesIO()
    np.save(mu, np.zeros(n))
    with zipfile.ZipFile(path, 'w', compression) as z:
        z.writestr('mu.npy', mu.getvalue())
        z.writestr('sigma.npy', header.getvalue() + b'\0' * 64)


@pytest.mark.parametrize('n', [20000, 200000])
@pytest.mark.parametrize('compression', [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_moments_declaring_a_huge_sigma_are_refused_before_allocation(tmp_path, n,
                                                                      compression):
    """20000^2 doubles (3.2 GB) or 200000^2 (320 GB) in a file of a few hundred kB: refused
    from the header, with tracemalloc's peak far below what the header declares."""
    import inception_utils as iu
    npz_declaring(tmp_path / 'C10_inception_moments.npz', n, compression)
    tracemalloc.start()
    try:
        with pytest.raises(iu.InceptionMomentsError, match='sigma.npy declares') as err:
            iu.load_inception_moments('C10', str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert '\n' not in str(err.value)
    assert peak < 50 << 20


def test_honest_moments_still_load(tmp_path):
    import inception_utils as iu
    rng = np.random.default_rng(3)
    mu, a = rng.standard_normal(5), rng.standard_normal((5, 5))
    sigma = a @ a.T
    np.savez_compressed(tmp_path / 'C10_inception_moments.npz', mu=mu, sigma=sigma)
    got = iu.load_inception_moments('C10', str(tmp_path))
    assert np.array_equal(got['mu'], mu) and np.array_equal(got['sigma'], sigma)


# ----------------------------------------------------------------------------
# plot_logs.py: only regular files, bounded lines, numbers it cannot draw skipped.

def plot_logs_cli(logs_root, timeout=120):
    """plot_logs.py in a child process with a time limit and 4 GiB of address space, so a
    reader that hangs or reads without end fails the test instead of the machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, 'plot_logs.py', '--experiment_name', 'run',
                           '--logs_root', str(logs_root)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)
    return done, time.perf_counter() - start


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['fifo', 'dev_zero'])
def test_plot_logs_refuses_what_is_not_a_regular_file(tmp_path, kind):
    """A FIFO named G_loss.log would block a plain open() forever; a symlink to /dev/zero
    would be read without end. Either is one line and exit 2 (the child's time limit catches a
    hang)."""
    (tmp_path / 'run').mkdir()
    log = tmp_path / 'run' / 'G_loss.log'
    if kind == 'fifo':
        os.mkfifo(log)
    else:
        os.symlink('/dev/zero', log)
    done, _ = plot_logs_cli(tmp_path)
    assert done.returncode == 2, done.stderr
    assert 'G_loss.log' in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_plot_logs_refuses_a_line_without_end(tmp_path):
    import plot_logs
    log = tmp_path / 'G_loss.log'
    log.write_bytes(b'1' * (plot_logs.MAX_LINE + 10))
    with pytest.raises(files.FileError, match='longer than'):
        plot_logs.read_metric_log(str(log))


def test_plot_logs_skips_numbers_it_cannot_draw(tmp_path, capsys):
    """Iterations of 2^63 and beyond, finite values near float64's end, a 400-digit int, a NaN
    iteration: skipped with a notice; unparsable lines (absurdly nested JSON, a 5000-digit
    iteration) skipped as before; the rest plotted."""
    import plot_logs
    run = tmp_path / 'run'
    run.mkdir()
    good = [(1, 0.5), (2, float('inf')), (3, 0.25)]
    lines = ['9223372036854775808: 1', '1: 1.7e308', '2: -1e200', '1' * 5000 + ': 1']
    (run / 'G_loss.log').write_text(
        '\n'.join(lines + [f'{i}: {v}' for i, v in good]) + '\n')
    records = ['{"itr": 1, "IS_mean": 1e400, "FID": 3}', '{"itr": 1, "FID": ' + '9' * 400 + '}',
               '{"itr": 9223372036854775808, "IS_mean": 1, "FID": 3}',
               '{"itr": NaN, "IS_mean": 1}', '[' * 100000,
               '{"itr": 5, "IS_mean": 2.5, "IS_std": 0.5, "FID": 9, "_stamp": 100}',
               '{"itr": 9, "IS_mean": 3.5, "IS_std": 0.5, "FID": 7, "_stamp": 200}']
    (tmp_path / 'run_log.jsonl').write_text('\n'.join(records) + '\n')
    itr, values = plot_logs.read_metric_log(str(run / 'G_loss.log'))
    assert itr.tolist() == [i for i, _ in good] and values.tolist() == [v for _, v in good]
    tests = plot_logs.read_jsonl(str(tmp_path / 'run_log.jsonl'))
    # 1e400 parses as inf, an IS no test gives: left out (NaN, a gap), the record kept.
    assert tests['itr'].tolist() == [1, 5, 9] and tests['FID'].tolist() == [3, 9, 7]
    assert np.isnan(tests['IS_mean'][0])
    out = capsys.readouterr().out
    assert 'left out 1 value no test can give' in out
    assert out.count('skipped 3 lines') == 2
    for x in ('itr', 'time'):
        paths = plot_logs.run(vars(plot_logs.prepare_parser().parse_args(
            ['--experiment_name', 'run', '--logs_root', str(tmp_path), '--x', x])))
        assert sorted(os.path.basename(p) for p in paths) == ['IS_FID.png', 'losses.png']


# ----------------------------------------------------------------------------
# HDF5: labels are read only once their declared size is known to fit.

def hdf5_declaring(path, n, labels_compression=None):
    """An HDF5 file of a few kB declaring n 3 x 8 x 8 images and n int64 labels (chunked,
    nothing written: HDF5 stores only the shapes)."""
    import h5py
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', shape=(n, 3, 8, 8), dtype=np.uint8, chunks=(64, 3, 8, 8))
        f.create_dataset('labels', shape=(n,), dtype=np.int64, chunks=(1 << 16,),
                         compression=labels_compression)
    return str(path)


@pytest.fixture
def no_full_reads(monkeypatch):
    """Make a whole-dataset read of 'labels' or 'imgs' fail the test instead of allocating."""
    import h5py
    read = h5py.Dataset.__getitem__

    def guarded(self, key):
        if key in (slice(None), Ellipsis, ()) and len(self) > 1 << 20:
            raise AssertionError(f'{self.name} ({len(self)} rows) read in full')
        return read(self, key)
    monkeypatch.setattr(h5py.Dataset, '__getitem__', guarded)


@pytest.mark.parametrize('load_in_mem', [False, True])
def test_hdf5_declaring_2e9_images_is_refused_before_reading_labels(tmp_path, no_full_reads,
                                                                    load_in_mem):
    """2e9 uncompressed int64 labels (16 GB) in a file of a few kB: refused against the
    file's length; with --load_in_mem the 384 GB of images are refused first."""
    import datasets
    path = hdf5_declaring(tmp_path / 'huge.hdf5', 2 * 10 ** 9)
    assert os.path.getsize(path) < 1 << 20
    match = '--load_in_mem needs' if load_in_mem else 'labels declares'
    with pytest.raises(files.FileError, match=match):
        datasets.ILSVRC_HDF5(path, load_in_mem=load_in_mem)


def test_hdf5_compressed_labels_beyond_memory_are_refused(tmp_path, no_full_reads,
                                                          monkeypatch):
    """Compressed labels may legitimately be far larger than the file, so they are checked
    against memory (here 1 GB available) instead."""
    import datasets
    monkeypatch.setattr(files, 'available_memory', lambda: 10 ** 9)
    path = hdf5_declaring(tmp_path / 'gzip.hdf5', 2 * 10 ** 8, labels_compression='gzip')
    with pytest.raises(files.FileError, match='more than the 1.0 GB'):
        datasets.ILSVRC_HDF5(path)


def test_plot_logs_bounds_what_a_log_makes_it_draw(tmp_path):
    """A protocol stamp of 0.3 MB became a figure title drawn glyph by glyph (minutes); a log
    with a new key per line grew as keys x records. Labels and key counts are capped."""
    import json

    import plot_logs
    stamp = {'backend': {'a': [1] * 100000}}
    assert len(plot_logs.protocol_label(plot_logs.protocol_key({'protocol': stamp}))) <= 100
    path = tmp_path / 'run_log.jsonl'
    with open(path, 'w') as f:
        for i in range(300):
            f.write(json.dumps({'itr': i, f'key{i}': 1.0, 'k' * 100: 2.0}) + '\n')
    series = plot_logs.read_jsonl(str(path))
    assert 'itr' in series and len(series) == plot_logs.MAX_KEYS
    assert 'k' * 100 not in series


def test_plot_logs_smoothing_window(tmp_path, capsys):
    """--smooth below 1 is refused in one line; a window wider than the log averages every
    point so far (the running mean, computed directly), however wide it is declared."""
    import plot_logs
    values = np.array([1.0, np.nan, 3.0, 8.0])
    running = [1.0, 1.0, 2.0, 4.0]
    for window in (4, 10 ** 30):
        assert plot_logs.smooth(values, window).tolist() == running
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'G_loss.log').write_text('1: 0.5\n2: 0.25\n')
    for bad in ('0', '-1'):
        with pytest.raises(SystemExit) as e:
            plot_logs.main(['--experiment_name', 'run', '--logs_root', str(tmp_path),
                            '--smooth', bad])
        err = capsys.readouterr().err.splitlines()
        assert e.value.code == 2 and len(err) == 1 and '--smooth is a window' in err[0], err
    assert not (run / 'losses.png').exists()
    plot_logs.main(['--experiment_name', 'run', '--logs_root', str(tmp_path),
                    '--smooth', str(10 ** 30)])
    assert (run / 'losses.png').exists()


def _hdf5_case(path, kind, elsewhere):
    """An HDF5 dataset file whose 'imgs' (or 'labels') is read from elsewhere or not stored."""
    import h5py
    imgs, labels = np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4, np.int64)
    with h5py.File(path, 'w') as f:
        if kind == 'external':
            f.create_dataset('imgs', shape=imgs.shape, dtype=np.uint8,
                             external=[(str(elsewhere), 0, h5py.h5f.UNLIMITED)])
        elif kind == 'external_labels':
            f.create_dataset('imgs', data=imgs)
            f.create_dataset('labels', shape=(4,), dtype=np.int64,
                             external=[(str(elsewhere), 0, h5py.h5f.UNLIMITED)])
            return
        elif kind == 'external_link':
            f['imgs'] = h5py.ExternalLink(str(elsewhere), '/imgs')
        elif kind == 'soft_link':
            f.create_dataset('pixels', data=imgs)
            f['imgs'] = h5py.SoftLink('/pixels')
        elif kind == 'virtual':
            layout = h5py.VirtualLayout(shape=imgs.shape, dtype=np.uint8)
            layout[:] = h5py.VirtualSource(str(elsewhere), 'imgs', shape=imgs.shape)
            f.create_virtual_dataset('imgs', layout)
        elif kind == 'unwritten_chunks':  # 2 * 10^7 images declared, 2 chunks written
            d = f.create_dataset('imgs', shape=(2 * 10 ** 7, 3, 8, 8), dtype=np.uint8,
                                 chunks=(2, 3, 8, 8), compression='gzip')
            d[:4] = 255
            labels = np.zeros(2 * 10 ** 7, np.int64)
        elif kind == 'unallocated':
            f.create_dataset('imgs', shape=imgs.shape, dtype=np.uint8)
        f.create_dataset('labels', data=labels)


@pytest.mark.parametrize('kind', ['external', 'external_labels', 'external_link', 'soft_link',
                                  'virtual', 'unwritten_chunks', 'unallocated'])
def test_hdf5_data_read_only_from_the_file_and_stored_whole(tmp_path, kind):
    """A dataset file whose images or labels live in another file (external raw storage, an
    external or soft link, a virtual dataset: h5py would open it on read, and a FIFO there
    blocks forever; any file would be read as pixels), or that declares more images than it
    stores (h5py reads unwritten chunks as black images): refused in one line at start-up."""
    import h5py

    import datasets
    elsewhere = tmp_path / 'elsewhere.h5'
    with h5py.File(elsewhere, 'w') as f:  # a regular file stands in for the FIFO
        f.create_dataset('imgs', data=np.full((4, 3, 8, 8), 7, np.uint8))
    path = tmp_path / 'data.hdf5'
    _hdf5_case(path, kind, elsewhere)
    with pytest.raises(datasets.ConfigError) as info:
        datasets.ILSVRC_HDF5(str(path))
    assert '\n' not in str(info.value)
    assert ('from the file itself' in str(info.value) if kind not in (
        'unwritten_chunks', 'unallocated') else 'stores only part' in str(info.value))


def test_plot_logs_reads_a_bounded_number_of_logs_and_names_itself(tmp_path, monkeypatch):
    """A run folder of thousands of .log files is read up to MAX_LOGS, the losses first (3000
    singular-value logs took minutes); an experiment name holding glob characters (r[1],
    which train.py accepts) names that run, not a pattern that misses it."""
    import plot_logs
    monkeypatch.setattr(plot_logs, 'MAX_LOGS', 5)
    run = tmp_path / 'r[1]'
    run.mkdir()
    for i in range(20):
        (run / f'sv{i:02d}_G.log').write_text('1: 0.5\n')
    (run / 'G_loss.log').write_text('1: 0.5\n2: 0.25\n')
    assert plot_logs.resolve(['r[1]'], str(tmp_path)) == ['r[1]']
    metrics = plot_logs.read_experiment(str(tmp_path), 'r[1]')['metrics']
    assert sorted(metrics) == ['G_loss', 'sv00_G', 'sv01_G', 'sv02_G', 'sv03_G']


def test_an_npz_member_stored_twice_is_refused(tmp_path):
    """An npz holding mu.npy twice, NaN first and a good one last: np.load took the last,
    so the file passed as statistics (the outside attacker's round 13); which copy a reader
    takes is its own choice. Refused by files.check_npz, every npz reader's."""
    import warnings

    import inception_utils

    def npy(array):
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()
    path = tmp_path / 'stats.npz'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # zipfile's own 'Duplicate name' warning
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('mu.npy', npy(np.full(3, np.nan)))
            z.writestr('sigma.npy', npy(np.eye(3)))
            z.writestr('mu.npy', npy(np.zeros(3)))
    with pytest.raises(files.FileError, match='mu.npy is stored twice'):
        files.check_npz(str(path))
    with pytest.raises(inception_utils.InceptionMomentsError, match='stored twice'):
        inception_utils.read_moments_file(str(path), 'torchvision', 'x')
