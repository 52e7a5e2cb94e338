"""tf_bundle: TensorFlow's checkpoint format read and written without TensorFlow.

Needs only numpy (no torch), so it also runs where TensorFlow is installed without torch:
`python -m pytest --noconftest tests/test_tf_bundle.py` from the repository root. The tests
against TensorFlow itself are skipped when it is not installed.
"""
import os
import struct

import numpy as np
import pytest

import tf_bundle


def bitwise_crc32c(data):
    """CRC32C bit by bit from its definition (reflected polynomial 0x82F63B78)."""
    crc = 0xffffffff
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xffffffff


def tensors(seed=0, many=0):
    """Tensors of every kind the format stores: dtypes, a scalar, an empty one, a large one."""
    rng = np.random.default_rng(seed)
    out = {'Generator/GBlock/conv0/w/ema_b999900': rng.standard_normal((3, 3, 8, 4),
                                                                        dtype=np.float32),
           'Generator/attention/gamma': np.array(0.25, dtype=np.float32),
           'linear/w': rng.standard_normal((300, 500)).astype(np.float32),
           'f64': rng.standard_normal(5), 'f16': rng.standard_normal(7).astype(np.float16),
           'i64': np.arange(-3, 7, dtype=np.int64), 'i32': np.arange(4, dtype=np.int32),
           'u8': np.arange(256, dtype=np.uint8), 'b': np.array([True, False]),
           'empty': np.zeros((0, 3), dtype=np.float32)}
    for i in range(many):
        out[f'many/{i:05d}'] = np.full((2,), i, dtype=np.float32)
    return out


def assert_same(read, written):
    assert sorted(read) == sorted(written)
    for name, array in written.items():
        got = read[name]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        assert np.array_equal(got, array), name


@pytest.mark.parametrize('length', [0, 1, 9, 4095, 4096, 10007, 70001])
def test_crc32c_is_castagnolis(length):
    """Both code paths (bytewise and the vectorised long-data one) against the definition."""
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert tf_bundle.crc32c(data) == bitwise_crc32c(data)


def test_crc32c_check_value():
    assert tf_bundle.crc32c(b'123456789') == 0xE3069283  # the published check value


def test_round_trip(tmp_path):
    written = tensors()
    tf_bundle.write_bundle(str(tmp_path / 'variables' / 'variables'), written)
    bundle = tf_bundle.Bundle(str(tmp_path))  # a module folder finds variables/variables
    assert_same({k: bundle[k] for k in bundle.keys()}, written)
    assert bundle.shape('linear/w') == (300, 500)


@pytest.mark.slow
def test_many_entries_span_several_blocks(tmp_path):
    """More index entries than one 256 KiB block holds: several data blocks, an index over
    them with shortened separator keys."""
    written = tensors(many=12000)
    prefix = str(tmp_path / 'ckpt')
    tf_bundle.write_bundle(prefix, written)
    assert os.path.getsize(prefix + '.index') > tf_bundle.BLOCK_SIZE
    assert len(tf_bundle.read_table(prefix + '.index')) == len(written) + 1  # + the header
    bundle = tf_bundle.Bundle(prefix)
    assert_same({k: bundle[k] for k in bundle.keys()}, written)


def test_damage_is_detected(tmp_path):
    """A flipped data byte fails the tensor's checksum; a cut index fails its footer."""
    prefix = str(tmp_path / 'ckpt')
    tf_bundle.write_bundle(prefix, tensors())
    bundle = tf_bundle.Bundle(prefix)
    _, _, _, offset, _, _ = bundle.entry('linear/w')
    with open(prefix + '.data-00000-of-00001', 'r+b') as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(tf_bundle.BundleError, match='checksum'):
        bundle['linear/w']
    assert np.array_equal(bundle['i64'], tensors()['i64'])  # the others still read
    with open(prefix + '.index', 'r+b') as f:
        f.truncate(os.path.getsize(prefix + '.index') - 3)
    with pytest.raises(tf_bundle.BundleError):
        tf_bundle.Bundle(prefix)
    with pytest.raises(FileNotFoundError):
        tf_bundle.Bundle(str(tmp_path / 'nothing'))


def test_footer_layout(tmp_path):
    """LevelDB's footer: two block handles padded to 40 bytes, then the table magic."""
    prefix = str(tmp_path / 'ckpt')
    tf_bundle.write_bundle(prefix, {'a': np.ones(2, np.float32)})
    with open(prefix + '.index', 'rb') as f:
        footer = f.read()[-48:]
    assert struct.unpack('<Q', footer[-8:])[0] == 0xdb4775248b80fb57


# ----------------------------------------------------------------------------
# Against TensorFlow itself (skipped when it is not installed).

def test_reads_what_tensorflow_writes(tmp_path):
    tf = pytest.importorskip('tensorflow')
    written = tensors(many=12000)
    names = sorted(written)
    tf.raw_ops.SaveV2(prefix=str(tmp_path / 'tf'), tensor_names=names,
                      shape_and_slices=[''] * len(names),
                      tensors=[tf.constant(written[n]) for n in names])
    bundle = tf_bundle.Bundle(str(tmp_path / 'tf'))
    assert_same({k: bundle[k] for k in bundle.keys()}, written)
    # Our writer lays the files out byte for byte as TensorFlow does.
    tf_bundle.write_bundle(str(tmp_path / 'ours'), written)
    for suffix in ('.index', '.data-00000-of-00001'):
        with open(str(tmp_path / 'tf') + suffix, 'rb') as a, \
                open(str(tmp_path / 'ours') + suffix, 'rb') as b:
            assert a.read() == b.read(), suffix


def test_tensorflow_reads_what_we_write(tmp_path):
    tf = pytest.importorskip('tensorflow')
    written = tensors()
    tf_bundle.write_bundle(str(tmp_path / 'ours'), written)
    reader = tf.train.load_checkpoint(str(tmp_path / 'ours'))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(written)
    assert_same({k: reader.get_tensor(k) for k in written}, written)
