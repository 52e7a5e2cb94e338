"""The restricted unpickler resolves no name: only the exact pairs of its table come out."""
import copyreg
import io
import random
import struct
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from checkpoints import CheckpointError, RefusedName, ReleaseUnpickler, torch_load

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
