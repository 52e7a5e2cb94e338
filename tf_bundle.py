"""TensorFlow checkpoints (the tensor-bundle format of `variables/variables.*`) without TensorFlow.

A bundle is `PREFIX.index`, an SSTable (LevelDB's table format) that maps each tensor name to a
serialized `BundleEntryProto` (dtype, shape, shard, offset, size, CRC32C) and the empty name to a
`BundleHeaderProto`, plus `PREFIX.data-0000i-of-0000n`, the raw little-endian tensor bytes.
`Bundle` reads one (lazily, checking every checksum); `write_bundle` writes one byte for byte as
TensorFlow's BundleWriter does (unsliced tensors, one shard), for tests.
Only numpy is needed, so this module also runs where torch is absent.

Every parser here is linear in its input, and every size, offset, shape and count read from a
file is checked (files.check_declared) against the file's length and the memory available
before anything is allocated: a damaged or hostile bundle is one BundleError (a FileError).
"""
import functools
import math
import os
import struct

import numpy as np

import files

MAGIC = 0xdb4775248b80fb57     # LevelDB table footer magic
FOOTER_SIZE = 48               # two block handles padded to 40 bytes, then the magic
BLOCK_SIZE = 262144            # TensorFlow's table block size
RESTART_INTERVAL = 16          # keys between restart points in data blocks (index blocks: 1)
MAX_VARINT = 10                # bytes of the longest varint protobuf writes (a 64-bit value)

# TensorFlow DataType enum -> numpy dtype; bfloat16 (14) is widened to float32 on reading.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          8: np.complex64, 9: np.int64, 10: np.bool_, 14: np.uint16, 17: np.uint16,
          18: np.complex128, 19: np.float16, 22: np.uint32, 23: np.uint64}
DTYPE_NAMES = {1: 'float32', 2: 'float64', 3: 'int32', 4: 'uint8', 5: 'int16', 6: 'int8',
               7: 'string', 8: 'complex64', 9: 'int64', 10: 'bool', 14: 'bfloat16',
               17: 'uint16', 18: 'complex128', 19: 'float16', 22: 'uint32', 23: 'uint64'}
TF_DTYPES = {np.dtype(v): k for k, v in DTYPES.items() if k != 14}


class BundleError(files.FileError):
    """A file that is not a readable tensor bundle (truncated, corrupt, unsupported)."""


# ----------------------------------------------------------------------------
# CRC32C (Castagnoli), as LevelDB and TensorFlow checksum blocks and tensors.

def _crc_table():
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[n] = c
    return table


CRC_TABLE = _crc_table()
_TABLE_LIST = CRC_TABLE.tolist()


def _gf2_apply(columns, x):
    """A 32x32 GF(2) matrix (its 32 column words) times the word(s) x."""
    out = np.zeros_like(x)
    for bit in range(32):
        out ^= np.where((x >> np.uint32(bit)) & np.uint32(1), columns[bit], np.uint32(0))
    return out


def _gf2_square(columns):
    return _gf2_apply(columns, columns)


@functools.lru_cache(maxsize=256)
def _zeros_operator(n):
    """The linear map a raw CRC register undergoes over n zero bytes, as 32 column words."""
    # One zero bit shifts right and xors the polynomial when the low bit was set.
    power = np.array([0x82F63B78] + [1 << (bit - 1) for bit in range(1, 32)], dtype=np.uint32)
    result = np.array([1 << bit for bit in range(32)], dtype=np.uint32)  # identity
    bits = 8 * n
    while bits:
        if bits & 1:
            result = _gf2_apply(power, result)
        power = _gf2_square(power)
        bits >>= 1
    result.setflags(write=False)  # cached: shared by every caller
    return result


def _crc_register(data, state=0):
    """The raw CRC register after data, from state (no pre- or post-inversion)."""
    if len(data) < 4096:
        for byte in bytes(data):
            state = _TABLE_LIST[(state ^ byte) & 0xff] ^ (state >> 8)
        return state
    # Long data: split it into 2^k equal rows (zeros in front change nothing from state 0), run
    # the rows side by side, then fold neighbours together with the zero-byte operator.
    data = np.frombuffer(data, dtype=np.uint8)
    rows = 1 << max(0, int(math.log2(16 * math.sqrt(len(data)))))
    width = -(-len(data) // rows)
    padded = np.zeros(rows * width, dtype=np.uint8)
    padded[rows * width - len(data):] = data
    columns = np.ascontiguousarray(padded.reshape(rows, width).T)
    regs = np.zeros(rows, dtype=np.uint32)
    for column in columns:
        regs = CRC_TABLE[(regs ^ column) & 0xff] ^ (regs >> np.uint32(8))
    shift = _zeros_operator(width)
    while len(regs) > 1:
        regs = _gf2_apply(shift, regs[0::2]) ^ regs[1::2]
        shift = _gf2_square(shift)
    combined = int(regs[0])
    if state:
        combined ^= int(_gf2_apply(_zeros_operator(len(data)), np.array(state, np.uint32)))
    return combined


def crc32c(data):
    """CRC32C of bytes-like data."""
    return _crc_register(data, 0xffffffff) ^ 0xffffffff


def mask_crc(crc):
    """LevelDB's masked CRC (stored checksums are masked)."""
    return ((((crc >> 15) | (crc << 17)) & 0xffffffff) + 0xa282ead8) & 0xffffffff


# ----------------------------------------------------------------------------
# Protocol buffers: just the wire format the two messages use.

def read_varint(buf, pos):
    """(value, next position) of the varint at buf[pos]; at most MAX_VARINT bytes are read,
    so a run of continuation bytes costs constant time, not a growing big integer."""
    result = shift = 0
    end = min(pos + MAX_VARINT, len(buf))
    for at in range(pos, end):
        byte = buf[at]
        result |= (byte & 0x7f) << shift
        if not byte & 0x80:
            return result, at + 1
        shift += 7
    if end - pos < MAX_VARINT:
        raise BundleError('truncated varint')
    raise BundleError(f'varint longer than {MAX_VARINT} bytes: the file is damaged')


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7f
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_message(buf):
    """{field number: [values]} of a serialized message: ints for varint and fixed fields,
    bytes for length-delimited ones."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise BundleError('truncated protobuf message')
            value, pos = int.from_bytes(buf[pos:pos + width], 'little'), pos + width
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if length > len(buf) - pos:
                raise BundleError('truncated protobuf message')
            value, pos = bytes(buf[pos:pos + length]), pos + length
        else:
            raise BundleError(f'unsupported protobuf wire type {wire}')
        fields.setdefault(number, []).append(value)
    return fields


def scalar(fields, number, default, what):
    """The first value of a varint or fixed field, refusing a length-delimited one there."""
    value = fields.get(number, [default])[0]
    if value is not default and not isinstance(value, int):
        raise BundleError(f'{what}: field {number} holds bytes where a number belongs: the '
                          f'file is damaged')
    return value


def message(fields, number, what):
    """The parsed sub-message of a length-delimited field ({} when absent), refusing a
    number there."""
    if number not in fields:
        return {}
    value = fields[number][0]
    if not isinstance(value, bytes):
        raise BundleError(f'{what}: field {number} holds a number where a message belongs: '
                          f'the file is damaged')
    return parse_message(value)


def field(number, wire, value):
    """One serialized field (wire 0: varint, 2: bytes, 5: fixed32)."""
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(value)
    if wire == 2:
        return key + varint(len(value)) + value
    return key + struct.pack('<I', value)


# ----------------------------------------------------------------------------
# SSTable blocks.

def read_block(f, offset, size, path, verify=True):
    """The contents of the block at offset, its trailer's checksum checked; offset and size
    are checked against the file's length before anything is read."""
    length = files.file_size(f)
    if offset + size + 5 > length:
        raise BundleError(f'{path}: truncated table block at offset {offset} ({size} bytes '
                          f'declared, the file holds {length})')
    f.seek(offset)
    raw = files.read_bounded(f, size + 5, 'a table block', path)
    if verify and struct.unpack('<I', raw[-4:])[0] != mask_crc(crc32c(raw[:-4])):
        raise BundleError(f'{path}: checksum mismatch in its table block at offset {offset}: '
                          f'the file is damaged; download the module again')
    if raw[size] != 0:
        raise BundleError(f'{path}: compressed table blocks (type {raw[size]}) are not '
                          f'supported')
    return raw[:size]


def block_entries(block):
    """[(key, value)] of a block, keys rebuilt from their shared prefixes.

    Prefix compression lets a few bytes repeat a long key, so the rebuilt keys are bounded:
    with a restart point every RESTART_INTERVAL keys (what TensorFlow writes), no key is longer
    than the bytes stored since its restart, and all keys together take at most
    RESTART_INTERVAL times the block. More is a damaged block, refused in linear time.
    """
    if len(block) < 4:
        raise BundleError('table block too short')
    num_restarts = struct.unpack_from('<I', block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise BundleError(f'table block of {len(block)} bytes declares {num_restarts} restart '
                          f'points: the file is damaged')
    budget = RESTART_INTERVAL * len(block)
    entries, pos, key = [], 0, b''
    while pos < end:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_length, pos = read_varint(block, pos)
        if shared > len(key) or non_shared + value_length > end - pos:
            raise BundleError('table block entry runs past its block: the file is damaged')
        budget -= shared + non_shared
        if budget < 0:
            raise BundleError(f'table block keys repeat more than {RESTART_INTERVAL} times '
                              f'its bytes: the file is damaged')
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def read_table(path):
    """Every (key, value) of an SSTable, in order."""
    with files.open_regular(path, 'TensorFlow checkpoint index') as f:
        length = files.file_size(f)
        if length < FOOTER_SIZE:
            raise BundleError(f'{path} is too short to be a checkpoint index')
        f.seek(length - FOOTER_SIZE)
        footer = f.read(FOOTER_SIZE)
        if struct.unpack('<Q', footer[-8:])[0] != MAGIC:
            raise BundleError(f'{path} is not a TensorFlow checkpoint index (bad magic)')
        _, pos = read_varint(footer, 0)          # metaindex handle: unused
        _, pos = read_varint(footer, pos)
        index_offset, pos = read_varint(footer, pos)
        index_size, pos = read_varint(footer, pos)
        entries, done = [], 0
        for _, handle in block_entries(read_block(f, index_offset, index_size, path)):
            offset, pos = read_varint(handle, 0)
            size, _ = read_varint(handle, pos)
            # Data blocks follow one another (TensorFlow writes them in key order), so no byte
            # is read twice: an index naming one block many times cannot multiply the work.
            if offset < done:
                raise BundleError(f'{path}: table block at offset {offset} overlaps the one '
                                  f'before it: the file is damaged')
            entries += block_entries(read_block(f, offset, size, path))
            done = offset + size + 5
    return entries


class BlockBuilder:
    """A block of sorted (key, value) entries with prefix compression and restart points."""

    def __init__(self, restart_interval):
        self.restart_interval = restart_interval
        self.buffer, self.restarts, self.count, self.last = bytearray(), [0], 0, b''

    def add(self, key, value):
        shared = 0
        if self.count == self.restart_interval:
            self.restarts.append(len(self.buffer))
            self.count = 0
        else:
            limit = min(len(self.last), len(key))
            while shared < limit and self.last[shared] == key[shared]:
                shared += 1
        self.buffer += varint(shared) + varint(len(key) - shared) + varint(len(value))
        self.buffer += key[shared:] + value
        self.last, self.count = key, self.count + 1

    def size(self):
        """What the finished block will weigh (TensorFlow's estimate, exact)."""
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def finish(self):
        return bytes(self.buffer + b''.join(struct.pack('<I', r) for r in self.restarts)
                     + struct.pack('<I', len(self.restarts)))


def shortest_separator(start, limit):
    """A short key k with start <= k < limit (LevelDB's bytewise FindShortestSeparator)."""
    n = 0
    while n < min(len(start), len(limit)) and start[n] == limit[n]:
        n += 1
    if n < min(len(start), len(limit)) and start[n] < 0xff and start[n] + 1 < limit[n]:
        return start[:n] + bytes([start[n] + 1])
    return start


def short_successor(key):
    """A short key k >= key (LevelDB's bytewise FindShortSuccessor)."""
    for i, byte in enumerate(key):
        if byte != 0xff:
            return key[:i] + bytes([byte + 1])
    return key


def write_table(f, entries):
    """Sorted (key, value) entries as an uncompressed SSTable, as TensorFlow writes it."""
    offset, index, block = 0, BlockBuilder(1), BlockBuilder(RESTART_INTERVAL)

    def write_block(contents):
        nonlocal offset
        f.write(contents + b'\0' + struct.pack('<I', mask_crc(crc32c(contents + b'\0'))))
        handle = varint(offset) + varint(len(contents))
        offset += len(contents) + 5
        return handle

    for key, value in entries:
        if block.count and block.size() >= BLOCK_SIZE:
            index.add(shortest_separator(block.last, key), write_block(block.finish()))
            block = BlockBuilder(RESTART_INTERVAL)
        block.add(key, value)
    if block.count:
        index.add(short_successor(block.last), write_block(block.finish()))
    footer = write_block(BlockBuilder(RESTART_INTERVAL).finish())  # the (empty) metaindex
    footer += write_block(index.finish())
    f.write(footer + b'\0' * (40 - len(footer)) + struct.pack('<Q', MAGIC))


# ----------------------------------------------------------------------------
# Bundles.

def resolve_prefix(path):
    """The checkpoint prefix for a module folder, its variables/ folder, or a prefix itself."""
    for candidate in (os.path.join(path, 'variables', 'variables'),
                      os.path.join(path, 'variables'), path):
        if os.path.isfile(candidate + '.index'):
            return candidate
    raise FileNotFoundError((f'no TensorFlow checkpoint under {path} (looked for variables/'
                            'variables.index): pass the extracted module folder'))


class Bundle:
    """A tensor bundle opened for reading: names, shapes and dtypes from the index, tensors
    read from the data files on demand."""

    def __init__(self, path):
        self.prefix = resolve_prefix(path)
        self.entries, header = {}, None
        index = self.prefix + '.index'
        for key, value in read_table(index):
            if key == b'':
                header = parse_message(value)
                continue
            try:
                self.entries[key.decode('utf-8')] = value
            except UnicodeDecodeError:
                raise BundleError(f'{index}: a tensor name is not UTF-8 ({key[:40]!r}): the '
                                  f'file is damaged') from None
        if header is None:
            raise BundleError(f'{index} has no bundle header')
        self.num_shards = scalar(header, 1, 1, f'{index}: the bundle header')
        self.big_endian = scalar(header, 2, 0, f'{index}: the bundle header') == 1

    def keys(self):
        return sorted(self.entries)

    def __contains__(self, name):
        return name in self.entries

    def entry(self, name):
        """(TF dtype number, shape, shard, offset, size, crc32c or None) of a tensor."""
        if name not in self.entries:
            raise KeyError(name)
        what = f'{self.prefix}.index: tensor {name}'
        msg = parse_message(self.entries[name])
        if 7 in msg:
            raise BundleError(f'{name} is a partitioned (sliced) variable: not supported')
        shape = message(msg, 2, what)
        dims = tuple(scalar(message({2: [d]}, 2, what), 1, 0, what) for d in shape.get(2, []))
        dtype = scalar(msg, 1, 0, what)
        # The shape alone must be one a tensor of this machine can have (its non-empty
        # dimensions too: callers build models from shapes before reading any tensor).
        itemsize = np.dtype(DTYPES[dtype]).itemsize if dtype in DTYPES else 1
        files.check_declared(files.declared_nbytes([d for d in dims if d], itemsize,
                                                   f'tensor {name}', self.prefix + '.index'),
                             f'the shape {dims} of tensor {name}', self.prefix + '.index')
        return (dtype, dims, scalar(msg, 3, 0, what), scalar(msg, 4, 0, what),
                scalar(msg, 5, 0, what), scalar(msg, 6, None, what))

    def shape(self, name):
        return self.entry(name)[1]

    def __getitem__(self, name):
        """The tensor as a numpy array (bfloat16 as float32), its checksum checked."""
        dtype, shape, shard, offset, size, crc = self.entry(name)
        if dtype not in DTYPES:
            raise BundleError(f'{name} has dtype {DTYPE_NAMES.get(dtype, dtype)}, which this '
                              f'reader does not support')
        path = f'{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}'
        if not os.path.isfile(path):
            raise BundleError(f'{path} (holding {name}) is missing: the bundle is incomplete '
                              f'or its index damaged')
        np_dtype = np.dtype(DTYPES[dtype]).newbyteorder('>' if self.big_endian else '<')
        if files.declared_nbytes(shape, np_dtype.itemsize, f'tensor {name}', path) != size:
            raise BundleError(f'{name}: {size} bytes do not hold a {DTYPE_NAMES[dtype]} tensor '
                              f'of shape {shape}')
        with files.open_regular(path, 'TensorFlow checkpoint data') as f:
            length = files.file_size(f)
            if offset + size > length:
                raise BundleError(f'{path} is truncated: {name} needs bytes '
                                  f'{offset}..{offset + size} of its {length}')
            f.seek(offset)
            raw = files.read_bounded(f, size, f'tensor {name}', path)
        if crc is not None and mask_crc(crc32c(raw)) != crc:
            raise BundleError(f'checksum mismatch for {name} in {path}')
        array = np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder('='))
        if dtype == 14:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def write_bundle(prefix, tensors):
    """Write {name: array} as a one-shard bundle PREFIX.index + PREFIX.data-00000-of-00001,
    tensors in name order, as TensorFlow's SaveV2 lays them out."""
    os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    entries = [(b'', field(1, 0, 1) + field(3, 2, field(1, 0, 1)))]  # 1 shard, producer 1
    offset = 0
    with open(prefix + '.data-00000-of-00001', 'wb') as data:
        for name in sorted(tensors):
            array = np.asarray(tensors[name])
            if array.dtype not in TF_DTYPES:
                raise BundleError(f'cannot write {name}: dtype {array.dtype}')
            raw = array.astype(array.dtype.newbyteorder('<')).tobytes(order='C')
            data.write(raw)
            shape = b''.join(field(2, 2, field(1, 0, d) if d else b'') for d in array.shape)
            msg = field(1, 0, TF_DTYPES[array.dtype]) + field(2, 2, shape)
            # proto3 leaves zero-valued fields out, as TensorFlow's serializer does.
            msg += field(4, 0, offset) if offset else b''
            msg += field(5, 0, len(raw)) if raw else b''
            msg += field(6, 5, mask_crc(crc32c(raw)))
            entries.append((name.encode('utf-8'), msg))
            offset += len(raw)
    with open(prefix + '.index', 'wb') as f:
        write_table(f, entries)
