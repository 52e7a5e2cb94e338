"""The restricted unpickler resolves no name: only the exact pairs of its table come out."""
import copyreg
import io
import os
import pickle
import random
import struct
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from checkpoints import CheckpointError, RefusedName, ReleaseUnpickler, torch_load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = {'exec', 'compile', 'os.system', 'subprocess.Popen', 'pickle.find_class'}
_events = []
_watching = []


def _hook(event, args):
    if _watching and event in WATCHED:
        _events.append(event)


sys.addaudithook(_hook)  # hooks cannot be removed; it records only inside watch()


class watch:
    """Collects the watched audit events raised inside the block."""

    def __enter__(self):
        _events.clear()
        _watching.append(True)
        return _events

    def __exit__(self, *exc):
        _watching.clear()


def unicode_bytes(text):
    data = text.encode('utf-8')
    return b'\x8c' + bytes([len(data)]) + data  # SHORT_BINUNICODE


def by_global(module, name):
    return b'\x80\x02c' + f'{module}\n{name}\n'.encode() + b')R.'


def by_stack_global(module, name):
    return b'\x80\x04' + unicode_bytes(module) + unicode_bytes(name) + b'\x93)R.'


def by_inst(module, name):
    return b'\x80\x02(' + b'i' + f'{module}\n{name}\n'.encode() + b'.'


def by_obj(module, name):
    return b'\x80\x02(c' + f'{module}\n{name}\n'.encode() + b'o.'


OPCODES = [by_global, by_stack_global, by_inst, by_obj]
DANGEROUS = [('numpy.dtypes.os', 'system'), ('numpy.dtypes', 'os.system'), ('builtins', 'eval'),
             ('builtins.eval', 'eval'), ('torch._utils', 'os'), ('torch._utils', 'os.system'),
             ('torch._utils.os', 'system'), ('os', 'system'), ('os', 'FloatStorage'),
             ('numpy.dtypes', 'Float64DType'), ('collections', 'OrderedDict.__init__'),
             ('torch', 'FloatStorage.__class__')]
LOOK_ALIKES = {'o': '\u043e', 'a': '\u0430', 'e': '\u0435', 'c': '\u0441', '_': '\uff3f'}


def near_misses(module, name):
    """Names one keystroke from a table pair: case, spaces, look-alike letters."""
    out = [(module.upper(), name), (module, name.swapcase()), (module, name + ' '),
           (module + ' ', name), (' ' + module, name), (module, name + '\t'),
           (module + '.', name), (module, '.' + name)]
    for letter, twin in LOOK_ALIKES.items():
        if letter in name:
            out.append((module, name.replace(letter, twin, 1)))
        if letter in module:
            out.append((module.replace(letter, twin, 1), name))
    return out


@pytest.fixture(scope='module', autouse=True)
def warm_up(tmp_path_factory):
    """Loads once unwatched: torch's and pytest's first calls compile code of their own."""
    path = tmp_path_factory.mktemp('warm') / 'x.pth'
    path.write_bytes(by_global('os', 'system'))
    with pytest.raises(CheckpointError):
        torch_load(str(path))
    torch.save({'t': torch.ones(1)}, path, _use_new_zipfile_serialization=False)
    torch_load(str(path))


def unpickle(data):
    return ReleaseUnpickler(io.BytesIO(data)).load()


def refused_by_torch_load(tmp_path, data):
    path = tmp_path / 'state_dict.pth'
    path.write_bytes(data)
    with watch() as events, pytest.raises(CheckpointError, match='refusing') as error:
        torch_load(str(path))
    assert events == []
    assert '\n' not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize('make', OPCODES)
@pytest.mark.parametrize('pair', DANGEROUS)
def test_dotted_and_dangerous_names_are_refused(tmp_path, make, pair):
    message = refused_by_torch_load(tmp_path, make(*pair))
    assert f'{pair[0]}.{pair[1]}' in message


@pytest.mark.parametrize('make', OPCODES)
def test_naming_opcodes_in_a_zip_file_are_one_line_without_warnings(tmp_path, make):
    """The same names in a zip-format file's data.pkl (torch's weights-only route): refused
    in one line, nothing run, and no warning of torch's on stderr before it (round 12: a
    protocol-4 pickle printed torch's two-line UserWarning, and the line gave only torch's
    'Please file an issue' boilerplate)."""
    import warnings
    import zipfile
    # numpy's Float64DType is one of the few globals the zip route builds (SAFE_GLOBALS).
    pairs = [pair for pair in DANGEROUS if pair != ('numpy.dtypes', 'Float64DType')]
    for i, (module, name) in enumerate([pairs[0]] + pairs):
        path = tmp_path / 'G_ema.pth'
        with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
            z.writestr('archive/data.pkl', make(module, name))
            z.writestr('archive/version', '3\n')
            z.writestr('archive/byteorder', 'little')
        if i == 0:
            # Once unwatched: the first refusal imports torch's modules for it (an import
            # is an 'exec' event), which an earlier test of the module may have done or not.
            with pytest.raises(CheckpointError):
                torch_load(str(path))
            continue
        with watch() as events, warnings.catch_warnings(record=True) as shown, \
                pytest.raises(CheckpointError) as error:
            warnings.simplefilter('always')
            torch_load(str(path))
        assert events == [] and shown == [], (module, name, [str(w.message) for w in shown])
        message = str(error.value)
        assert '\n' not in message and 'Please file an issue' not in message, message
        assert name.split('.')[-1] in message or 'Unsupported operand' in message, message


@pytest.mark.parametrize('make', [by_global, by_stack_global])
def test_near_miss_names_are_refused(make):
    pairs = [miss for pair in ReleaseUnpickler.TABLE for miss in near_misses(*pair)]
    assert len(pairs) > 10 * len(ReleaseUnpickler.TABLE)
    with watch() as events:
        for pair in pairs:
            assert pair not in ReleaseUnpickler.TABLE
            with pytest.raises(RefusedName):
                unpickle(make(*pair))
    assert events == []


@pytest.mark.parametrize('opcode,size', [(b'\x82', '<B'), (b'\x83', '<H'), (b'\x84', '<i')])
@pytest.mark.parametrize('pair', [('builtins', 'eval'), ('os', 'system'),
                                  ('numpy.dtypes.os', 'system')])
def test_extension_codes_are_refused(tmp_path, opcode, size, pair):
    code = {'<B': 0xF1, '<H': 0xF1F1, '<i': 0x7FF1F1F1}[size]
    copyreg.add_extension(*pair, code)
    try:
        refused_by_torch_load(tmp_path, b'\x80\x02' + opcode + struct.pack(size, code) + b')R.')
    finally:
        copyreg.remove_extension(*pair, code)


def test_torch_storage_names_come_only_from_the_table(tmp_path):
    # torch.load's own Unpickler subclass answers '...Storage' names for any module.
    refused_by_torch_load(tmp_path, b'\x80\x02cos\nFloatStorage\n.')
    refused_by_torch_load(tmp_path, b'\x80\x02ctorch\nFloatStorages\n.')


def test_random_pairs_give_only_table_objects():
    rng = random.Random(19)
    modules = sorted({m for m, _ in ReleaseUnpickler.TABLE})
    names = sorted({n for _, n in ReleaseUnpickler.TABLE}) + ['eval', 'system', 'os', 'getattr']
    allowed = {id(v) for v in ReleaseUnpickler.TABLE.values()}
    hits = misses = 0
    with watch() as events:
        for _ in range(300):
            pair = [rng.choice(modules), rng.choice(names)]
            for _ in range(rng.randrange(3)):
                which = rng.randrange(2)
                pair[which] = rng.choice([str.upper, lambda s: s + ' ', lambda s: s + '.os',
                                          lambda s: s[:-1], lambda s: 'numpy.dtypes.' + s,
                                          lambda s: s.replace('o', '\u043e')])(pair[which])
            data = b'\x80\x04' + unicode_bytes(pair[0]) + unicode_bytes(pair[1]) + b'\x93.'
            try:
                obj = unpickle(data)
            except RefusedName:
                misses += 1
                assert tuple(pair) not in ReleaseUnpickler.TABLE
                continue
            hits += 1
            assert id(obj) in allowed and obj is ReleaseUnpickler.TABLE[tuple(pair)]
    assert events == []
    assert hits > 10 and misses > 100


def test_real_legacy_files_still_load(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Linear(4, 2))
    state = {'itr': 1000, 'epoch': 2, 'save_num': 1, 'save_best_num': 0,
             'best_IS': np.float64(7.25), 'best_FID': np.float32(31.5), 'name': 'run',
             'config': {'G_lr': 1e-4, 'dataset': 'I128_hdf5', 'G_activation': nn.ReLU(),
                        'num_G_accumulations': 8, 'ema': True, 'skip_init': None,
                        'resolution': {128, 64}}}
    for protocol in (2, 4):
        torch.save(state, tmp_path / 'state_dict.pth', pickle_protocol=protocol,
                   _use_new_zipfile_serialization=False)
        torch.save(model.state_dict(), tmp_path / 'G.pth', pickle_protocol=protocol,
                   _use_new_zipfile_serialization=False)
        with watch() as events:
            loaded = torch_load(str(tmp_path / 'state_dict.pth'))
            weights = torch_load(str(tmp_path / 'G.pth'))
        # Not even pickle's own find_class ran (torch's check of ReLU's source compiles).
        assert not set(events) & {'pickle.find_class', 'os.system', 'subprocess.Popen'}
        assert loaded['best_IS'] == 7.25 and loaded['best_FID'] == 31.5
        assert isinstance(loaded['config']['G_activation'], nn.ReLU)
        config = dict(loaded['config'], G_activation=None)
        assert config == dict(state['config'], G_activation=None)
        assert {k: loaded[k] for k in ('itr', 'epoch', 'name')} == {
            'itr': 1000, 'epoch': 2, 'name': 'run'}
        assert list(weights) == list(model.state_dict())
        for key, value in model.state_dict().items():
            assert weights[key].dtype == value.dtype and torch.equal(weights[key], value)


# ----------------------------------------------------------------------------
# Hashing: a key built from shared references (t = (t, t)) is a tree of 2^levels entries,
# which the unpickler hashes before any check of what it built can run.

def tuple_dag(levels):
    """Opcodes that leave t_levels on the stack: t_0 = (), t_k+1 = (t_k, t_k) from the memo."""
    ops = b')q\x00'
    for k in range(levels):
        ops += b'h' + bytes([k]) + b'\x86' + b'q' + bytes([k + 1])
    return ops


# Every way a pickle makes its unpickler hash an object: (route, opcodes around t's).
HASH_ROUTES = {
    'SETITEM': lambda t: b'}' + t + b'K\x01s',
    'SETITEMS': lambda t: b'}(' + t + b'K\x01u',
    'DICT': lambda t: b'(' + t + b'K\x01d',
    'FROZENSET': lambda t: b'(' + t + b'\x91',
    'ADDITEMS': lambda t: b'\x8f(' + t + b'\x90',
    'set(list)': lambda t: b'c__builtin__\nset\n]' + t + b'a\x85R',
    'OrderedDict(pairs)': lambda t: b'ccollections\nOrderedDict\n]' + t + b'K\x01\x86a\x85R',
    'storage key': lambda t: b'(X\x07\x00\x00\x00storage' + t + b'tQ',
}


@pytest.mark.parametrize('route', sorted(HASH_ROUTES))
def test_a_key_of_shared_references_is_refused_before_it_is_hashed(route):
    from checkpoints import MAX_HASH_WORK, check_pickle_hashing
    data = b'\x80\x02' + HASH_ROUTES[route](tuple_dag(45)) + b'.'
    with pytest.raises(pickle.UnpicklingError, match='would hash more than'):
        check_pickle_hashing(io.BytesIO(data))
    # 10 levels, 2^10 entries: counted, and below the bound.
    small = b'\x80\x02' + HASH_ROUTES[route](tuple_dag(10)) + b'.'
    assert 2 ** 10 <= check_pickle_hashing(io.BytesIO(small)) < MAX_HASH_WORK


def test_one_key_repeated_from_the_memo_counts_each_time():
    """A 2^12-entry key set 3,000 times (5 bytes each): 1.2e7 entries hashed, refused."""
    from checkpoints import check_pickle_hashing
    data = (b'\x80\x02}' + tuple_dag(12) + b'0(' + b'h\x0cK\x01' * 3000 + b'u.')
    with pytest.raises(pickle.UnpicklingError, match='would hash more than'):
        check_pickle_hashing(io.BytesIO(data))


def tree_work(obj):
    """The entries hashing obj visits, by walking it: a tuple or frozenset is itself plus
    its members' (hash recomputes them every time), anything else one."""
    if isinstance(obj, (tuple, frozenset)):
        return 1 + sum(tree_work(m) for m in obj)
    return 1


def hashed_work(obj, seen=None):
    """The entries unpickling obj hashes, walking what was built: every dict key and set
    item, once each (each container is built once, however often it is referenced)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    work = 0
    if isinstance(obj, dict):
        work += sum(tree_work(k) for k in obj)
        members = list(obj) + list(obj.values())
    elif isinstance(obj, (set, frozenset)):
        work += sum(tree_work(m) for m in obj)
        members = list(obj)
    elif isinstance(obj, (list, tuple)):
        members = list(obj)
    else:
        members = []
    return work + sum(hashed_work(m, seen) for m in members)


def random_structure(rng):
    """Plain data with shared references: tuples built from a pool of earlier ones, used as
    dict keys, set items and list members."""
    pool = [(), 'a', 1, 2.5, None, b'x']
    for _ in range(rng.randrange(3, 30)):
        pool.append(tuple(rng.choice(pool) for _ in range(rng.randrange(4))))
        if rng.random() < 0.2:
            pool.append(frozenset(rng.sample(pool, rng.randrange(min(len(pool), 4)))))
    out = []
    for _ in range(rng.randrange(1, 6)):
        kind = rng.randrange(4)
        if kind == 0:
            out.append({rng.choice(pool): rng.choice(pool) for _ in range(rng.randrange(5))})
        elif kind == 1:
            out.append(set(rng.sample(pool, rng.randrange(min(len(pool), 5)))))
        elif kind == 2:
            out.append([rng.choice(pool) for _ in range(rng.randrange(5))])
        else:
            out.append(rng.choice(pool))
    return out


def test_the_count_is_never_below_what_unpickling_hashes():
    """Seeded random plain data with shared tuples, pickled by pickle itself at protocols
    2-5: the scan's count is at least the hashing a direct walk of the loaded objects finds."""
    from checkpoints import check_pickle_hashing
    rng = random.Random(45)
    checked = 0
    for _ in range(400):
        obj = random_structure(rng)
        data = pickle.dumps(obj, protocol=rng.randrange(2, 6))
        counted = check_pickle_hashing(io.BytesIO(data))
        assert counted >= hashed_work(pickle.loads(data)), obj
        checked += hashed_work(obj) > 50
    assert checked >= 10  # some draws hash deep keys


def test_a_real_checkpoint_hashes_little(tmp_path):
    """A BigGAN-128 state dict and its Adam state, saved by torch: far below the bound."""
    import BigGAN
    from checkpoints import MAX_HASH_WORK, check_pickle_hashing
    G = BigGAN.Generator(resolution=128, G_ch=8, skip_init=True, no_optim=True)
    optim = torch.optim.Adam(G.parameters())
    for p in G.parameters():
        p.grad = torch.zeros_like(p)
    optim.step()
    for name, obj in [('G', G.state_dict()), ('G_optim', optim.state_dict())]:
        torch.save(obj, tmp_path / f'{name}.pth')
        record = torch._C.PyTorchFileReader(str(tmp_path / f'{name}.pth')).get_record('data.pkl')
        assert check_pickle_hashing(io.BytesIO(record)) < MAX_HASH_WORK // 100


def test_torch_load_refuses_a_key_of_shared_references_in_either_format(tmp_path):
    """The file formats end to end, in a child (a hash of 2^45 entries would never return):
    a zip G.pth whose data.pkl holds the key, and a legacy one (magic, protocol, sys info,
    then the object), both refused in one line and at once; and a zip whose key nests 200,000
    tuples deep."""
    import subprocess
    import zipfile
    body = b'\x80\x02' + HASH_ROUTES['SETITEM'](tuple_dag(45)) + b'.'
    with zipfile.ZipFile(tmp_path / 'zip.pth', 'w', zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', body)
        z.writestr('archive/version', '3\n')
        z.writestr('archive/byteorder', 'little')
    header = b''.join(pickle.dumps(x, protocol=2) for x in (
        0x1950a86a20f9469cfc6c, 1001, {'protocol_version': 1001, 'little_endian': True,
                                       'type_sizes': {'short': 2, 'int': 4, 'long': 4}}))
    (tmp_path / 'legacy.pth').write_bytes(header + body)
    # The storage keys torch hashes after the object (a DAG key in them hung the loader past
    # SIGTERM, the outside attacker's round 11).
    (tmp_path / 'keys.pth').write_bytes(header + pickle.dumps({'itr': 2}, protocol=2)
                                        + b'\x80\x02]K\x00' + b'2\x86' * 45 + b'a.')
    with zipfile.ZipFile(tmp_path / 'deep.pth', 'w', zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', b'\x80\x02}K\x00' + b'\x85' * 200_000 + b'K\x01s.')
        z.writestr('archive/version', '3\n')
        z.writestr('archive/byteorder', 'little')
    code = ('import sys, checkpoints\n'
            'for path in sys.argv[1:]:\n'
            '    try:\n'
            '        checkpoints.torch_load(path)\n'
            '    except checkpoints.CheckpointError as e:\n'
            '        print(e)\n')
    done = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'zip.pth'),
                           str(tmp_path / 'legacy.pth'), str(tmp_path / 'deep.pth'),
                           str(tmp_path / 'keys.pth')],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and all('would hash more than' in line for line in lines[:2]), done
    assert 'nests containers more than' in lines[2]  # a segmentation fault before
    assert 'storage keys are not all strings' in lines[3]


def test_containers_nested_past_the_bound_are_refused_before_and_after_unpickling():
    """A dict key of 0 in 200,000 one-element tuples (200 KB, 2 x 10^5 entries hashed, under
    the entry bound): torch's unpickler crashed the process hashing it (a C stack overflow,
    the outside attacker's round 11), and a value nested 1,100 deep ended in a RecursionError
    from a repr. The scan refuses a tuple deeper than MAX_DEPTH as it is built; the walk of
    what was loaded, any container that deep (a list can be deepened after it was referenced,
    which the scan does not follow)."""
    from checkpoints import MAX_DEPTH, check_loaded_tensors, check_pickle_hashing

    def key_of_depth(n):
        return b'\x80\x02}K\x00' + b'\x85' * n + b'K\x01s.'
    check_pickle_hashing(io.BytesIO(key_of_depth(MAX_DEPTH - 1)))
    for n in (MAX_DEPTH + 1, 200_000):
        with pytest.raises(pickle.UnpicklingError, match=f'more than {MAX_DEPTH} deep'):
            check_pickle_hashing(io.BytesIO(key_of_depth(n)))
    deep = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    check_loaded_tensors({'a': deep[0]}, 'x.pth')
    with pytest.raises(CheckpointError, match=f'nests containers more than {MAX_DEPTH} deep'):
        check_loaded_tensors({'a': deep}, 'x.pth')
