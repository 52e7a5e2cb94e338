"""A fuzz harness for every format the project reads (issue 19, mechanism 7).

Checkpoints (torch's zip format and the legacy pickle format), HF BigGAN-deep folders
(config.json + pytorch_model.bin), TF bundles (index + data), HDF5 datasets, Inception moments
(.npz) and per-class moments (HDF5), evaluate.py's npz sources, training logs (.log and .jsonl)
and image folders (PNG and JPEG, with their index).
Mutants are structure-aware where the container would otherwise stop them: pickle opcodes and
names rewritten and re-zipped with valid CRCs, TF index entries re-encoded with valid
checksums, HDF5 shapes, dtypes and values written through h5py, PNG chunks with valid CRCs,
.npy headers rewritten, config and log values swapped for other types and extremes; beside them
plain bit flips, overwrites and truncation.

Each mutant goes through the function its entry point reads it with. It passes when that
succeeds or raises the project's one-line error (a ConfigError: FileError, CheckpointError,
DatasetError, ...). It fails on any other exception, on a MemoryError, RecursionError or
allocator failure anywhere in the exception chain, on a per-mutant time-out, and on any audit
event (sys.addaudithook) of pickle.find_class outside ReleaseUnpickler.TABLE, exec, compile,
os.system or subprocess.Popen. The fuzzing runs in a subprocess under an address-space limit
(RLIMIT_AS), seeded: a failure prints its format, seed and mutant index, and

    python tests/test_fuzz.py FORMAT SEED INDEX

(or `--worker FORMAT,FORMAT SEED COUNT ''` for a whole run of some formats)

replays that one mutant. A few mutants of each format also go through its command line, which
must exit 0 or 2 with one line.
"""
import io
import json
import os
import pickle
import pickletools
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 19
MUTANTS = 200          # per format
TIMEOUT = 5.0          # CPU seconds per mutant (CPU time: a loaded machine does not trip it)
ADDRESS_SPACE = 6 << 30  # bytes the fuzzing process may map beyond what it has at start
CLI_SAMPLE = 1         # mutants per format run through the command line too

# ----------------------------------------------------------------------------
# Generic byte mutations.

INTERESTING = [b'\x00', b'\xff', b'\x7f', b'\x80', b'\xff\xff\xff\x7f', b'\x00\x00\x00\x80',
               b'\xff' * 8, b'\x00' * 8, b'\xff\xff\xff\xff\xff\xff\xff\x7f']


def mutate_bytes(rng, data):
    """One of: bit flips, an interesting overwrite, random bytes, a deletion, a truncation."""
    data = bytearray(data)
    kind = rng.choice(['flip', 'flip', 'interesting', 'random', 'delete', 'truncate'])
    if not data or kind == 'truncate':
        return bytes(data[:rng.randrange(len(data) + 1)]), 'truncate'
    at = rng.randrange(len(data))
    if kind == 'flip':
        for _ in range(rng.randint(1, 8)):
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == 'interesting':
        value = rng.choice(INTERESTING)
        data[at:at + len(value)] = value
    elif kind == 'random':
        data[at:at + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(16))
    else:
        del data[at:at + rng.randint(1, 64)]
    return bytes(data), kind


EXTREME_INTS = [0, -1, 1, 2, 255, 65535, 2 ** 31 - 1, -2 ** 31, 2 ** 32, 2 ** 63 - 1, -2 ** 63,
                2 ** 64, 10 ** 12, 10 ** 18, 10 ** 100]
EXTREME_VALUES = EXTREME_INTS + [0.5, -0.0, 1e308, -1e308, 1e-320, float('nan'), float('inf'),
                                 float('-inf'), True, False, None, '', 'x', '12', '1e999',
                                 '9' * 5000, [], [1, 2], {}, {'a': 1}, [[[[]]]], '\x00',
                                 '../../x', '\udcff' * 0 + '\u202e']


def swap_value(rng, value):
    """A value of another type or an extreme of the same."""
    if isinstance(value, list) and value and rng.random() < 0.4:
        value = list(value)
        value[rng.randrange(len(value))] = swap_value(rng, value[rng.randrange(len(value))])
        return value
    return rng.choice(EXTREME_VALUES)


# ----------------------------------------------------------------------------
# Pickles: decoded to opcodes, mutated, encoded again.

def _enc(name, arg):
    """An opcode argument in its pickle encoding (the descriptor names of pickletools)."""
    if name in ('uint1', 'uint2', 'uint4', 'uint8', 'int4'):
        size = {'uint1': 1, 'uint2': 2, 'uint4': 4, 'uint8': 8, 'int4': 4}[name]
        fmt = {1: '<B', 2: '<H', 4: '<I' if name != 'int4' else '<i', 8: '<Q'}[size]
        lo, hi = (-2 ** 31, 2 ** 31 - 1) if name == 'int4' else (0, 2 ** (8 * size) - 1)
        return struct.pack(fmt, min(max(arg, lo), hi))
    if name in ('long1', 'long4'):
        raw = pickle.encode_long(arg)
        return (struct.pack('<B', min(len(raw), 255)) if name == 'long1'
                else struct.pack('<i', len(raw))) + raw[:255 if name == 'long1' else None]
    if name == 'float8':
        return struct.pack('>d', arg)
    if name in ('unicodestring1', 'unicodestring4', 'unicodestring8'):
        raw = arg.encode('utf-8', 'surrogatepass')
        width = {'unicodestring1': '<B', 'unicodestring4': '<I', 'unicodestring8': '<Q'}[name]
        return struct.pack(width, len(raw) % (256 if width == '<B' else 2 ** 32)) + raw
    if name in ('bytes1', 'bytes4', 'bytes8', 'string1', 'string4', 'bytearray8'):
        raw = arg if isinstance(arg, (bytes, bytearray)) else str(arg).encode('latin-1')
        width = {'1': '<B', '4': '<I', '8': '<Q'}[name[-1]]
        return struct.pack(width, len(raw) % (256 if width == '<B' else 2 ** 32)) + raw
    if name == 'stringnl_noescape_pair':
        return arg.replace(' ', '\n', 1).encode('utf-8', 'surrogatepass') + b'\n'
    if name in ('stringnl_noescape', 'decimalnl_short', 'decimalnl_long', 'floatnl'):
        text = repr(arg) if name == 'floatnl' else str(arg)
        if name == 'decimalnl_long':
            text += 'L'
        if name == 'decimalnl_short' and arg in (True, False):
            text = '01' if arg else '00'
        return text.encode('utf-8', 'surrogatepass') + b'\n'
    if name == 'stringnl':
        return repr(arg).encode('utf-8', 'surrogatepass') + b'\n'
    if name == 'unicodestringnl':
        return arg.encode('raw-unicode-escape') + b'\n'
    raise ValueError(name)


def encode_ops(ops):
    out = bytearray()
    for op, arg in ops:
        out += op.code.encode('latin-1')
        if op.arg is not None:
            out += _enc(op.arg.name, arg)
    return bytes(out)


def decode_ops(data):
    """[(opcode, argument)] of one pickle, without FRAME (sizes change under mutation)."""
    return [(op, arg) for op, arg, _ in pickletools.genops(data) if op.name != 'FRAME']


# Names a hostile or damaged file may ask for: the table's, near misses, dotted paths through
# the table's modules, and what would run code.
HOSTILE_NAMES = [
    ('builtins', 'eval'), ('builtins', 'exec'), ('os', 'system'), ('subprocess', 'Popen'),
    ('builtins', 'getattr'), ('builtins', '__import__'), ('posix', 'system'),
    ('numpy.dtypes', 'Float64DType'), ('numpy', 'dtypes.Float64DType.__init__'),
    ('numpy', 'core.multiarray._reconstruct'), ('numpy', 'ndarray'),
    ('collections', 'OrderedDict.fromkeys'), ('collections', 'OrderedDict.__class__'),
    ('torch._utils', '_rebuild_tensor_v2.__globals__'),
    ('torch._utils', '_rebuild_device_tensor_from_numpy'),
    ('torch', 'load'), ('torch.serialization', 'load'), ('torch', 'FloatStorage'),
    ('torch', 'Size'), ('torch', 'device'), ('torch.nn.modules.activation', 'ReLU.__init__'),
    ('torch.nn.modules.activation', 'Tanh'), ('__builtin__', 'set.__reduce__'),
    ('_codecs', 'decode'), ('codecs', 'encode'), ('numpy.core.multiarray', 'scalar.__call__'),
    ('torch.storage', '_load_from_bytes'), ('pickle', 'loads'), ('io', 'open'),
]


def table_names():
    from checkpoints import ReleaseUnpickler
    return list(ReleaseUnpickler.TABLE)


def mutate_pickle(rng, data):
    """One structure-aware change to a pickle's opcodes, re-encoded."""
    ops = decode_ops(data)
    kind = rng.choice(['name', 'name', 'int', 'int', 'str', 'drop', 'dup', 'swap', 'opcode'])
    names = [i for i, (op, _) in enumerate(ops) if op.name in ('GLOBAL', 'INST')]
    strs = [i for i, (op, _) in enumerate(ops) if op.arg is not None
            and op.arg.name.startswith('unicodestring')]
    ints = [i for i, (op, _) in enumerate(ops)
            if op.name in ('BININT', 'BININT1', 'BININT2', 'LONG1', 'INT', 'LONG')]
    pool = HOSTILE_NAMES + table_names()
    if kind == 'name' and names:
        i = rng.choice(names)
        module, name = rng.choice(pool)
        ops[i] = (ops[i][0], f'{module} {name}')
    elif kind == 'str' and strs:
        i = rng.choice(strs)
        module, name = rng.choice(pool)
        ops[i] = (ops[i][0], rng.choice([module, name, ops[i][1] + '.x', '', 'storage']))
    elif kind == 'int' and ints:
        i = rng.choice(ints)
        value = rng.choice(EXTREME_INTS)
        op = pickletools.code2op['J' if -2 ** 31 <= value < 2 ** 31 else '\x8a']
        ops[i] = (op, value)
    elif kind == 'drop' and len(ops) > 2:
        del ops[rng.randrange(len(ops) - 1)]
    elif kind == 'dup' and len(ops) > 2:
        i = rng.randrange(len(ops) - 1)
        ops.insert(i, ops[i])
    elif kind == 'swap' and len(ops) > 3:
        i = rng.randrange(len(ops) - 2)
        ops[i], ops[i + 1] = ops[i + 1], ops[i]
    else:
        # An argument-free opcode in place of another: the stack machine's shape changes.
        bare = [op for op in pickletools.opcodes if op.arg is None and op.name != 'STOP']
        i = rng.randrange(len(ops) - 1)
        ops[i] = (rng.choice(bare), None)
        kind = 'opcode'
    return encode_ops(ops), 'pickle-' + kind


def rezip(members, name_of=None):
    """A zip of (name, bytes) with valid CRCs (stored, as torch writes it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return out.getvalue()


def zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def zip_intact(data):
    """Whether data is a zip whose members' CRCs hold: past the container."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.testzip() is None
    except Exception:
        return False


def mutate_torch_zip(rng, data):
    """A torch zip-format file: its data.pkl's opcodes or a storage record changed, re-zipped
    with valid CRCs; or plain byte damage."""
    if rng.random() < 0.25:
        return mutate_bytes(rng, data)
    members = zip_members(data)
    if rng.random() < 0.75:
        members = [(n, mutate_pickle(rng, d)[0] if n.endswith('data.pkl') else d)
                   for n, d in members]
        return rezip(members), 'zip-pickle'
    i = rng.randrange(len(members))
    name, value = members[i]
    change = rng.choice(['truncate', 'drop', 'grow'])
    if change == 'drop':
        del members[i]
    else:
        members[i] = (name, value[:len(value) // 2] if change == 'truncate'
                      else value + b'\0' * 64)
    return rezip(members), 'zip-record-' + change


def split_pickles(data, count):
    """The first count pickles of data (each up to its STOP) and the rest."""
    parts, pos = [], 0
    for _ in range(count):
        end = pos
        for op, _, at in pickletools.genops(data[pos:]):
            end = pos + at + 1
            if op.name == 'STOP':
                break
        parts.append(data[pos:end])
        pos = end
    return parts, data[pos:]


def mutate_legacy(rng, data):
    """A legacy file: magic, protocol, sys info, the object, the storage keys (five pickles),
    then the storages' bytes; one pickle mutated, the rest kept."""
    if rng.random() < 0.25:
        return mutate_bytes(rng, data)
    parts, rest = split_pickles(data, 5)
    i = rng.choice([3, 3, 3, 4, 0, 1, 2])
    parts[i], kind = mutate_pickle(rng, parts[i])
    return b''.join(parts) + rest, f'legacy-{i}-{kind}'


def legacy_intact(data):
    """Past the container: its first pickle is torch's magic number."""
    import torch
    try:
        return pickle.loads(split_pickles(data, 1)[0][0]) == torch.serialization.MAGIC_NUMBER
    except Exception:
        return False


# ----------------------------------------------------------------------------
# The formats: a valid base, a mutator and the reader the entry point uses.

def base_checkpoint():
    import numpy as np
    import torch
    return {'itr': 7, 'epoch': 1, 'save_num': 0, 'best_IS': np.float64(3.5), 'best_FID': 99.0,
            'config': {'G_lr': 5e-5, 'model': 'BigGAN', 'G_ch': 4, 'experiment_name': 'run'},
            'files': {'G.pth': {'size': 3, 'sha256': '00'}},
            'w': torch.arange(12, dtype=torch.float32).reshape(3, 4),
            'v': torch.ones(5, dtype=torch.float64)[1:], 'n': torch.tensor([1, 2])}


def read_checkpoint(folder):
    """What load_weights does with a state_dict.pth before any model is involved."""
    from checkpoints import check_kind, mismatched_companion, torch_load
    path = os.path.join(folder, 'state_dict.pth')
    obj = torch_load(path)
    check_kind(obj, path, 'state_dict')
    mismatched_companion(folder, obj)


class Format:
    def __init__(self, name, base, mutate, read, intact, cli=None):
        self.name, self.base, self.mutate, self.read = name, base, mutate, read
        self.intact, self.cli = intact, cli


def make_zip_checkpoint(path):
    import torch
    torch.save(base_checkpoint(), path)


def make_legacy_checkpoint(path):
    import torch
    torch.save(base_checkpoint(), path, _use_new_zipfile_serialization=False)


# A training state: the set a resume loads (G, D, both optimizers, G_ema, state_dict with the
# LeCam anchors and the fp16 scales), mutated in its structure rather than its bytes: one
# value anywhere in one file swapped for an odd one, the set's record refreshed (as anyone who
# can write the files can), so each mutant reaches the checks behind the record. What loads
# must also step: the attacker's round 5 found entries that loaded and failed in the first
# Adam step.
STATE_FILES = ['G_optim', 'D_optim', 'state_dict', 'G', 'D']


def training_state_config():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from helpers import tiny_config
    return tiny_config()


def training_state_base(folder):
    import checkpoints
    import step_helpers
    from helpers import tiny_models
    config = training_state_config()
    G, D, G_ema = tiny_models(config, seed=1)
    scaler = {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5,
              'growth_interval': 2000, '_growth_tracker': 0}
    state = {'itr': 3, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0.0,
             'best_FID': 999999.0, 'config': config,
             'ema_losses': step_helpers.ema_losses().state_dict(),
             'amp': {'G_scaler': dict(scaler), 'D_scaler': dict(scaler),
                     'skipped': {'G': 0, 'D': 0}}}
    checkpoints.save_weights(G, D, state, folder, 'exp', None, G_ema)
    return os.path.join(folder, 'exp')


def leaves(obj, path=()):
    """(path, value) of every value in nested dicts and lists, tensors counted as values."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))
    else:
        yield path, obj


def odd_tensor(rng, t):
    """A tensor like t but wrong in one way: dtype, shape, values, layout or storage."""
    import torch
    kind = rng.choice(['int', 'bool', 'half', 'shape', 'scalar', 'nan', 'negative', 'huge',
                       'sparse', 'meta', 'empty'])
    t = t.detach().clone().float() if t.is_floating_point() else t.detach().clone()
    out = {'int': lambda: t.long(), 'bool': lambda: t != 0, 'half': lambda: t.half(),
           'shape': lambda: t.reshape(-1)[:max(t.numel() - 1, 0)],
           'scalar': lambda: torch.tensor(float(rng.choice([2.5, -1, 1e40, 0]))),
           'nan': lambda: torch.full_like(t, float('nan'), dtype=torch.float32),
           'negative': lambda: -t.float().abs() - 1, 'huge': lambda: t.float() * 1e38,
           'sparse': lambda: t.float().reshape(t.shape or (1,)).to_sparse(),
           'meta': lambda: torch.empty(t.shape, device='meta'),
           'empty': lambda: torch.empty(0)}[kind]()
    return out, kind


def training_state_mutate(rng, base, folder):
    import torch

    import files
    shutil.rmtree(folder)
    shutil.copytree(base, os.path.join(folder, 'exp'))
    name = rng.choice(STATE_FILES)
    path = os.path.join(folder, 'exp', name + '.pth')
    obj = torch.load(path, weights_only=True)
    spots = list(leaves(obj))
    where, value = spots[rng.randrange(len(spots))]
    parent = obj
    for key in where[:-1]:
        parent = parent[key]
    action = rng.choice(['swap', 'swap', 'swap', 'delete', 'add'])
    if action == 'delete' and where:
        del parent[where[-1]]
        kind = 'delete'
    elif action == 'add' and isinstance(parent, dict):
        parent[rng.choice(['x', 'max_exp_avg_sq', 'step', 0, 10 ** 6])] = swap_value(rng, 1.0)
        kind = 'add'
    elif isinstance(value, torch.Tensor):
        parent[where[-1]], kind = odd_tensor(rng, value)
    elif where:
        parent[where[-1]] = swap_value(rng, value)
        kind = 'swap'
    else:
        kind = 'none'
    torch.save(obj, path)
    if name != 'state_dict' and rng.random() < 0.8:
        state_path = os.path.join(folder, 'exp', 'state_dict.pth')
        saved = torch.load(state_path, weights_only=True)
        saved['files'][name + '.pth'] = files.file_digest(path)
        torch.save(saved, state_path)
    return f'{kind}-{name}', True


def read_training_state(folder):
    """What a resume does with the set: load it, then take an Adam step on both nets, restore
    the fp16 scales and the LeCam anchors, and check what the step left is finite."""
    import torch

    import checkpoints
    import step_helpers
    from helpers import tiny_models
    config = training_state_config()
    G, D, G_ema = tiny_models(config, seed=9)
    state = {'itr': -1, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    checkpoints.load_weights(G, D, state, folder, 'exp', None, G_ema)
    for net in (G, D):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        net.optim.step()
        assert all(torch.isfinite(p).all() for p in net.parameters()), 'a step gave NaN'
    precision = step_helpers.Precision({'amp': 'fp16'}, 'cpu')
    precision.load_state_dict(state['amp'])
    assert 0 < precision.G_scaler.get_scale() < float('inf'), 'an impossible loss scale'
    anchors = step_helpers.lecam_anchors({'LC': 0.1, 'LC_ema_decay': 0.9, 'LC_start': 0}, state)
    anchors.update(0.5, 'D_real', 1)
    assert all(map(__import__('math').isfinite, anchors.state_dict().values())), 'NaN anchor'


# HF: a tiny BigGAN-deep whose SN vectors satisfy u = normalize(W v), so the base converts.

def hf_config():
    import convert_pretrained
    return {**convert_pretrained.HF_DEFAULTS, 'z_dim': 4, 'class_embed_dim': 4,
            'channel_width': 4, 'num_classes': 3, 'n_stats': 3}


def hf_state(cfg):
    import torch

    import convert_pretrained
    g = torch.Generator().manual_seed(0)
    shapes = convert_pretrained.hf_shapes(cfg, convert_pretrained.hf_arch(cfg)[2])
    state = {k: torch.randn(shape, generator=g) * 0.1 for k, shape in shapes.items()}
    for k in shapes:
        if k.endswith('running_vars'):
            state[k] = state[k].abs() + 1
        if k.endswith('.weight_orig'):
            w = state[k].flatten(1)
            # One power step from a random u, as torch's SN leaves its vectors: v in W's rows.
            v = torch.nn.functional.normalize(w.t() @ torch.randn(w.shape[0], generator=g),
                                              dim=0)
            state[k[:-5] + '_v'] = v
            state[k[:-5] + '_u'] = torch.nn.functional.normalize(w @ v, dim=0)
    return state


def make_hf(folder):
    import torch
    cfg = hf_config()
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    torch.save(hf_state(cfg), os.path.join(folder, 'pytorch_model.bin'))


def hf_base(folder):
    import torch
    make_hf(folder)
    with open(os.path.join(folder, 'config.json')) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, 'pytorch_model.bin'), 'rb') as f:
        data = f.read()
    return cfg, data, torch.load(io.BytesIO(data), weights_only=True)


def hf_mutate(rng, base, folder):
    import torch
    cfg, model = dict(base[0]), base[1]
    kind = rng.choice(['config', 'config', 'config', 'entry', 'entry', 'zip', 'bytes'])
    if kind == 'config':
        key = rng.choice(sorted(cfg) + ['layers'] * 2)
        cfg[key] = swap_value(rng, cfg[key])
        kind = 'config-' + key
    elif kind == 'entry':
        state = dict(base[2])
        key = rng.choice(sorted(state))
        value = state[key]
        change = rng.choice(['shape', 'dtype', 'drop', 'type', 'empty'])
        if change == 'shape':
            shape = list(value.shape) or [1]
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 3])
            state[key] = torch.ones([max(d, 0) for d in shape])
        elif change == 'dtype':
            state[key] = value.to(rng.choice([torch.int64, torch.uint8, torch.bool,
                                               torch.float16, torch.complex64]))
        elif change == 'drop':
            del state[key]
        elif change == 'type':
            state[key] = rng.choice([[1.0], 3, 'x', None, {'a': value}])
        else:
            state[key] = torch.zeros(0)
        buf = io.BytesIO()
        torch.save(state, buf)
        model, kind = buf.getvalue(), f'entry-{change}'
    elif kind == 'zip':
        model, kind = mutate_torch_zip(rng, model)
    else:
        model, kind = mutate_bytes(rng, model)
    text = json.dumps(cfg) if rng.random() < 0.9 else mutate_bytes(rng, json.dumps(cfg).encode()
                                                                   )[0].decode('latin-1')
    with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8',
              errors='surrogateescape') as f:
        f.write(text)
    with open(os.path.join(folder, 'pytorch_model.bin'), 'wb') as f:
        f.write(model)
    try:
        json.loads(text)
        intact = zip_intact(model)
    except Exception:
        intact = False
    return kind, intact


def read_hf(folder):
    """convert_pretrained.run's HF path up to the writing."""
    import convert_pretrained
    from checkpoints import first_nonfinite
    cfg, state = convert_pretrained.read_hf(folder)
    if first_nonfinite(state) is None:
        convert_pretrained.convert_hf(cfg, state, 0.5, 'SN')


# TF bundles: tensors of every stored dtype, entries re-encoded with valid checksums.

def tf_variables():
    import numpy as np
    r = np.random.default_rng(0)
    return {'linear/w': r.standard_normal((10, 8)).astype(np.float32),
            'Generator/G_Z/G_linear/w': r.standard_normal((4, 256)).astype(np.float32),
            'Generator/GBlock/conv0/w': r.standard_normal((3, 3, 16, 16)).astype(np.float32),
            'f64': r.standard_normal(5), 'f16': r.standard_normal(7).astype(np.float16),
            'i64': np.arange(-3, 7, dtype=np.int64), 'i32': np.arange(4, dtype=np.int32),
            'u8': np.arange(256, dtype=np.uint8), 'b': np.array([True, False]),
            'empty': np.zeros((0, 3), dtype=np.float32), 'gamma': np.array(0.25, np.float32)}


def tf_base(folder):
    import tf_bundle
    prefix = os.path.join(folder, 'variables', 'variables')
    tf_bundle.write_bundle(prefix, tf_variables())
    entries = tf_bundle.read_table(prefix + '.index')
    with open(prefix + '.data-00000-of-00001', 'rb') as f:
        return entries, f.read()


def mutate_message(rng, msg):
    """A BundleEntryProto/BundleHeaderProto with one field changed, re-encoded."""
    import tf_bundle
    fields = tf_bundle.parse_message(msg)
    number = rng.choice(sorted(fields) + [1, 2, 3, 4, 5, 6, 7])
    kind = rng.choice(['value', 'value', 'wire', 'drop', 'shape'])
    if kind == 'shape' and 2 in fields:
        dims = [tf_bundle.parse_message(d).get(1, [0])[0]
                for d in tf_bundle.parse_message(fields[2][0]).get(2, [])]
        change = rng.choice(['dim', 'add', 'drop'])
        if change == 'dim' and dims:
            dims[rng.randrange(len(dims))] = rng.choice(EXTREME_INTS[:12] + [2 ** 64 - 1])
        elif change == 'add':
            dims.append(rng.choice([0, 1, 2, 10 ** 9]))
        elif dims:
            dims.pop()
        shape = b''.join(tf_bundle.field(2, 2, tf_bundle.field(1, 0, d % 2 ** 64) if d else b'')
                         for d in dims)
        fields[2] = [shape]
    elif kind == 'drop':
        fields.pop(number, None)
    elif kind == 'wire':
        fields[number] = [rng.choice([b'\x01\x02', b'', 7, 2 ** 63])]
    else:
        fields[number] = [rng.choice([0, 1, 7, 14, 19, 23, 99, 2 ** 32, 2 ** 63, 2 ** 64 - 1,
                                      10 ** 6, 10 ** 12])]
    out = b''
    for n in sorted(fields):
        for value in fields[n]:
            if isinstance(value, bytes):
                out += tf_bundle.field(n, 2, value)
            elif n == 6 and value < 2 ** 32:
                out += tf_bundle.field(n, 5, value)
            else:
                out += tf_bundle.field(n, 0, value % 2 ** 64)
    return out, 'entry-' + kind


def tf_mutate(rng, base, folder):
    import tf_bundle
    entries, data = list(base[0]), base[1]
    prefix = os.path.join(folder, 'variables', 'variables')
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    kind = rng.choice(['entry', 'entry', 'entry', 'key', 'data', 'index-bytes', 'many'])
    index = None
    if kind == 'entry':
        i = rng.randrange(len(entries))
        value, kind = mutate_message(rng, entries[i][1])
        entries[i] = (entries[i][0], value)
    elif kind == 'key':
        i = rng.randrange(len(entries))
        entries[i] = (rng.choice([b'\xff\xfe', entries[i][0] + b'\x80', b'a' * 70000,
                                  entries[i][0][:3]]), entries[i][1])
        entries.sort()
    elif kind == 'many':
        # The same entry under many names: reading them all must stay linear.
        name, value = entries[-1]
        entries += [(name + b'/%06d' % i, value) for i in range(100)]
        entries.sort()
    elif kind == 'data':
        data, kind = mutate_bytes(rng, data)
        kind = 'data-' + kind
    out = io.BytesIO()
    tf_bundle.write_table(out, entries)
    index = out.getvalue()
    if kind == 'index-bytes':
        index, kind = mutate_bytes(rng, index)
        kind = 'index-' + kind
    with open(prefix + '.index', 'wb') as f:
        f.write(index)
    with open(prefix + '.data-00000-of-00001', 'wb') as f:
        f.write(data)
    try:
        tf_bundle.read_table(prefix + '.index')
        intact = True
    except Exception:
        intact = False
    return kind, intact


def read_tf(folder):
    """Every tensor of the bundle, as convert_pretrained's TFHubModule reads them."""
    import convert_pretrained
    module = convert_pretrained.TFHubModule(folder, ema=True)
    for key in module.bundle.keys():
        try:
            module.bundle[key]
        except KeyError:
            continue


# HDF5: written through h5py, as make_hdf5.py does, with shapes, dtypes and values changed.

def hdf5_write(path, rng=None):
    import h5py
    import numpy as np
    r = np.random.default_rng(0)
    imgs = r.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(6, dtype=np.int64) % 3
    imgs_kw, labels_kw, kind = {'chunks': (2, 3, 8, 8)}, {}, 'base'
    extra = None
    if rng is not None:
        kind = rng.choice(['imgs-shape', 'imgs-dtype', 'labels', 'labels-dtype', 'declared',
                           'missing', 'group', 'filter', 'values', 'link', 'scalar'])
        if kind == 'imgs-shape':
            shape = rng.choice([(6, 3, 8), (6, 1, 8, 8), (6, 3, 8, 4), (0, 3, 8, 8),
                                (6, 3, 0, 8), (6, 3, 8, 8, 1), (6,)])
            imgs = np.zeros(shape, np.uint8)
            imgs_kw = {}
            if shape[0] != 6:
                labels = labels[:shape[0]]
        elif kind == 'imgs-dtype':
            imgs = imgs.astype(rng.choice([np.float32, np.uint16, np.int8, np.bool_,
                                           np.float64, np.int64, np.complex64]))
        elif kind == 'labels':
            labels = rng.choice([labels[:3], np.full(6, -5), np.full(6, 2 ** 62),
                                 labels.reshape(2, 3), np.zeros(0, np.int64)])
        elif kind == 'labels-dtype':
            labels = rng.choice([labels.astype(np.float32) + 0.5, labels.astype(np.uint8),
                                 np.array([b'a'] * 6), np.full(6, np.nan),
                                 labels.astype(np.bool_)])
        elif kind == 'declared':
            extra = rng.choice([(2 * 10 ** 9, 3, 8, 8), (10 ** 6, 3, 512, 512),
                                (6, 3, 10 ** 5, 10 ** 5)])
        elif kind == 'missing':
            extra = rng.choice(['imgs', 'labels'])
        elif kind == 'filter':
            imgs_kw = {'chunks': (1, 3, 8, 8), 'compression': rng.choice(['gzip', 'lzf']),
                       'shuffle': rng.random() < 0.5}
        elif kind == 'values':
            imgs = np.full(imgs.shape, 255, np.uint8)
            labels = np.full(6, rng.choice([0, 2, 3, 999, -1]))
    with h5py.File(path, 'w') as f:
        if kind == 'declared':
            # A chunked dataset declaring many images, none written: a few KB on disk.
            f.create_dataset('imgs', shape=extra, dtype=np.uint8, chunks=(1, 3, 8, 8),
                             compression='gzip')
            f.create_dataset('labels', shape=(extra[0],), dtype=np.int64,
                             chunks=(min(extra[0], 1024),), compression='gzip')
            return kind
        if kind == 'group':
            f.create_group('imgs')
            f.create_dataset('labels', data=labels)
            return kind
        if kind == 'link':
            f['imgs'] = h5py.SoftLink('/nowhere')
            f['labels'] = h5py.ExternalLink('/etc/passwd', '/x')
            return kind
        if kind == 'scalar':
            f.create_dataset('imgs', data=np.uint8(3))
            f.create_dataset('labels', data=np.int64(1))
            return kind
        if extra != 'imgs':
            f.create_dataset('imgs', data=imgs, **imgs_kw)
        if extra != 'labels':
            f.create_dataset('labels', data=labels, **labels_kw)
    return kind


def hdf5_file_format(filename, write, rewrites):
    """(base, mutate) of a one-file HDF5 format: the base is write(path)'s file; a mutant is
    write(path, rng)'s rewrite through h5py (a share `rewrites` of them) or the base's bytes
    mutated, intact when h5py still opens it."""
    def base(folder):
        write(os.path.join(folder, filename))
        with open(os.path.join(folder, filename), 'rb') as f:
            return f.read()

    def mutate(rng, base, folder):
        import h5py
        path = os.path.join(folder, filename)
        if rng.random() < rewrites:
            kind = 'h5py-' + write(path, rng)
        else:
            data, kind = mutate_bytes(rng, base)
            with open(path, 'wb') as f:
                f.write(data)
        try:
            h5py.File(path, 'r').close()
            intact = True
        except Exception:
            intact = False
        return kind, intact
    return base, mutate


hdf5_base, hdf5_mutate = hdf5_file_format('data.hdf5', hdf5_write, 0.6)


def read_hdf5(folder, load_in_mem=False):
    """What get_data_loaders builds for an HDF5 dataset, and its first and last items."""
    import datasets
    ds = datasets.ILSVRC_HDF5(os.path.join(folder, 'data.hdf5'), load_in_mem=load_in_mem)
    for i in {0, len(ds) - 1} if len(ds) else ():
        img, label = ds[i]
        datasets.to_float(img)


# Inception moments: the npz's .npy headers rewritten, re-zipped with valid CRCs.

MOMENTS_DATASET = 'I128_hdf5'


def moments_path(folder):
    import inception_utils
    return os.path.join(folder, inception_utils.moments_filename(MOMENTS_DATASET))


def make_moments(path):
    import numpy as np
    r = np.random.default_rng(0)
    a = r.standard_normal((16, 4))
    np.savez(path, mu=a.mean(0), sigma=a.T @ a / 16, backend=np.array('torchvision'),
             feats=a.astype(np.float32))


def mutate_npy(rng, data):
    """A .npy whose header declares another shape, dtype or order."""
    header_len = struct.unpack('<H', data[8:10])[0]
    header = eval(data[10:10 + header_len].decode('latin-1'))  # noqa: S307 (our own file)
    key = rng.choice(['shape', 'shape', 'descr', 'fortran_order'])
    header[key] = rng.choice({
        'shape': [(), (0,), (10 ** 6, 10 ** 6), (2 ** 62,), (-1,), (3, 3), (200000, 200000),
                  (1, 1, 1, 1, 1)],
        'descr': ['|O', '<U8', '>f8', '<f2', '|b1', '<c16', [('a', '<f8')], '|V8', '<M8[s]'],
        'fortran_order': [True, 1, 'x']}[key])
    text = repr(header).encode('latin-1')
    text += b' ' * (-(10 + len(text) + 1) % 64) + b'\n'
    return data[:8] + struct.pack('<H', len(text)) + text + data[10 + header_len:], 'npy-' + key


def mutate_moments(rng, data):
    if rng.random() < 0.3:
        return mutate_bytes(rng, data)
    members = zip_members(data)
    kind = rng.choice(['header', 'header', 'header', 'drop', 'rename', 'compress', 'values'])
    i = rng.randrange(len(members))
    name, value = members[i]
    if kind == 'header':
        members[i] = (name, mutate_npy(rng, value)[0])
    elif kind == 'drop':
        del members[i]
    elif kind == 'rename':
        members[i] = (rng.choice(['../x.npy', 'mu', 'sigma.npy.npy', 'a']), value)
    elif kind == 'values':
        members[i] = (name, value[:-8] + struct.pack('<d', rng.choice(
            [float('nan'), float('inf'), 1e308, -1.0])))
    else:
        out = io.BytesIO()
        with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:
            for n, v in members:
                z.writestr(n, v)
            # A deflated member that inflates to the 400 MB array its header declares.
            z.writestr('bomb.npy', b'\x93NUMPY\x01\x00v\x00' + (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (50000000,), }"
                .ljust(117) + '\n').encode() + b'\0' * (16 << 20))
        return out.getvalue(), 'deflate-bomb'
    return rezip(members), 'zip-' + kind


def read_moments(folder):
    import inception_utils
    for need_feats in (False, True):
        inception_utils.load_inception_moments(MOMENTS_DATASET, folder, 'torchvision',
                                               need_feats=need_feats)


# Per-class Inception moments (calculate_inception_moments.py --per_class): an HDF5 file of
# count (C,), mu (C, D), sigma (C, D, D) and a backend attribute, rewritten through h5py.

def per_class_write(path, rng=None):
    import h5py
    import numpy as np

    import inception_utils
    r = np.random.default_rng(0)
    feats, labels = r.standard_normal((12, 4)), np.arange(12) % 3
    with h5py.File(path, 'w') as f:
        writer = inception_utils.PerClassMomentsWriter(f, 3, 'torchvision')
        writer.update(feats, labels)
        writer.finish()
    if rng is None:
        return 'base'
    kind = rng.choice(['shape', 'dtype', 'values', 'declared', 'missing', 'attr', 'scalar',
                       'link'])
    with h5py.File(path, 'a') as f:
        name = rng.choice(['count', 'mu', 'sigma'])
        if kind == 'shape':
            data = np.zeros(rng.choice([(3,), (3, 4), (3, 4, 4), (3, 5), (4, 4, 4), (3, 4, 5),
                                        (0,), (0, 4), (3, 0, 0), (2, 3, 4, 4)]))
            del f[name]
            f.create_dataset(name, data=data.astype(np.int64 if name == 'count' else float))
        elif kind == 'dtype':
            data = f[name][()]
            del f[name]
            f.create_dataset(name, data=data.astype(rng.choice(
                [np.float32, np.uint8, np.bool_, np.complex64, np.float16, 'S8'])))
        elif kind == 'values':
            data = f[name][()]
            data.flat[rng.randrange(data.size)] = rng.choice(
                [-1, 2 ** 62, 0, 1] if data.dtype.kind in 'iu'
                else [-1, np.nan, np.inf, 1e308, -1e308])
            f[name][...] = data
        elif kind == 'declared':
            # Chunked and compressed, nothing written: a few KB declaring terabytes.
            c, d = rng.choice([(3, 10 ** 6), (10 ** 9, 4), (3, 200000)])
            for key in ('count', 'mu', 'sigma'):
                del f[key]
            f.create_dataset('count', shape=(c,), dtype=np.int64, chunks=(min(c, 1024),),
                             compression='gzip', fillvalue=5)
            f.create_dataset('mu', shape=(c, d), dtype=np.float64, chunks=(1, min(d, 1024)),
                             compression='gzip')
            f.create_dataset('sigma', shape=(c, d, d), dtype=np.float64,
                             chunks=(1, 1, min(d, 1024)), compression='gzip')
        elif kind == 'missing':
            del f[name]
        elif kind == 'attr':
            f.attrs['backend'] = rng.choice(['tf_fid', '', 'x' * 10000, 7, np.zeros(3)])
        elif kind == 'scalar':
            del f[name]
            f.create_dataset(name, data=np.int64(3))
        else:
            del f[name]
            f[name] = h5py.SoftLink('/nowhere')
    return kind


per_class_base, per_class_mutate = hdf5_file_format('per_class.hdf5', per_class_write, 0.7)


def read_per_class(folder):
    """What intra-FID reads: the file, then each class's moments."""
    import inception_utils
    moments = inception_utils.PerClassMoments(os.path.join(folder, 'per_class.hdf5'),
                                              'torchvision')
    for c in moments.classes:
        moments.moments(c)


# evaluate.py's npz sources: images (x, y) or statistics (mu, sigma, feats, count, backend).

def make_eval_npz(path):
    import numpy as np
    r = np.random.default_rng(0)
    if os.path.basename(path).startswith('stats'):
        a = r.standard_normal((16, 4))
        np.savez(path, mu=a.mean(0), sigma=np.cov(a, rowvar=False), feats=a.astype(np.float32),
                 count=np.int64(16), backend=np.array('torchvision'))
    else:
        np.savez(path, x=r.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8),
                 y=np.zeros(5, np.int64))


def eval_npz_base(folder):
    out = {}
    for name in ('stats.npz', 'images.npz'):
        make_eval_npz(os.path.join(folder, name))
        with open(os.path.join(folder, name), 'rb') as f:
            out[name] = f.read()
    return out


def eval_npz_mutate(rng, base, folder):
    name = rng.choice(sorted(base))
    mutant, kind = mutate_moments(rng, base[name])
    with open(os.path.join(folder, name), 'wb') as f:
        f.write(mutant)
    return f'{name[:-4]}-{kind}', zip_intact(mutant)


def read_eval_npz(folder):
    """What evaluate.py reads of an npz source before the network: its kind, its row count,
    then its statistics or images."""
    import evaluate
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        kind = evaluate.describe(path)
        evaluate.source_rows(path, kind, {})
        if kind == 'statistics':
            evaluate.load_statistics(path, 'torchvision')
        else:
            evaluate._npz_images(path)


# Logs: MyLogger's `itr: value` lines and MetricsLogger's JSON records.

def make_logs(folder):
    os.makedirs(os.path.join(folder, 'run'), exist_ok=True)
    with open(os.path.join(folder, 'run', 'G_loss.log'), 'w') as f:
        f.writelines(f'{i}: {1.5 / (i + 1):3.3e}\n' for i in range(20))
    with open(os.path.join(folder, 'run_log.jsonl'), 'w') as f:
        f.writelines(json.dumps({'itr': i * 10, 'IS_mean': 1.0 + i, 'IS_std': 0.1,
                                 'FID': 100.0 - i, '_stamp': 1e9 + i}) + '\n'
                     for i in range(5))


def logs_base(folder):
    make_logs(folder)
    with open(os.path.join(folder, 'run', 'G_loss.log'), 'rb') as f:
        log = f.read()
    with open(os.path.join(folder, 'run_log.jsonl'), 'rb') as f:
        return log, f.read()


def mutate_jsonl(rng, data):
    lines = data.decode().splitlines(keepends=True)
    i = rng.randrange(len(lines))
    record = json.loads(lines[i])
    key = rng.choice(sorted(record) + ['new'])
    record[key] = swap_value(rng, record.get(key))
    text = json.dumps(record, allow_nan=True)
    if rng.random() < 0.2:
        text = rng.choice(['{"itr": 1' + '0' * 400 + '}', '{"itr": 1e400}', '[' * 50000,
                           '{"itr": ' + '9' * 5000 + '}', '{"itr": -1e308, "FID": 1e308}'])
    lines[i] = text + '\n'
    return ''.join(lines).encode(), 'jsonl-' + str(key)


def mutate_log(rng, data):
    lines = data.decode().splitlines(keepends=True)
    i = rng.randrange(len(lines))
    itr, value = lines[i].split(':')
    part = rng.choice(['itr', 'value', 'line'])
    extremes = ['9' * 30, '-' + '9' * 19, '9' * 5000, '1e999', 'nan', '-inf', '0x10', '',
                '1_000', ' 1 ', '\x00', '1e308', '3.4e38', '१२']
    if part == 'itr':
        itr = rng.choice(extremes)
    elif part == 'value':
        value = ' ' + rng.choice(extremes)
    else:
        lines[i] = rng.choice(['x' * 100000, '\r', '::::', '\x00' * 10, '\ud800'.encode(
            'utf-8', 'surrogatepass').decode('latin-1')])
        return ''.join(lines).encode('utf-8', 'surrogatepass'), 'log-line'
    lines[i] = f'{itr}:{value}\n' if part != 'line' else lines[i]
    return ''.join(lines).encode('utf-8', 'surrogatepass'), 'log-' + part


def logs_mutate(rng, base, folder):
    log, jsonl = base
    kind = rng.choice(['log', 'jsonl', 'log-bytes', 'jsonl-bytes'])
    if kind == 'log':
        log, kind = mutate_log(rng, log)
    elif kind == 'jsonl':
        jsonl, kind = mutate_jsonl(rng, jsonl)
    elif kind == 'log-bytes':
        log, kind = mutate_bytes(rng, log)
    else:
        jsonl, kind = mutate_bytes(rng, jsonl)
    os.makedirs(os.path.join(folder, 'run'), exist_ok=True)
    with open(os.path.join(folder, 'run', 'G_loss.log'), 'wb') as f:
        f.write(log)
    with open(os.path.join(folder, 'run_log.jsonl'), 'wb') as f:
        f.write(jsonl)
    return kind, True


def read_logs(folder):
    import plot_logs
    run = plot_logs.read_experiment(folder, 'run')
    if run['tests']:
        plot_logs.hours(run['tests'])


# Image folders: PNG chunks rewritten with valid CRCs, JPEG markers changed.

def png_chunks(data):
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_bytes(chunks):
    out = b'\x89PNG\r\n\x1a\n'
    for kind, body in chunks:
        out += struct.pack('>I', len(body)) + kind + body
        out += struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)
    return out


def mutate_png(rng, data):
    chunks = png_chunks(data)
    kind = rng.choice(['ihdr', 'ihdr', 'idat', 'bomb', 'chunk', 'drop'])
    if kind in ('ihdr', 'bomb'):
        w, h, depth, color, comp, filt, inter = struct.unpack('>IIBBBBB', chunks[0][1])
        if kind == 'bomb':
            w = h = rng.choice([30000, 100000, 2 ** 31 - 1])
        else:
            field = rng.randrange(7)
            values = [w, h, depth, color, comp, filt, inter]
            values[field] = rng.choice([0, 1, 3, 7, 16, 255, 2 ** 31 - 1, 2 ** 32 - 1][
                :8 if field < 2 else 6])
            w, h, depth, color, comp, filt, inter = values
        chunks[0] = (b'IHDR', struct.pack('>IIBBBBB', w, h, depth, color, comp, filt, inter))
        if kind == 'bomb':
            # Rows of zeros deflate 1000:1: a few hundred KB declaring gigapixels.
            chunks = [chunks[0], (b'IDAT', zlib.compress(b'\0' * (4 << 20), 9)),
                      (b'IEND', b'')]
    elif kind == 'idat':
        i = next(i for i, (k, _) in enumerate(chunks) if k == b'IDAT')
        chunks[i] = (b'IDAT', mutate_bytes(rng, chunks[i][1])[0])
    elif kind == 'chunk':
        chunks.insert(1, (rng.choice([b'iCCP', b'zTXt', b'tEXt', b'PLTE', b'sBIT', b'acTL']),
                          rng.choice([b'', b'x' * 100,
                                      b'a\0\0' + zlib.compress(b'\0' * (8 << 20))])))
    else:
        del chunks[rng.randrange(len(chunks))]
    return png_bytes(chunks), 'png-' + kind


def mutate_jpeg(rng, data):
    data = bytearray(data)
    sof = data.find(b'\xff\xc0')
    kind = rng.choice(['dims', 'dims', 'components', 'marker'])
    if kind == 'dims' and sof > 0:
        data[sof + 5:sof + 9] = struct.pack('>HH', rng.choice([0, 1, 65535]),
                                            rng.choice([0, 1, 65535]))
    elif kind == 'components' and sof > 0:
        data[sof + 9] = rng.choice([0, 2, 4, 255])
    else:
        at = rng.randrange(2, len(data) - 2)
        data[at:at + 2] = rng.choice([b'\xff\xd9', b'\xff\xc2', b'\xff\xdd', b'\xff\xda'])
    return bytes(data), 'jpeg-' + kind


# Two images per class, the fewest a class may hold (datasets.MIN_CLASS_IMAGES); the first of
# each class is the one mutated.
IMAGE_FILES = ('a/0.png', 'a/1.png', 'b/0.jpg', 'b/1.jpg')


def make_images(folder):
    import numpy as np
    from PIL import Image
    r = np.random.default_rng(0)
    for c in ('a', 'b'):
        os.makedirs(os.path.join(folder, 'images', c), exist_ok=True)
    for name in IMAGE_FILES:
        shape = (12, 10, 3) if name.startswith('a') else (10, 12, 3)
        Image.fromarray(r.integers(0, 256, shape, dtype=np.uint8)).save(
            os.path.join(folder, 'images', name), quality=90)


def images_base(folder):
    make_images(folder)
    out = {}
    for name in IMAGE_FILES:
        with open(os.path.join(folder, 'images', name), 'rb') as f:
            out[name] = f.read()
    return out


def images_mutate(rng, base, folder):
    from PIL import Image
    files = dict(base)
    kind = rng.choice(['png', 'png', 'jpeg', 'bytes-png', 'bytes-jpeg', 'index'])
    if kind == 'png':
        files['a/0.png'], kind = mutate_png(rng, files['a/0.png'])
    elif kind == 'jpeg':
        files['b/0.jpg'], kind = mutate_jpeg(rng, files['b/0.jpg'])
    elif kind.startswith('bytes'):
        name = 'a/0.png' if kind.endswith('png') else 'b/0.jpg'
        files[name], kind = mutate_bytes(rng, files[name])
        kind = f'{name[-3:]}-{kind}'
    for name, data in files.items():
        os.makedirs(os.path.join(folder, 'images', os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(folder, 'images', name), 'wb') as f:
            f.write(data)
    if kind == 'index':
        # The folder's cached index (an npz the loader reads back) damaged.
        read_images(folder)
        path = os.path.join(folder, 'images', 'imagenet_imgs.npz')
        with open(path, 'rb') as f:
            data, kind = mutate_moments(rng, f.read())
        with open(path, 'wb') as f:
            f.write(data)
        kind = 'index-' + kind
    intact = True
    for name in files:
        try:
            with Image.open(os.path.join(folder, 'images', name)):
                pass
        except Exception:
            intact = False
    return kind, intact


def read_images(folder):
    """The image-folder dataset with the release's transforms, every item read."""
    from torchvision import transforms

    import datasets
    transform = transforms.Compose([datasets.CenterCropLongEdge(), transforms.Resize(8),
                                    transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = datasets.ImageFolder(os.path.join(folder, 'images'), transform=transform)
    for i in range(len(ds)):
        ds[i]


def one_file(name, filename, make, mutate, read, intact, cli=None):
    def base(folder):
        make(os.path.join(folder, filename))
        with open(os.path.join(folder, filename), 'rb') as f:
            return f.read()

    def write(rng, data, folder):
        mutant, kind = mutate(rng, data)
        with open(os.path.join(folder, filename), 'wb') as f:
            f.write(mutant)
        return kind, intact(mutant)
    return Format(name, base, write, read, None, cli)


def hf_cli(folder, out):
    return [os.path.join(ROOT, 'convert_pretrained.py'), '--hf_dir', folder, '--truncation',
            '0.5', '--weights_root', out]


def checkpoint_cli(folder, out):
    """A checkpoint as HF's pytorch_model.bin: convert_pretrained.py reads it with torch_load."""
    make_hf_config_only(folder)
    os.replace(os.path.join(folder, 'state_dict.pth'),
               os.path.join(folder, 'pytorch_model.bin'))
    return hf_cli(folder, out)


def make_hf_config_only(folder):
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(hf_config(), f)


FORMATS = {
    'checkpoint_zip': one_file('checkpoint_zip', 'state_dict.pth', make_zip_checkpoint,
                               mutate_torch_zip, read_checkpoint, zip_intact, checkpoint_cli),
    'checkpoint_legacy': one_file('checkpoint_legacy', 'state_dict.pth', make_legacy_checkpoint,
                                  mutate_legacy, read_checkpoint, legacy_intact, checkpoint_cli),
    'hf': Format('hf', hf_base, hf_mutate, read_hf, None, hf_cli),
    'tf_bundle': Format('tf_bundle', tf_base, tf_mutate, read_tf, None,
                        lambda folder, out: [os.path.join(ROOT, 'convert_pretrained.py'),
                                             '--tfhub_dir', folder, '-r', '128',
                                             '--weights_root', out]),
    'hdf5': Format('hdf5', hdf5_base, hdf5_mutate, read_hdf5, None,
                   lambda folder, out: [os.path.join(ROOT, 'make_hdf5.py'), '--dataset',
                                        'I128', '--data_root', folder, '--output',
                                        os.path.join(out, 'out.hdf5'), '--no_progress']),
    'moments': one_file('moments', 'I128_inception_moments.npz', make_moments, mutate_moments,
                        read_moments, zip_intact),
    'per_class': Format('per_class', per_class_base, per_class_mutate, read_per_class, None,
                        None),
    'eval_npz': Format('eval_npz', eval_npz_base, eval_npz_mutate, read_eval_npz, None, None),
    'logs': Format('logs', logs_base, logs_mutate, read_logs, None,
                   lambda folder, out: [os.path.join(ROOT, 'plot_logs.py'), '--experiment_name',
                                        'run', '--logs_root', folder]),
    'training_state': Format('training_state', training_state_base, training_state_mutate,
                             read_training_state, None, None),
    'images': Format('images', images_base, images_mutate, read_images, None,
                     lambda folder, out: [os.path.join(ROOT, 'make_hdf5.py'), '--dataset',
                                          'I128', '--dataset_root',
                                          os.path.join(folder, 'images'), '--output',
                                          os.path.join(out, 'out.hdf5'), '--no_progress']),
}


# ----------------------------------------------------------------------------
# Running mutants: classification, time-outs, the audit hook, the address-space limit.

class MutantTimeout(BaseException):
    """A mutant ran past TIMEOUT (a BaseException: no `except Exception` swallows it)."""


class AuditViolation(BaseException):
    """An audited event no file may cause."""


AUDIT = {'armed': False, 'events': []}
ALLOCATOR = ("can't allocate memory", 'not enough memory', 'DefaultCPUAllocator')


def audit_hook(event, args):
    if not AUDIT['armed']:
        return
    bad = None
    if event == 'pickle.find_class':
        from checkpoints import ReleaseUnpickler
        if tuple(args[:2]) not in ReleaseUnpickler.TABLE:
            bad = f'pickle.find_class {args[0]}.{args[1]}'
    elif event in ('os.system', 'subprocess.Popen'):
        bad = f'{event} {args!r:.100}'
    elif event == 'exec':
        code = args[0]
        # A library module imported lazily runs its own code: not the file's doing.
        if not (getattr(code, 'co_name', '') == '<module>'
                and os.path.isfile(getattr(code, 'co_filename', ''))):
            bad = f'exec {getattr(code, "co_name", code)!r:.60}'
    elif event == 'compile':
        # ast.literal_eval (numpy's .npy header parser) compiles to a syntax tree only.
        caller = sys._getframe(1)
        if not (isinstance(args[1], str) and os.path.isfile(args[1])) and not (
                caller.f_code.co_name == 'parse' and caller.f_back is not None
                and caller.f_back.f_code.co_name == 'literal_eval'):
            bad = f'compile {args[1]!r:.60}'
    if bad:
        AUDIT['events'].append(bad)
        AUDIT['armed'] = False
        raise AuditViolation(bad)


def chain(error):
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def verdict(error):
    """None for a pass; else why the mutant failed."""
    from flags import ConfigError
    if error is None:
        return None
    for e in chain(error):
        if isinstance(e, (MemoryError, RecursionError, MutantTimeout, AuditViolation)):
            return f'{type(e).__name__}: {str(e)[:200]}'
        if isinstance(e, RuntimeError) and any(s in str(e) for s in ALLOCATOR):
            return f'allocator failure: {str(e)[:200]}'
    if isinstance(error, ConfigError):
        if '\n' in str(error).strip():
            return f'{type(error).__name__} of several lines: {str(error)[:200]}'
        return None
    return f'{type(error).__name__}: {str(error)[:200]}'


def _alarm(signum, frame):
    raise MutantTimeout(f'over {TIMEOUT} CPU seconds')


def run_one(fmt, base, seed, index, folder):
    """(kind, past the container, failure or None) of mutant `index`."""
    import signal
    rng = random.Random(f'{fmt.name}-{seed}-{index}')
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    kind, intact = fmt.mutate(rng, base, folder)
    error = None
    signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, TIMEOUT)
    AUDIT['armed'] = True
    try:
        fmt.read(folder)
    except BaseException as e:  # noqa: B036 (time-outs and audit violations are failures)
        if isinstance(e, KeyboardInterrupt):
            raise
        error = e
    finally:
        AUDIT['armed'] = False
        signal.setitimer(signal.ITIMER_PROF, 0)
    return kind, intact, verdict(error)


def limit_address_space():
    import resource
    with open('/proc/self/status') as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
    limit = vm + ADDRESS_SPACE
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def warm_up(fmt, base, folder):
    """Run the reader on the base once, so lazy imports happen before the hook is armed."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    fmt.base(folder)
    fmt.read(folder)


def worker(names, seed, count, cli_dir, only=None):
    """Fuzz the formats; print one JSON line of CLI sample folders, then one of results."""
    sys.path.insert(0, ROOT)
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    Image.init()
    tmp = tempfile.mkdtemp(prefix='fuzz-')
    bases = {}
    try:
        for name in names:
            fmt = FORMATS[name]
            os.makedirs(os.path.join(tmp, name + '-base'))
            bases[name] = fmt.base(os.path.join(tmp, name + '-base'))
            warm_up(fmt, bases[name], os.path.join(tmp, name + '-warm'))
        # CLI sample: the first mutants of each format, written for the caller's subprocesses.
        samples = []
        if cli_dir:
            for name in names:
                fmt = FORMATS[name]
                for index in range(CLI_SAMPLE if fmt.cli else 0):
                    folder = os.path.join(cli_dir, f'{name}-{index}')
                    rng = random.Random(f'{name}-{seed}-{index}')
                    os.makedirs(folder)
                    fmt.mutate(rng, bases[name], folder)
                    out = os.path.join(cli_dir, f'{name}-{index}-out')
                    samples.append({'format': name, 'index': index,
                                    'argv': fmt.cli(folder, out), 'out': out})
        print(json.dumps({'cli': samples}), flush=True)
        limit_address_space()
        sys.addaudithook(audit_hook)
        results = {}
        for name in names:
            fmt = FORMATS[name]
            start = time.perf_counter()
            stats = {'mutants': 0, 'past_container': 0, 'failures': [], 'kinds': {}}
            for index in (range(count) if only is None else [only]):
                kind, intact, failure = run_one(fmt, bases[name], seed, index,
                                                os.path.join(tmp, name))
                stats['mutants'] += 1
                stats['past_container'] += bool(intact)
                stats['kinds'][kind.split('-')[0]] = stats['kinds'].get(kind.split('-')[0],
                                                                         0) + 1
                if failure:
                    stats['failures'].append(f'{name} seed {seed} mutant {index} ({kind}): '
                                             f'{failure}')
            stats['seconds'] = round(time.perf_counter() - start, 2)
            results[name] = stats
        print(json.dumps({'results': results}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------
# The tests.

# Two fuzzing processes, one a core, with about equal work (training_state's mutants cost
# the most: a whole set loaded through torch's weights-only unpickler, then a step).
GROUPS = [['logs', 'checkpoint_zip', 'checkpoint_legacy', 'training_state'],
          ['hf', 'images', 'moments', 'hdf5', 'per_class', 'eval_npz', 'tf_bundle']]


@pytest.fixture(scope='module')
def fuzzed(tmp_path_factory):
    """Results of the fuzzing subprocesses over every format, and of the CLI sample run
    beside them."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}
    procs, samples = [], []
    for group in GROUPS:
        cli_dir = str(tmp_path_factory.mktemp('cli'))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, '--worker', ','.join(group), str(SEED), str(MUTANTS),
             cli_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=ROOT))
    for proc in procs:
        line = proc.stdout.readline()
        assert line, proc.communicate()[1][-3000:]
        samples += json.loads(line)['cli']
    cli = []
    for sample in samples:
        done = subprocess.run([sys.executable] + sample['argv'], capture_output=True,
                              text=True, timeout=120, env=env, cwd=ROOT)
        cli.append((sample, done))
    results = {}
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            results.update(json.loads(out.strip().splitlines()[-1])['results'])
    finally:
        for proc in procs:  # a time-out or a failed worker leaves no other fuzzing behind
            proc.kill()
            proc.wait()
    return results, cli


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FORMATS))
def test_every_mutant_passes(fuzzed, name):
    stats = fuzzed[0][name]
    print(f"{name}: {stats['mutants']} mutants, {stats['past_container']} past the container, "
          f"{stats['seconds']} s; kinds {stats['kinds']}")
    assert stats['mutants'] >= MUTANTS
    assert stats['past_container'] >= MUTANTS // 4, 'mutants die at the container'
    assert not stats['failures'], '\n'.join(stats['failures'][:20])


@pytest.mark.slow
def test_cli_sample(fuzzed):
    """The command lines end in 0, or 2 with one line (no traceback) on the same mutants."""
    bad = []
    for sample, done in fuzzed[1]:
        lines = done.stderr.strip().splitlines()
        if done.returncode not in (0, 2) or (done.returncode == 2 and len(lines) != 1):
            bad.append(f"{sample['format']} mutant {sample['index']}: exit {done.returncode}: "
                       f"{done.stderr[-500:]}")
    assert fuzzed[1] and not bad, '\n'.join(bad)


# ----------------------------------------------------------------------------
# What the fuzzer found, one case each, checked directly (each failed before its fix).

def legacy_with(tmp_path, edit):
    """A legacy checkpoint whose object pickle went through edit(ops) -> ops."""
    sys.path.insert(0, ROOT)
    path = str(tmp_path / 'state_dict.pth')
    make_legacy_checkpoint(path)
    with open(path, 'rb') as f:
        parts, rest = split_pickles(f.read(), 5)
    parts[3] = encode_ops(edit(decode_ops(parts[3])))
    with open(path, 'wb') as f:
        f.write(b''.join(parts) + rest)
    return path


def set_ints(ops, old, new):
    """ops with every small-int argument old replaced by new (an int4 opcode)."""
    return [(pickletools.code2op['J'], new) if op.name.startswith('BININT') and arg == old
            else (op, arg) for op, arg in ops]


@pytest.mark.parametrize('old, new', [(12, 10 ** 18), (4, 10 ** 17)])
def test_legacy_sizes_beyond_the_file(tmp_path, old, new):
    """A storage of 12 floats declared as 10^18 (torch allocates it before reading), and a
    (3, 4) tensor's 4 columns declared as 10^17 (torch grows its storage to fit): refused by
    the size checks, before torch allocates (which overcommitted memory would let pass
    until the pages are touched)."""
    from checkpoints import CheckpointError, torch_load
    path = legacy_with(tmp_path, lambda ops: set_ints(ops, old, new))
    with pytest.raises(CheckpointError) as info:
        torch_load(path)
    assert verdict(info.value) is None
    assert 'declares' in str(info.value) or 'reaches element' in str(info.value)


def tf_prefix(tmp_path, edit):
    """A bundle whose index entries went through edit([(key, value)])."""
    import tf_bundle
    prefix = str(tmp_path / 'variables' / 'variables')
    tf_bundle.write_bundle(prefix, tf_variables())
    entries = edit(tf_bundle.read_table(prefix + '.index'))
    with open(prefix + '.index', 'wb') as f:
        tf_bundle.write_table(f, sorted(entries))
    return prefix


@pytest.mark.parametrize('edit', [
    lambda e: e + [(b'\xff\xfe', e[-1][1])],                        # a name that is not UTF-8
    lambda e: [(k, v if k != b'gamma' else b'\x10\x07') for k, v in e],  # shape a number
    lambda e: [(k, v if k != b'gamma' else v + b'\x18\x07') for k, v in e],   # shard 7 of 1
    lambda e: [(k, v if k else b'\x0a\x01\x00') for k, v in e],     # num_shards as bytes
])
def test_tf_entries_of_the_wrong_kind(tmp_path, edit):
    import tf_bundle
    prefix = tf_prefix(tmp_path, edit)
    with pytest.raises(tf_bundle.BundleError):
        bundle = tf_bundle.Bundle(prefix)
        for key in bundle.keys():
            bundle[key]


def test_npz_with_an_unsupported_zip_flag(tmp_path):
    """zipfile raises NotImplementedError for a member flagged as compressed patched data."""
    import inception_utils
    from flags import ConfigError
    path = moments_path(str(tmp_path))
    make_moments(path)
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    at = data.find(b'PK\x01\x02')
    data[at + 8] |= 0x20  # the central directory's flag bit 5 for the first member
    with open(path, 'wb') as f:
        f.write(data)
    with pytest.raises(ConfigError):
        inception_utils.load_inception_moments(MOMENTS_DATASET, str(tmp_path), 'torchvision')


@pytest.mark.parametrize('record', [{'itr': 50, '_stamp': '../../x'}, {'itr': True}])
def test_jsonl_values_of_another_type(tmp_path, record):
    """A key numeric in one record and a string in the next is NaN there; a boolean itr is
    no iteration."""
    import math

    import plot_logs
    make_logs(str(tmp_path))
    with open(tmp_path / 'run_log.jsonl', 'a') as f:
        f.write(json.dumps(record) + '\n')
    tests = plot_logs.read_experiment(str(tmp_path), 'run')['tests']
    assert len(tests['itr']) == 5 + ('_stamp' in record)
    if '_stamp' in record:
        assert math.isnan(tests['_stamp'][-1]) and tests['itr'][-1] == 50


@pytest.mark.parametrize('kind', ['labels', 'image'])
def test_hdf5_labels_of_bytes_and_images_beyond_memory(tmp_path, kind):
    import h5py
    import numpy as np

    import datasets
    path = str(tmp_path / 'data.hdf5')
    with h5py.File(path, 'w') as f:
        if kind == 'labels':
            f.create_dataset('imgs', data=np.zeros((2, 3, 4, 4), np.uint8))
            f.create_dataset('labels', data=np.array([b'a', b'b']))
        else:  # 2 images of 3 x 10^6 x 10^6: 3 TB each, none stored
            f.create_dataset('imgs', shape=(2, 3, 10 ** 6, 10 ** 6), dtype=np.uint8,
                             chunks=(1, 3, 8, 8), compression='gzip')
            f.create_dataset('labels', data=np.zeros(2, np.int64))
    with pytest.raises(datasets.DatasetError if kind == 'labels' else datasets.ConfigError):
        ds = datasets.ILSVRC_HDF5(path)
        ds[0]


def test_image_index_naming_paths_outside_the_folder(tmp_path):
    """A cached index whose paths climb out of the folder is rebuilt, not followed."""
    import numpy as np
    make_images(str(tmp_path))
    read_images(str(tmp_path))
    index = tmp_path / 'images' / 'imagenet_imgs.npz'
    with np.load(index) as f:
        arrays = dict(f)
    arrays['paths'] = np.array(['../../etc/passwd.png', 'b/0.jpg'])
    np.savez(index, **arrays)
    import datasets
    ds = datasets.ImageFolder(str(tmp_path / 'images'))
    assert sorted(os.path.relpath(p, tmp_path / 'images') for p in ds.paths) == [
        os.path.join(*name.split('/')) for name in IMAGE_FILES]



@pytest.mark.parametrize('edit', ['declared', 'scalar', 'bool', 'float16', 'corrupt'])
def test_per_class_moments_of_the_wrong_layout(tmp_path, edit):
    """Per-class moments declaring a 10^6-feature class (7 TB of sigma), a scalar mu, boolean
    moments, float16 moments (read as float64) and data damaged past the header: a pass or the
    one-line error, never an allocation, a traceback or a numpy TypeError."""
    import h5py
    import numpy as np

    import inception_utils
    path = str(tmp_path / 'per_class.hdf5')
    per_class_write(path)
    if edit == 'corrupt':  # the fuzzer's mutant 16 of seed 19: bytes flipped in a B-tree
        with open(path, 'rb') as f:
            base = f.read()
        per_class_mutate(random.Random(f'per_class-{SEED}-16'), base, str(tmp_path))
    else:
        with h5py.File(path, 'a') as f:
            if edit == 'declared':
                for key in ('count', 'mu', 'sigma'):
                    del f[key]
                f.create_dataset('count', data=np.full(3, 5))
                f.create_dataset('mu', shape=(3, 10 ** 6), dtype=float, chunks=(1, 1024),
                                 compression='gzip')
                f.create_dataset('sigma', shape=(3, 10 ** 6, 10 ** 6), dtype=float,
                                 chunks=(1, 1, 1024), compression='gzip')
            elif edit == 'scalar':
                del f['mu']
                f.create_dataset('mu', data=np.float64(3))
            else:
                for key in ('mu', 'sigma'):
                    data = f[key][()]
                    del f[key]
                    f.create_dataset(key, data=data.astype(np.bool_ if edit == 'bool'
                                                           else np.float16))
    error = None
    try:
        read_per_class(str(tmp_path))
    except Exception as e:  # noqa: BLE001 (the verdict says which are failures)
        error = e
    assert verdict(error) is None, verdict(error)
    assert (error is None) == (edit == 'float16'), error
    assert isinstance(error, (type(None), inception_utils.InceptionMomentsError, ValueError))


@pytest.mark.parametrize('member', ['count', 'backend', 'count_inf', 'count_fraction',
                                    'mu_bool'])
def test_statistics_members_of_another_shape(tmp_path, member):
    """evaluate.py statistics whose count is an array, or whose backend entry was renamed to
    mu (a string array): one InceptionMomentsError, as every moments file."""
    import numpy as np

    import evaluate
    import inception_utils
    a = np.random.default_rng(0).standard_normal((8, 3))
    members = {'mu': a.mean(0), 'sigma': np.cov(a, rowvar=False), 'count': np.int64(8)}
    if member == 'count':
        members['count'] = np.array([8, 8])
    elif member == 'count_inf':  # int() of it overflowed: a traceback
        members['count'] = np.float64('inf')
    elif member == 'count_fraction':  # recorded as 2 images
        members['count'] = np.float64(2.5)
    elif member == 'mu_bool':  # FID 4.7e24 printed
        members['mu'] = members['mu'] > 0
    else:
        members['mu'] = np.array('torchvision')
    np.savez(tmp_path / 'stats.npz', **members)
    with pytest.raises(inception_utils.InceptionMomentsError):
        evaluate.load_statistics(str(tmp_path / 'stats.npz'), 'torchvision')



@pytest.mark.parametrize('edit', ['swap_labels', 'one_path', 'drop_entry', 'drop_class_entries'])
def test_image_index_that_contradicts_its_listing(tmp_path, edit):
    """A cached index rewritten with its signature kept, its labels swapped or every path made
    one image (make_hdf5.py then wrote wrong labels or one image six times), or with entries
    dropped (one image, or all but one of a class, silently left out of the dataset): rebuilt
    from the folder, since the index no longer matches the listing it was written from."""
    import numpy as np

    import datasets
    make_images(str(tmp_path))
    truth = datasets.ImageFolder(str(tmp_path / 'images'))
    index = tmp_path / 'images' / 'imagenet_imgs.npz'
    with np.load(index) as f:
        arrays = dict(f)
    if edit == 'swap_labels':
        arrays['labels'] = arrays['labels'].max() - arrays['labels']
    elif edit == 'one_path':
        arrays['paths'] = np.array([arrays['paths'][0]] * len(arrays['paths']))
    else:
        keep = (slice(0, -1) if edit == 'drop_entry'
                else np.r_[0, np.flatnonzero(arrays['labels'] != arrays['labels'][0])])
        arrays['paths'], arrays['labels'] = arrays['paths'][keep], arrays['labels'][keep]
    np.savez(index, **arrays)
    ds = datasets.ImageFolder(str(tmp_path / 'images'))
    assert ds.paths == truth.paths and list(ds.labels) == list(truth.labels)


if __name__ == '__main__':
    if sys.argv[1] == '--worker':
        worker(sys.argv[2].split(','), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        # Replay: python tests/test_fuzz.py FORMAT SEED INDEX
        worker([sys.argv[1]], int(sys.argv[2]), 1, '', only=int(sys.argv[3]))
