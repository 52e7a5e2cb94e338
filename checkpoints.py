"""Checkpoints: save, load, the restricted unpickler (the atomic writes live in files.py).

Nothing is loaded that could run code: tensors and plain data go through torch's
weights_only loader, and the release's legacy-format state_dict.pth through an unpickler
that builds only the few types such a file holds, for every pickle in the file.
"""
import codecs
import collections
import contextlib
import functools
import io
import math
import os
import pickle
import pickletools
import random
import re
import warnings
import zipfile

import numpy as np
import torch
import torch.nn as nn

import step_helpers
from distributed import all_gather_objects, get_rank, get_world_size
from files import (  # noqa: F401  (release-facing names; new code imports from files)
    BoundedReader,
    FileError,
    atomic_link,
    atomic_open,
    atomic_path,
    atomic_save_all,
    atomic_save_set,
    check_declared,
    check_disk,
    check_name,
    check_writable,
    file_digest,
    open_regular,
    own_folder,
    remove_stale_temps,
    scratch_folder,
    size_limit,
    temp_path,
)
from flags import FLOAT32_MAX, ConfigError, StopRun, check_types, is_count, one_line

CHECKPOINT_FILES = ('G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema')
# The collapse watch's sets (collapse.py): a checkpoint on probation, and the last one that
# passed it. Never rotated by --num_save_copies or --num_best_copies.
CANDIDATE_SET, HEALTHY_SET = 'candidate', 'healthy'


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read: missing, truncated, refused or of the wrong kind."""


# ----------------------------------------------------------------------------
# What a checkpoint holds.

def is_plain(value):
    """Whether value is plain data, what weights_only loading accepts."""
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


def plain_config(config):
    """config without its non-plain entries (the activation modules, re-derived from
    --G_nl/--D_nl when loaded)."""
    return {k: v for k, v in config.items() if is_plain(v)}


# best_FID's start: any measured FID is lower (the release's value, kept for its tools).
NO_FID_YET = 999999


def initial_state(config):
    """state_dict.pth's contents before the first iteration (a new run, a converted model)."""
    return {'itr': 0, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
            'best_FID': NO_FID_YET, 'config': config}


def get_rng_state():
    """Every RNG training draws from, as plain data (lists of numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {'torch': torch.get_rng_state().tolist(),
             'numpy': [kind, keys.tolist(), pos, has_gauss, cached],
             'python': [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only: the count of visible GPUs may differ on resume.
        state['cuda'] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state):
    """Restore what get_rng_state captured (from a list of per-rank states, this rank's)."""
    if isinstance(state, list):
        if len(state) != get_world_size():
            print(f'note: the checkpoint was written by {len(state)} process(es), this run '
                  f'has {get_world_size()}: random streams start afresh')
            return
        state = state[get_rank()]
    torch.set_rng_state(torch.tensor(state['torch'], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state['cuda'], dtype=torch.uint8))


def in_dtypes_of(net, loaded):
    """A weights file's or optimizer state's floating tensors in the dtypes loading them into
    net (a module, or the module whose optimizer state it is) gives them."""
    if 'state' in loaded and 'param_groups' in loaded:  # as torch casts an optimizer's state
        dtype = next(net.parameters()).dtype
        return {'state': {i: {k: v.to(dtype) if (k != 'step' and torch.is_tensor(v)
                                                  and v.is_floating_point()) else v
                              for k, v in entry.items()} if isinstance(entry, dict) else entry
                          for i, entry in loaded['state'].items()}}
    target = net.state_dict()
    return {k: v.to(target[k].dtype) if (torch.is_tensor(v) and v.is_floating_point()
                                         and k in target and target[k].is_floating_point())
            else v for k, v in loaded.items()}


def first_nonfinite(named):
    """The name of the first floating tensor in named ({name: tensor or nested dict/list})
    holding NaN or Inf, or None. One host sync for all of them."""
    flat = []

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel():
                flat.append((prefix, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f'{prefix}.{k}' if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f'{prefix}.{i}', v)
    walk('', named)
    # A tensor's float64 sum is finite iff all its values are; one sync per device.
    sums = {}
    for i, (_, t) in enumerate(flat):
        sums.setdefault(t.device, []).append((i, t.detach().sum(dtype=torch.float64)))
    bad = [i for parts in sums.values()
           for (i, _), ok in zip(parts, torch.isfinite(torch.stack([s for _, s in parts])).cpu())
           if not ok]
    return flat[min(bad)][0] if bad else None


# ----------------------------------------------------------------------------
# Saving.

def checkpoint_path(weights_root, experiment_name, name, name_suffix=None):
    """weights_root/experiment_name/name[_suffix].pth."""
    base = '_'.join(item for item in [name, name_suffix] if item)
    check_name(experiment_name, 'experiment name')
    check_name(base, 'checkpoint name')
    return f'{weights_root}/{experiment_name}/{base}.pth'


def last_checkpoint(weights_root, experiment_name):
    """A phrase naming the latest checkpoint on disk and its iteration, for messages."""
    path = checkpoint_path(weights_root, experiment_name, 'state_dict')
    try:
        return f"{os.path.dirname(path)} (itr {torch_load(path)['itr']})"
    except (ConfigError, KeyError, TypeError):
        return f'none (no complete checkpoint in {os.path.dirname(path)})'


def check_room(G, D, G_ema, weights_root, experiment_name):
    """Refuse, before training, a checkpoint set the disk or the file size limit (ulimit -f)
    cannot take: found at the first save, it cost the iterations before it."""
    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)
    sizes = []
    for net in (G, D):
        sizes += [nbytes(net.state_dict().values()), 2 * nbytes(net.parameters())]  # + Adam's
    if G_ema is not None:
        sizes.append(nbytes(G_ema.state_dict().values()))
    check_disk(sum(sizes), os.path.join(weights_root, experiment_name), 'checkpoints',
               'free space there or pass another --weights_root', largest=max(sizes))


def save_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None, G_ema=None):
    """Write G, G_optim, D, D_optim, G_ema and state_dict as one atomic set.

    state_dict carries every rank's RNG state and a config of plain data, so the files load
    with weights_only=True. Under DDP every rank calls this; rank 0 writes. A set holding NaN
    or Inf is never written, and a failed write (a full disk) leaves the previous set whole;
    both stop the run with StopRun.
    """
    rng = all_gather_objects(get_rng_state())
    if get_rank() != 0:
        return
    root = f'{weights_root}/{experiment_name}'
    path = functools.partial(checkpoint_path, weights_root, experiment_name,
                             name_suffix=name_suffix)
    items = [(G.state_dict(), path('G')), (G.optim.state_dict(), path('G_optim')),
             (D.state_dict(), path('D')), (D.optim.state_dict(), path('D_optim'))]
    if G_ema is not None:
        items.append((G_ema.state_dict(), path('G_ema')))
    bad = first_nonfinite({os.path.basename(p)[:-4]: obj for obj, p in items})
    if bad is not None:
        last = last_checkpoint(weights_root, experiment_name)
        raise StopRun(f"not saving iteration {state_dict['itr']}: {bad} is NaN or Inf; the last "
                      f'checkpoint, {last}, is left as it was')
    items.append(({**state_dict, 'config': plain_config(state_dict['config']), 'rng': rng,
                   'optim_settings': {'G': optimizer_settings(G.optim),
                                      'D': optimizer_settings(D.optim)},
                   'launch_optim': asked_settings(state_dict, state_dict['config'])},
                  path('state_dict')))
    try:
        own_folder(weights_root, experiment_name)
        atomic_save_set(items)
    except (OSError, RuntimeError, FileError) as e:  # torch.save's write errors: RuntimeError
        before = ('the previous checkpoint there is whole' if os.path.isfile(path('state_dict'))
                  else 'there was no checkpoint there before')
        raise StopRun(f"could not write the checkpoint for iteration {state_dict['itr']} to "
                      f'{root} ({one_line(e)}{size_limit()}); {before} and no partial file '
                      f'is left') from e


def copy_set(weights_root, experiment_name, source, target):
    """Make the set with suffix target ('' for the latest) a copy of the set with suffix
    source, file for file: hard links where the file system allows (nothing is rewritten, so
    the copy is bit-exact and costs no disk), else copies. target's state_dict is written
    last, its record naming target's files with source's digests, so an interrupted copy reads
    as a mixed set. Returns the copied state_dict's itr."""
    path = functools.partial(checkpoint_path, weights_root, experiment_name)
    saved = torch_load(path('state_dict', source))
    check_kind(saved, path('state_dict', source), 'state_dict')
    record, copied = saved.get('files') or {}, {}
    for name in CHECKPOINT_FILES:
        src, dst = path(name, source), path(name, target)
        if name == 'state_dict' or not os.path.isfile(src):
            continue
        atomic_link(src, dst)
        known = record.get(os.path.basename(src))
        copied[os.path.basename(dst)] = known if known else file_digest(dst)
    atomic_save_all([({**saved, 'files': copied}, path('state_dict', target))])
    return saved['itr']


# ----------------------------------------------------------------------------
# Loading.

_MULTIARRAY = getattr(np, '_core', None) or np.core  # numpy 2 renamed numpy.core


def _storage_types():
    """The storage classes a legacy file names, as torch's own loader builds them (a dtype)."""
    names = ('Float', 'Double', 'Half', 'BFloat16', 'Long', 'Int', 'Short', 'Char', 'Byte',
             'Bool')
    return {('torch', f'{n}Storage'): torch.serialization.StorageType(f'{n}Storage')
            for n in names}


def _rebuild_tensor_in_bounds(storage, storage_offset, size, stride, *args):
    """torch's _rebuild_tensor_v2, once the view it describes is known to lie inside its
    storage: torch would otherwise grow the storage to whatever size the pickle declares."""
    dims = (storage_offset, *size, *stride) if isinstance(size, (tuple, list)) and isinstance(
        stride, (tuple, list)) else None
    if (dims is None or len(size) != len(stride) or not isinstance(storage, torch.TypedStorage)
            or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in dims)):
        raise pickle.UnpicklingError(f'a tensor of size {size!r:.80} and stride {stride!r:.80} '
                                     f'at offset {storage_offset!r:.20}')
    if all(size):
        end = storage_offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
        held = storage._untyped_storage.nbytes() // storage.dtype.itemsize
        if end > held:
            raise pickle.UnpicklingError(f'a tensor of size {tuple(size)} reaches element '
                                         f'{end} of a storage of {held}')
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *args)


class RefusedName(pickle.UnpicklingError):
    """A pickle names a (module, name) pair that is not in ReleaseUnpickler.TABLE."""

    def __init__(self, module, name):
        qualname = f'{module}.{name}'
        if not (qualname.isascii() and qualname.isprintable()):
            qualname = ascii(qualname)  # a look-alike or control character shows as an escape
        super().__init__(f'{qualname} is not allowed in a checkpoint')
        self.qualname = qualname


class ReleaseUnpickler(pickle.Unpickler):
    """Unpickles what the release's state_dict.pth holds and nothing else: plain data,
    nn.ReLU and OrderedDict, numpy scalars (its best_IS/best_FID) and tensors.

    No name from the file is resolved: each (module, name) pair is looked up, exactly, in
    TABLE, whose objects were fixed when this module was imported; any other pair is refused
    before anything is built. weights_only=True refuses such files: PyTorch < 1.6 (which the
    release ran on) saved the ReLU's class by a persistent id it does not accept.
    """
    TABLE = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('torch.nn.modules.activation', 'ReLU'): nn.ReLU,
        ('_codecs', 'encode'): codecs.encode,  # how pickle protocol 2 spells bytes
        ('__builtin__', 'set'): set, ('builtins', 'set'): set,
        ('__builtin__', 'frozenset'): frozenset, ('builtins', 'frozenset'): frozenset,
        ('numpy.core.multiarray', 'scalar'): _MULTIARRAY.multiarray.scalar,
        ('numpy._core.multiarray', 'scalar'): _MULTIARRAY.multiarray.scalar,
        ('numpy', 'dtype'): np.dtype,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_in_bounds,
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
        # An nn.Module attribute of PyTorch 1.0, gone since: calling it gives None.
        ('torch.nn.backends.thnn', '_get_thnn_function_backend'): type(None),
        **_storage_types(),
    }

    def __init_subclass__(cls, **kwargs):
        # torch.load subclasses Unpickler and answers every '...Storage' name itself, whatever
        # the module; keeping this find_class keeps TABLE the only way a name becomes an object.
        super().__init_subclass__(**kwargs)
        cls.find_class = ReleaseUnpickler.find_class

    def __init__(self, file, *args, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._file = file
        try:
            self._left = os.fstat(file.fileno()).st_size - file.tell()
        except (AttributeError, OSError, ValueError):
            self._left = None  # not a file (tests unpickle from memory): memory still bounds
        self._declared, self._storages = 0, set()

    # torch's legacy loader sets persistent_load to a function that allocates each storage at
    # the size the pickle declares before reading any of its bytes: wrapped, every declared
    # size is checked against the bytes left in the file (all storages together, each once
    # however many tensors view it) first.
    @property
    def persistent_load(self):
        raise AttributeError('persistent_load')  # none until torch sets one

    @persistent_load.setter
    def persistent_load(self, load):
        def checked(saved_id):
            if (isinstance(saved_id, tuple) and len(saved_id) == 6
                    and saved_id[0] in ('storage', b'storage')):
                storage_type, key, numel = saved_id[1], saved_id[2], saved_id[4]
                if not isinstance(key, (str, bytes)):
                    raise pickle.UnpicklingError(f'a storage key {type(key).__name__}')
                if key in self._storages:
                    return load(saved_id)
                self._storages.add(key)
                itemsize = getattr(getattr(storage_type, 'dtype', None), 'itemsize', None)
                if not isinstance(numel, int) or isinstance(numel, bool) or itemsize is None:
                    raise pickle.UnpicklingError(f'a storage declared as {numel!r} elements '
                                                 f'of {storage_type!r}')
                self._declared += check_declared(numel * itemsize, 'its storages',
                                                 'the checkpoint',
                                                 limit=None if self._left is None
                                                 else self._left - self._declared)
            return load(saved_id)
        pickle.Unpickler.__dict__['persistent_load'].__set__(self, checked)

    def load(self):
        """Unpickle, once check_pickle_hashing has read the pickle ahead and come back."""
        file = self._file
        start = file.tell()
        check_pickle_hashing(file if self._left is None else BoundedReader(file, self._left))
        file.seek(start)
        return super().load()

    def find_class(self, module, name):
        found = None
        if isinstance(module, str) and isinstance(name, str):
            found = self.TABLE.get((module, name))
        if found is None:
            raise RefusedName(module, name)
        return found


# Entries the hashing of a pickle's keys may reach, counted each time: a dict key or set item
# that is a tuple of tuples built from shared references (t = (t, t), 45 levels, 300 bytes)
# hashes 2^45 entries inside the unpickler, before any check of what it built can run. A
# project or release checkpoint hashes a few thousand (string keys, storage ids).
MAX_HASH_WORK = 10_000_000


class _Shape:
    """What check_pickle_hashing knows of an object the pickle builds: the entries hashing
    it reaches (h), how deep it nests containers (depth: exact for a tuple or frozenset,
    which cannot grow), and, for a container, its direct members."""
    __slots__ = ('h', 'depth', 'members')

    def __init__(self, h=1, members=None, depth=0):
        self.h, self.depth = h, depth
        self.members = members if members is not None else []


def _deepest(shapes):
    """1 + the deepest of shapes (a container holding them)."""
    return 1 + max((m.depth for m in shapes), default=0)


def _reach(args):
    """Entries that a call on args (REDUCE's set(list), OrderedDict(pairs), BUILD's state)
    may hash: each argument, its members and theirs, as they are now."""
    return sum(a.h + sum(m.h + sum(mm.h for mm in m.members) for m in a.members)
               for a in args)


# What check_pickle_hashing does with each opcode, worked out once from pickletools' table
# (the scan runs once per opcode of every pickle loaded: a BigGAN-128 Adam state has 10^5).
_MEMO_PUT, _MEMO_GET, _DUP, _MARK, _POP, _STOP, _OTHER = range(7)
_KEYS, _ITEMS, _REACH, _PERSID = range(1, 5)            # what an opcode hashes
_IN_PLACE, _TUPLE, _CONTAINER, _CALL, _PUSH = range(5)  # what it leaves on the stack


def _op_plan(op):
    """(kind, marked, taken, hashes, leaves, pushed) of one opcode for check_pickle_hashing."""
    name, before = op.name, op.stack_before
    kind = {'PUT': _MEMO_PUT, 'BINPUT': _MEMO_PUT, 'LONG_BINPUT': _MEMO_PUT,
            'MEMOIZE': _MEMO_PUT, 'GET': _MEMO_GET, 'BINGET': _MEMO_GET,
            'LONG_BINGET': _MEMO_GET, 'DUP': _DUP, 'MARK': _MARK, 'POP': _POP,
            'STOP': _STOP}.get(name, _OTHER)
    marked = pickletools.markobject in before
    taken = before.index(pickletools.markobject) if marked else len(before)
    hashes = (_KEYS if name in ('SETITEM', 'SETITEMS', 'DICT') else
              _ITEMS if name in ('ADDITEMS', 'FROZENSET') else
              _REACH if name in ('REDUCE', 'NEWOBJ', 'NEWOBJ_EX', 'BUILD', 'OBJ', 'INST') else
              _PERSID if name in ('BINPERSID', 'PERSID') else 0)
    leaves = (_IN_PLACE if name in ('APPEND', 'APPENDS', 'SETITEM', 'SETITEMS', 'ADDITEMS',
                                    'BUILD') else
              _TUPLE if name in ('TUPLE', 'TUPLE1', 'TUPLE2', 'TUPLE3', 'FROZENSET') else
              _CONTAINER if name in ('LIST', 'DICT') else
              _CALL if name in ('REDUCE', 'NEWOBJ', 'NEWOBJ_EX', 'OBJ', 'INST') else _PUSH)
    return kind, marked, taken, hashes, leaves, len(op.stack_after)


_PLANS = {op.code.encode('latin-1'): (op, _op_plan(op)) for op in pickletools.opcodes}


def _pickle_ops(stream):
    """(opcode, its plan, memo index or None) for each opcode of the pickle on stream, through
    STOP: pickletools' readers read each argument, except that a line is read as bytes (a
    GLOBAL's non-ASCII name is the unpickler's to refuse, not a reason to stop reading)."""
    read, readline = stream.read, stream.readline
    while True:
        code = read(1)
        found = _PLANS.get(code)
        if found is None:
            raise pickle.UnpicklingError(f'opcode {code!r} unknown' if code
                                         else 'the pickle ends before its STOP')
        op, plan = found
        index = None
        if op.arg is not None and op.arg.n == pickletools.UP_TO_NEWLINE:
            lines = [readline() for _ in range(2 if op.name in ('GLOBAL', 'INST') else 1)]
            if not all(line.endswith(b'\n') for line in lines):
                raise pickle.UnpicklingError(f'{op.name} has no newline')
            if op.name in ('PUT', 'GET'):
                index = int(lines[0])
        elif op.arg is not None:
            arg = op.arg.reader(stream)
            index = arg if isinstance(arg, int) else None
        yield op, plan, index
        if plan[0] == _STOP:
            return


def check_pickle_hashing(stream):
    """Refuse a pickle whose unpickling would hash more than MAX_HASH_WORK entries, before it
    is unpickled: one linear pass over its opcodes that builds nothing and follows the stack,
    the marks and the memo with _Shapes. Returns the entries counted (at least those the
    unpickling hashes)."""
    stack, marks, memo, work = [], [], {}, 0
    try:
        for op, plan, index in _pickle_ops(stream):
            kind = plan[0]
            if kind == _MARK:
                marks.append(len(stack))
            elif kind == _MEMO_PUT:
                memo[len(memo) if op.name == 'MEMOIZE' else index] = stack[-1]
            elif kind == _MEMO_GET:
                stack.append(memo[index])
            elif kind == _DUP:
                stack.append(stack[-1])
            elif kind == _POP and marks and marks[-1] == len(stack):
                marks.pop()  # as pickle's own POP does, a mark on top is dropped
            else:
                work += _shape_op(op.name, plan, stack, marks)
                if work > MAX_HASH_WORK:
                    raise pickle.UnpicklingError(
                        f'unpickling it would hash more than {MAX_HASH_WORK} entries (shared '
                        f'references repeat a tuple inside a key)')
    except (IndexError, KeyError, ValueError) as e:  # what no unpickler could read either
        raise pickle.UnpicklingError(f'a malformed pickle ({one_line(e)})') from None
    return work


def _shape_op(name, plan, stack, marks):
    """Apply one opcode (not a memo or mark one) to check_pickle_hashing's stack; returns
    the entries it hashes."""
    _, marked, taken, hashes, leaves, pushed = plan
    sliced = []
    if marked:
        start = marks.pop()
        sliced, stack[start:] = stack[start:], []
    if taken > len(stack):
        raise IndexError(f'{name} finds too few objects on the stack')
    if taken:
        popped = stack[-taken:]
        del stack[-taken:]
    else:
        popped = []
    work = 0
    if hashes == _KEYS:
        items = popped[1:] if name == 'SETITEM' else sliced
        work = sum(k.h for k in items[::2])  # each key is hashed
    elif hashes == _ITEMS:
        work = sum(i.h for i in sliced)
    elif hashes == _REACH:
        work = _reach(popped + sliced)
    elif hashes == _PERSID:
        work = sum(p.h for p in popped)  # torch looks the storage key up
    if leaves == _PUSH:
        for _ in range(pushed):
            stack.append(_Shape())
        return work
    if leaves == _IN_PLACE:
        items = popped[1:] if name in ('APPEND', 'SETITEM') else sliced
        popped[0].members.extend(items)  # built in place: the object stays
        popped[0].depth = max(popped[0].depth, _deepest(items))
        stack.append(popped[0])
    elif leaves == _TUPLE:
        members = sliced or popped
        stack.append(_Shape(1 + sum(m.h for m in members), members, _deepest(members)))
    elif leaves == _CONTAINER:
        stack.append(_Shape(1, sliced, _deepest(sliced)))
    else:
        # frozenset(items) hashes as its items do, and nests as deep.
        stack.append(_Shape(1 + work, depth=_deepest(popped + sliced)))
    if stack[-1].depth > MAX_DEPTH:
        raise pickle.UnpicklingError(f'it nests containers more than {MAX_DEPTH} deep (a '
                                     f'hash or repr of them would overflow the stack)')
    return work


class release_pickle:
    """The pickle module torch.load is given for legacy-format files: every pickle in the
    file (header, object, storage keys) goes through ReleaseUnpickler."""
    Unpickler = ReleaseUnpickler
    __name__ = 'release_pickle'

    @staticmethod
    def load(file, **kwargs):
        obj = ReleaseUnpickler(file, **kwargs).load()
        # torch reads the header (ints and a dict) and the storage keys this way, and hashes
        # each key to find its storage: keys are strings, and a tuple of shared tuples would
        # hash 2^levels entries after the scan.
        if isinstance(obj, list) and not all(isinstance(k, (str, bytes)) for k in obj):
            raise pickle.UnpicklingError('its storage keys are not all strings')
        return obj


# What weights_only loading may build beyond tensors and plain data: the release's ReLU and
# numpy scalars (a release state_dict re-saved by a newer torch holds both).
# numpy >= 1.25 pickles a scalar's dtype by its class: every numeric and bool one a config
# or count may be saved as (a legacy file's np.int64 loaded; a zip file's was refused).
SAFE_GLOBALS = [nn.ReLU, np.dtype, _MULTIARRAY.multiarray.scalar,
                *(getattr(np.dtypes, f'{kind}DType') for kind in (
                    'Float64', 'Float32', 'Float16', 'Int64', 'Int32', 'Int16', 'Int8', 'UInt64',
                    'UInt32', 'UInt16', 'UInt8', 'Bool'))]


def load_zip_checkpoint(path, map_location='cpu'):
    """torch.load, weights_only, of a zip-format file whose pickle (its data.pkl, read by
    torch's own zip reader) check_pickle_hashing passed; raises what loading raises."""
    with open(path, 'rb') as f:
        # Two entries of one name are read as one or the other depending on the reader, so
        # what is checked here might not be what another tool loads.
        archive = zipfile.ZipFile(f)
        counts = collections.Counter(archive.namelist())
        twice = next((name for name, n in counts.items() if n > 1), None)
        if twice is not None:
            raise ValueError(f'two zip entries are named {twice}')
        # torch's reader skips the entries' CRC-32s, so a flipped byte in a tensor would load
        # as a weight: every entry is read through once, zipfile checking its CRC at the end
        # (after its declared size is held to memory, as a deflated entry is inflated).
        for info in archive.infolist():
            check_declared(info.file_size, f'zip entry {info.filename!r}', path)
            with archive.open(info) as member:
                while member.read(1 << 24):
                    pass
        f.seek(0)
        record = torch._C.PyTorchFileReader(f).get_record('data.pkl')
    check_pickle_hashing(io.BytesIO(record))
    with torch.serialization.safe_globals(SAFE_GLOBALS), quiet_torch_load():
        return torch.load(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def quiet_torch_load():
    """A context in which torch.load's own warnings are not shown: it warns on stderr of
    pickle protocols torch.save does not write (4, 5), of deprecated storages and quantized
    tensors, before it fails or loads, and what is wrong with a file is said in the one line
    its refusal gives."""
    with warnings.catch_warnings():
        # Every torch module's: its loader builds storages and quantized tensors through
        # deprecated paths (torch._utils), each warning on stderr.
        warnings.filterwarnings('ignore', category=UserWarning, module='torch')
        yield


def torch_load(path, map_location='cpu'):
    """torch.load of tensors and plain data only, or CheckpointError naming the file.

    Zip-format files (every torch >= 1.6 writes them) go through weights_only=True only; the
    legacy format (the release's files) through ReleaseUnpickler.
    """
    if not os.path.lexists(path):
        raise CheckpointError(f'{path}: no such file')
    try:  # a FIFO, a device or a link to one is there, and is no file to load
        with open_regular(path, 'checkpoint') as f:
            magic = f.read(2)
    except FileError as e:
        raise CheckpointError(str(e)) from None
    try:
        if magic == b'PK':
            obj = load_zip_checkpoint(path, map_location)
        elif magic[:1] == b'\x80':  # a pickle: PyTorch 1.0-1.5's format
            with quiet_torch_load():
                obj = torch.load(path, map_location=map_location, weights_only=False,
                                 pickle_module=release_pickle)
        else:
            raise ValueError('empty file' if not magic else 'not a PyTorch zip or pickle file')
    except Exception as e:  # any failure to parse is the file's fault: name it, in one line
        refused = e.qualname if isinstance(e, RefusedName) else _refused_global(e)
        if refused:
            raise CheckpointError(f'refusing {path}: it holds {refused}, which is not allowed '
                                  f'in a checkpoint (only tensors and plain data are '
                                  f'loaded)') from None
        raise CheckpointError(f'cannot load {path} ({load_error_reason(e)}); it is truncated, '
                              f'damaged or not a checkpoint of tensors and plain data') from None
    check_loaded_tensors(obj, path)
    if isinstance(obj, dict):
        # numpy scalars become floats, so the state can be saved again as plain data.
        obj = {k: v.item() if isinstance(v, np.generic) else v for k, v in obj.items()}
    return obj


# Entries a loaded checkpoint may hold, counting a shared container each time it is reached:
# every reader walks the file's objects as a tree, and a pickle's shared references make a
# 23 KB file (L = [L, L], 90 levels) a tree of 2^90 entries. A release or project checkpoint
# holds a few thousand.
MAX_ENTRIES = 1_000_000
# Containers nested in containers: a checkpoint nests a few levels (an optimizer's state, a
# config's lists); a repr, a hash or a recursive walk of 10^5 levels overflows the stack (a
# tuple's hash in C: a segmentation fault).
MAX_DEPTH = 100


_NONE = object()  # no such key: None itself is one a crafted file may hold


def _overlaps(tensor):
    """Whether two elements of a strided tensor may share memory (an expanded or as_strided
    view): with its dimensions of size > 1 ordered by stride, each stride must pass the span
    of the ones before it (every layout torch allocates, channels_last too, does)."""
    dims = sorted((st, n) for n, st in zip(tensor.shape, tensor.stride()) if n > 1)
    span = 1
    for st, n in dims:
        if st < span:
            return True
        span = st * n
    return False


def check_loaded_tensors(obj, path):
    """Refuse a tensor no checkpoint is saved with, before anything reads it: one that is not
    dense (sparse: no optimizer or layer takes it), complex, has no data (meta), has elements
    sharing memory (a stride-0 view of a few bytes standing for 10^12 elements, which every
    later full read would materialise), or declares more elements than its storage holds;
    and a file whose objects, as
    a tree, hold more than MAX_ENTRIES entries or nest containers more than MAX_DEPTH deep (so
    that every later walk, repr or hash is bounded and recurses little)."""
    # Iterative: a crafted file can nest containers deeper than the stack.
    stack, seen = [(obj, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_ENTRIES:
            raise CheckpointError(f'{path} holds more than {MAX_ENTRIES} entries (a container '
                                  f'counted each time it is referenced), which no checkpoint is '
                                  f'saved with; the file is crafted or damaged')
        if depth > MAX_DEPTH:
            raise CheckpointError(f'{path} nests containers more than {MAX_DEPTH} deep, which '
                                  f'no checkpoint is saved with; the file is crafted or damaged')
        if isinstance(item, dict):
            # Names and an optimizer's parameter indices are the only keys a checkpoint has;
            # every reader looks keys up, prints or sorts them as such.
            odd = next((k for k in item if not isinstance(k, str)
                        and (not isinstance(k, int) or isinstance(k, bool))), _NONE)
            if odd is not _NONE:
                raise CheckpointError(f'{path} holds a dict keyed by a {type(odd).__name__}, '
                                      f'which no checkpoint is saved with (keys are names or '
                                      f'parameter numbers); the file is crafted or damaged')
            stack.extend((k, depth + 1) for k in item.keys())
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((m, depth + 1) for m in item)
        elif isinstance(item, torch.Tensor):
            if item.is_complex():  # loading one into a real parameter drops its imaginary part
                raise CheckpointError(f'{path} holds a complex tensor of shape '
                                      f'{tuple(item.shape)}, which no checkpoint is saved with; '
                                      f'the file is crafted or damaged')
            if item.layout != torch.strided or item.is_meta or item.is_quantized:
                kind = ('quantized' if item.is_quantized else 'meta (no data)' if item.is_meta
                        else str(item.layout).replace('torch.', ''))
                raise CheckpointError(f'{path} holds a {kind} tensor of shape '
                                      f'{tuple(item.shape)}, not a dense one with data; the '
                                      f'file is crafted or damaged')
            if _overlaps(item):
                raise CheckpointError(f'{path} holds a tensor of shape {tuple(item.shape)} whose '
                                      f'elements share memory (strides {item.stride()}), which '
                                      f'no checkpoint is saved with; an in-place update (Adam '
                                      f'moments) would write through the aliasing; the file is '
                                      f'crafted or damaged')
            needed = item.numel() * item.element_size()
            held = item.untyped_storage().nbytes()
            if needed > held:
                raise CheckpointError(f'{path} holds a tensor of shape {tuple(item.shape)} '
                                      f'({needed} bytes) over a storage of {held} bytes; the '
                                      f'file is crafted or damaged')


def check_optimizer_state(optim, loaded, path):
    """Refuse an optimizer state dict whose groups or per-parameter tensors do not fit the
    optimizer built from the flags (torch would fail only inside the first step)."""
    params = [p for group in optim.param_groups for p in group['params']]
    ours = [len(group['params']) for group in optim.param_groups]
    try:
        theirs = [len(group['params']) for group in loaded['param_groups']]
        states = dict(loaded['state'])
        # torch pairs the file's parameter ids with ours by position, whatever the ids are.
        ids = [i for group in loaded['param_groups'] for i in group['params']]
        param_of = dict(zip(ids, params))
    except (TypeError, KeyError):
        theirs, states, ids, param_of = None, {}, [], {}
    if len(param_of) != len(ids):
        raise CheckpointError(f'{path}: its parameter groups name a parameter twice; the file '
                              f'is damaged')
    if theirs != ours:
        raise CheckpointError(f'{path}: its parameter groups ({theirs}) do not fit the model '
                              f'built from these flags ({ours}); pass the flags the checkpoint '
                              f'was trained with')
    for group, theirs_group in zip(optim.param_groups, loaded['param_groups']):
        for key, value in group.items():
            if key != 'params' and not _setting_ok(key, theirs_group.get(key, value), value):
                raise CheckpointError(f'{path}: its {key} {shown(theirs_group[key])!r:.60} is '
                                      f'not an optimizer setting like {value!r}; the file is '
                                      f'damaged')
        # Settings ours lacks (another torch's, a scheduler's initial_lr) are kept by torch's
        # load: each must be a plain setting, a number finite and within float32.
        for key, value in theirs_group.items():
            if key not in group and not _extra_setting_ok(value):
                raise CheckpointError(f'{path}: its {key} {shown(value)!r:.60} is not an '
                                      f'optimizer setting; the file is damaged')
    storages = {}  # every moment's storage: one for two moments is an alias, across entries too
    for index, state in states.items():
        if not isinstance(index, int) or index not in param_of or not isinstance(state, dict):
            raise CheckpointError(f'{path}: optimizer state entry {index!r} names no parameter '
                                  f'of the model; the file is damaged')
        check_adam_entry(state, param_of[index], optim.param_groups[0].get('amsgrad'),
                         f'{path}: optimizer state of parameter {index}', storages)


def shown(value):
    """A value as a refusal prints it: a tensor as 'tensor(<its number>)' or its dtype and
    shape, never through torch's repr (which imports modules lazily, and prints whole arrays)."""
    if isinstance(value, torch.Tensor):
        return (f'tensor({value.item()!r})' if value.numel() == 1 and not value.is_meta
                else f'a {value.dtype} tensor of shape {tuple(value.shape)}')
    return value


MOMENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_adam_entry(state, param, amsgrad, where, storages):
    """Refuse one parameter's Adam state unless it is what torch's Adam writes after a step:
    exactly step, exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad); the step a count (the
    release's a Python number, torch's a 0-d float tensor); each moment floating point, of the
    parameter's shape, in its own storage (storages: {data_ptr: which moment} of the entries
    checked so far), the second moments non-negative. Anything else fails inside the first
    step, or trains silently on a restarted or impossible state."""
    moments = ['exp_avg', 'exp_avg_sq'] + (['max_exp_avg_sq'] if amsgrad else [])
    if set(state) != set(['step'] + moments):
        raise CheckpointError(f"{where} holds {sorted(map(str, state))}, not Adam's "
                              f"{['step'] + moments}; the file is damaged")
    step = state['step']
    if isinstance(step, torch.Tensor) and (step.dim() or step.dtype not in (torch.float32,
                                                                           torch.float64)):
        raise CheckpointError(f'{where}: its step is a {step.dtype} tensor of shape '
                              f'{tuple(step.shape)}, not a 0-d float32 or float64 count (as '
                              f'Adam keeps it); the file is damaged')
    # Past 2^24 (float32) or 2^53 a step no longer counts: step + 1 == step, and Adam's bias
    # correction stays where it was.
    exact = 2 ** 24 if isinstance(step, torch.Tensor) and step.dtype == torch.float32 else 2 ** 53
    if not _like(step, 0.0) or float(step) != int(float(step)) or not float(step) < exact:
        raise CheckpointError(f'{where}: its step {shown(step)!r:.60} is not a count; the file '
                              f'is damaged')
    for key in moments:
        value = state[key]
        # torch casts a moment to its parameter's dtype: a bool one becomes 0s and 1s; the
        # float8 kinds have no arithmetic on CPU.
        if not isinstance(value, torch.Tensor) or value.dtype not in MOMENT_DTYPES:
            raise CheckpointError(f'{where}: its {key} is {getattr(value, "dtype", value)!r:.60}'
                                  f', not floating point; the file is damaged')
        if value.shape != param.shape:
            raise CheckpointError(f"{where}: its {key} has shape {tuple(value.shape)}, not its "
                                  f"parameter's {tuple(param.shape)}; the file is damaged")
        if value.numel():
            ptr = value.untyped_storage().data_ptr()
            if ptr in storages:
                raise CheckpointError(f'{where}: its {key} shares its storage with '
                                      f'{storages[ptr]}, which Adam never saves; the file is '
                                      f'damaged')
            storages[ptr] = f'{where.rsplit(": ", 1)[-1]} {key}'
        if key != 'exp_avg' and value.numel() and bool((value < 0).any()):
            raise CheckpointError(f'{where}: its {key} holds negative values, which a second '
                                  f'moment cannot; the file is damaged')


def check_settings_agree(optim_state, state, name, path):
    """Refuse an optimizer file whose lr, betas or eps differ from what state_dict.pth's
    optim_settings recorded for it: both are written from one optimizer at one save, so a
    difference means one was changed afterwards, and a resume would take the group's
    silently. The release's sets have no optim_settings."""
    recorded = state.get('optim_settings', {}).get(name)
    if recorded is None:
        return
    group = optim_state['param_groups'][0]
    have = {'lr': group.get('lr'), 'betas': tuple(group.get('betas', ())), 'eps': group.get('eps')}
    want = {'lr': recorded.get('lr'), 'betas': tuple(recorded.get('betas', ())),
            'eps': recorded.get('eps')}
    if have != want:
        raise CheckpointError(f'{path}: its settings {have} contradict the {want} state_dict.pth '
                              f'recorded for {name}; the file was changed after saving')


def _setting_ok(key, value, ours):
    """Whether a loaded optimizer setting may stand for ours: a rate of ours' kind (lr, eps,
    betas below 1: Adam divides by 1 - beta^t), and every other setting (weight_decay,
    amsgrad, maximize, foreach, ...: how the algorithm runs, which the flags fix, and which
    may need state of its own) equal to ours."""
    if key == 'betas':
        return (_like(value, ours) and all(not isinstance(b, torch.Tensor) and float(b) < 1
                                           for b in value))
    if isinstance(ours, (int, float)) and not isinstance(ours, bool):
        # A plain number within float32's range: Adam's fused and foreach paths take no
        # tensor lr, and a larger one overflows in the first step. Only the rates a flag
        # sets may differ from ours; weight_decay, which none sets, is the code's (a file's
        # 0.1 was trained with and saved again, silently).
        return (not isinstance(value, torch.Tensor) and _like(value, ours)
                and value <= FLOAT32_MAX and (key in ('lr', 'eps') or value == ours))
    return type(value) is type(ours) and value == ours


def _extra_setting_ok(value):
    """Whether a group setting the built optimizer has no key for is plain: None, a bool, a
    short string, or a finite number within float32 (a tuple of them, as betas are)."""
    if isinstance(value, (tuple, list)):
        return len(value) <= 8 and all(_extra_setting_ok(v) for v in value)
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return len(value) <= 100
    return (isinstance(value, (int, float)) and math.isfinite(value)
            and abs(value) <= FLOAT32_MAX)


def _like(value, ours):
    """Whether a loaded optimizer setting or step has the kind of ours: a bool for a bool, a
    finite non-negative number for a number (a 0-d tensor counts), a sequence of them for a
    sequence, anything for other kinds."""
    if isinstance(ours, bool) or ours is None:
        return isinstance(value, type(ours)) or ours is None
    if isinstance(ours, (int, float)):
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            value = value.item()
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value >= 0)
    if isinstance(ours, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(ours)
                and all(_like(v, o) for v, o in zip(value, ours)))
    return True


# The training state's own entries and their kinds (a release state_dict.pth has the first six).
STATE_KINDS = {'itr': int, 'epoch': int, 'save_num': int, 'save_best_num': int,
               'best_IS': float, 'best_FID': float, 'config': dict, 'optim_settings': dict,
               'files': dict, 'collapse': dict, 'launch_optim': dict}


KIND_NAMES = {int: 'count', float: 'finite number >= 0'}


def check_training_state(state, path):
    """Refuse a training state whose entries are not of their kinds (counts: non-negative
    ints; bests: numbers, not NaN), or whose random streams this process cannot restore: it
    is tried on a copy of this process's streams, which are then put back."""
    for key, kind in STATE_KINDS.items():
        if key not in state:
            continue
        value = state[key]
        if kind is float:  # a best IS or FID: a finite number >= 0 (FID is a distance)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and value >= 0)
        elif kind is int:
            ok = is_count(value) and value < 2 ** 63  # torch's and the logs' int64
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise CheckpointError(f'{path}: its {key} is {value!r:.60}, not a '
                                  f'{KIND_NAMES.get(kind, kind.__name__)}; the file is '
                                  f'damaged or not a state_dict.pth of this project')
    for net, settings in state.get('optim_settings', {}).items():
        if not (isinstance(settings, dict) and all(
                _like(settings.get(k), o) for k, o in [('lr', 0.0), ('betas', (0.0, 0.0)),
                                                         ('eps', 0.0)])
                and all(b < 1 for b in settings['betas']) and settings['eps'] > 0):
            raise CheckpointError(f'{path}: its optim_settings for {net} ({settings!r:.80}) are '
                                  f'not learning rates, betas and an eps; the file is damaged')
    # The step's own saved state: the LeCam anchors, the fp16 loss scales; the collapse
    # watch's count of rollbacks done; the rates the run's launches asked for.
    for key, check in [('ema_losses', step_helpers.ema_losses.check_state_dict),
                       ('amp', step_helpers.Precision.check_state_dict),
                       ('collapse', _check_collapse_state),
                       ('launch_optim', _check_launch_optim)]:
        problem = check(state[key]) if key in state else None
        if problem:
            raise CheckpointError(f'{path}: its {key} {problem}; the file is damaged')
    if 'rng' in state:
        here = get_rng_state()
        try:
            set_rng_state(state['rng'])
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError):
            raise CheckpointError(f'{path}: its rng entry is not random-stream states this '
                                  f'process can restore; the file is damaged') from None
        finally:
            set_rng_state(here)


def _check_collapse_state(state):
    """What is wrong with a saved state_dict['collapse'], or None: the rollbacks done, a
    count (a negative one would allow more rollbacks than --max_rollbacks)."""
    if isinstance(state, dict) and set(state) == {'rollbacks'} and is_count(state['rollbacks']):
        return None
    return f'{state!r:.60} is not a count of rollbacks'


def _check_launch_optim(asked):
    """What is wrong with a saved state_dict['launch_optim'], or None: for some of
    OPTIM_FLAGS, the distinct finite values the run's launches gave it."""
    for flag, values in asked.items():
        if not (flag in LAUNCH_DOMAINS and isinstance(values, list)
                and 0 < len(values) <= MAX_ASKED
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) and LAUNCH_DOMAINS[flag](v) for v in values)):
            return (f'has entry {flag!r:.40}: {values!r:.60}, not a list of the values a rate '
                    f'flag was given')
    return None


def _refused_global(error):
    """The module.name an unpickler refused to build, or None."""
    found = re.search(r'GLOBAL ([\w.]+)|([\w.]+) is not allowed in a checkpoint', str(error))
    return (found[1] or found[2]) if found else None


def load_error_reason(error):
    """A loading error in a few words: its message's first sentence (past torch's weights_only
    boilerplate)."""
    text = str(error)
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith('Weights only load failed'):
        lines = lines[1:]
        # 'Please file an issue ... WeightsUnpickler error: <reason, here or on a later line>'
        if lines and lines[0].startswith('Please file an issue'):
            rest = lines[0].partition('WeightsUnpickler error:')[2].strip()
            lines = ([rest] if rest else []) + lines[1:]
    first = lines[0].split('. ')[0].strip() if lines else ''
    return f'{type(error).__name__}: {first[:200]}' if first else type(error).__name__


def _by_name(obj):
    """Whether obj is a dict whose keys are all names (strings)."""
    return isinstance(obj, dict) and all(isinstance(k, str) for k in obj)


def _optimizer_layout(obj):
    """Whether obj is laid out as torch's optimizer state_dict() is: {'state': {parameter
    number: {name: value}}, 'param_groups': [{name: value, 'params': [parameter number]}]}."""
    def number(i):
        return isinstance(i, int) and not isinstance(i, bool)
    state, groups = (obj.get('state'), obj.get('param_groups')) if _by_name(obj) else (0, 0)
    return (isinstance(state, dict) and isinstance(groups, list)
            and all(number(i) and _by_name(entry) for i, entry in state.items())
            and all(_by_name(g) and isinstance(g.get('params'), list)
                    and all(map(number, g['params'])) for g in groups))


def check_kind(obj, path, name):
    """Refuse a loaded file that is not laid out as a checkpoint's `name` file is: keys of
    the types every later check and torch's loaders look them up as (an int key in a state
    dict was an AttributeError traceback, a list as an optimizer's state a ValueError)."""
    if name in ('G', 'D', 'G_ema'):
        ok = _by_name(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
        kind = 'a state dict of tensors by name'
    elif name.endswith('_optim'):
        ok = _optimizer_layout(obj)
        kind = "an optimizer's state dict (state by parameter number, groups of settings)"
    else:
        ok = (_by_name(obj) and 'itr' in obj
              and ('config' not in obj or _by_name(obj['config'])))
        kind = 'a training state (itr, epoch, ..., a config by name)'
    if not ok:
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not {kind}; it is not a '
                              f'{name}.pth of this project or the release')


def _same_kind(loaded, own):
    """Whether load_state_dict's copy of loaded into own keeps its values: floats of any
    width into floats (a --G_fp16 G loads into a float32 one), other dtypes only into their
    own (bool, int or complex weights would be cast silently into other numbers)."""
    if loaded.is_floating_point() and own.is_floating_point():
        return True
    return loaded.dtype == own.dtype


def check_shapes(module, loaded, path, strict=True):
    """One clear error when a checkpoint does not fit the model built from the flags. Not
    strict (sample.py's, as the release's), buffers may be missing or extra; a parameter
    never may (it would keep its random start, silently)."""
    own = module.state_dict()
    params = {name for name, _ in module.named_parameters()}
    missing = [k for k in own if k not in loaded and (strict or k in params)]
    unexpected = [k for k in loaded if k not in own] if strict else []
    wrong = [f'{k} {tuple(loaded[k].shape)} vs {tuple(own[k].shape)}'
             for k in own if k in loaded and loaded[k].shape != own[k].shape]
    kinds = [f'{k} {loaded[k].dtype} vs {own[k].dtype}'
             for k in own if k in loaded and not _same_kind(loaded[k], own[k])]
    problems = (['shape mismatch (checkpoint vs config): ' + '; '.join(wrong[:3])] if wrong
                else [])
    problems += ['dtype mismatch: ' + '; '.join(kinds[:3])] if kinds else []
    problems += ['missing keys: ' + ', '.join(missing[:3])] if missing else []
    problems += ['unexpected keys: ' + ', '.join(unexpected[:3])] if unexpected else []
    if problems:
        raise ConfigError(f"{path} does not match the model built from these flags "
                          f"({' | '.join(problems)}); pass the flags the checkpoint was trained "
                          f'with')


def mismatched_companion(folder, saved, loading=()):
    """The first file that a state_dict's 'files' record (sizes and sha256 of its set's other
    files, written before it) does not match, or of the files about to be loaded (loading:
    file names) the first it does not list, with why; None when all match or when the
    state_dict has no record (the release's sets)."""
    record = saved.get('files') if isinstance(saved, dict) else None
    if not isinstance(record, dict):
        return None
    unlisted = [name for name in loading if name not in record]
    if unlisted:
        return unlisted[0], 'not in the record of the files state_dict.pth was saved with'
    for name, want in record.items():
        try:
            path = os.path.join(folder, check_name(name, 'file'))
        except FileError:
            return ascii(name), 'its name in the record of state_dict.pth is not a file name'
        if not isinstance(want, dict):
            return name, 'its record in state_dict.pth is damaged'
        if not os.path.isfile(path):
            return name, 'missing'
        if os.path.getsize(path) != want.get('size'):
            return name, f"{os.path.getsize(path)} bytes, not {want.get('size')}"
        if file_digest(path)['sha256'] != want.get('sha256'):
            return name, 'sha256 differs'
    return None


def _set_is_intact(folder, suffix):
    """Whether the set with suffix in folder has a loadable state_dict whose record (if any)
    matches its companion files."""
    name = '_'.join(item for item in ['state_dict', suffix] if item) + '.pth'
    try:
        saved = torch_load(os.path.join(folder, name))
    except ConfigError:
        return False
    return isinstance(saved, dict) and mismatched_companion(folder, saved) is None


def complete_sets(folder, names, intact=False):
    """The suffixes ('' for the latest, 'copy0', 'best1', ...) of every set in folder that
    has a file for each of names (and, with intact, whose files match its state_dict's
    record)."""
    found = {}
    names_re = '|'.join(CHECKPOINT_FILES)
    pattern = re.compile(
        rf'^({names_re})(?:_(copy\d+|best\d+|{CANDIDATE_SET}|{HEALTHY_SET}))?\.pth$')
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        m = pattern.match(entry)
        if m:
            found.setdefault(m[2] or '', set()).add(m[1])
    sets = sorted(s for s, have in found.items() if set(names) <= have)
    return [s for s in sets if _set_is_intact(folder, s)] if intact else sets


def sets_hint(folder, names, refused=None):
    """'; intact sets there: ...' naming the sets of folder that load (not the one being
    refused: suffix refused), or advice to train."""
    sets = [s for s in complete_sets(folder, names, intact=True) if s != refused]
    listed = ', '.join(f"'{s}'" if s else "'' (the latest)" for s in sets)
    example = sets[-1] if sets and sets[-1] else "''"
    return (f'; complete sets there: {listed} (pass --load_weights SUFFIX, e.g. '
            f'--load_weights {example})' if sets else
            '; train first, or pass --weights_root/--experiment_name/--load_weights naming '
            'an existing one')


def load_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None, G_ema=None,
                 strict=True, load_optim=True, notices=True):
    """Load what save_weights wrote (or the release wrote) into the given modules and dict.

    state_dict is updated in place except its 'config', which stays the current run's; an 'rng'
    entry comes back if the checkpoint has one (the release's do not). Returns the config the
    checkpoint was saved with (None if it has none). Every file is read and checked before
    anything changes, so a bad file leaves the run untouched.
    """
    path = functools.partial(checkpoint_path, weights_root, experiment_name,
                             name_suffix=name_suffix)
    folder = os.path.dirname(path('G'))
    needed = [name for name, net in [('G', G), ('D', D), ('G_ema', G_ema)] if net is not None]
    if load_optim:
        needed += [name + '_optim' for name in needed if name != 'G_ema']
    needed.append('state_dict')
    # What a refusal suggests instead: the other sets of the folder that load.
    hint = functools.partial(sets_hint, folder, needed, name_suffix or '')
    missing = [name for name in needed if not os.path.isfile(path(name))]
    if missing:
        files = ', '.join(os.path.basename(path(n)) for n in missing)
        which = f' (--load_weights {name_suffix})' if name_suffix else ''
        what = 'no checkpoint' if len(missing) == len(needed) else 'an incomplete checkpoint'
        raise CheckpointError(f'{what} at {folder}{which}: missing {files}'
                              f'{hint()}')
    loaded = {'state_dict': torch_load(path('state_dict'))}
    check_kind(loaded['state_dict'], path('state_dict'), 'state_dict')
    check_training_state(loaded['state_dict'], path('state_dict'))
    if 'config' in loaded['state_dict']:
        check_types(loaded['state_dict']['config'], path('state_dict'))
    # Checked before any other file is read: a save interrupted between its renames leaves
    # new files beside an old state_dict.pth, whose record then no longer matches them.
    bad = mismatched_companion(folder, loaded['state_dict'],
                               [os.path.basename(path(name)) for name in needed[:-1]])
    if bad:
        which = f' (--load_weights {name_suffix})' if name_suffix else ''
        raise CheckpointError(f'mixed checkpoint set{which}: {os.path.join(folder, bad[0])} '
                              f'({bad[1]}) is '
                              f'not the file {os.path.basename(path("state_dict"))} was saved '
                              f'with (a save was interrupted){hint()}')
    for name in needed[:-1]:
        loaded[name] = torch_load(path(name))
        check_kind(loaded[name], path(name), name)
    for name, net in [('G', G), ('D', D), ('G_ema', G_ema)]:
        if net is not None:
            check_shapes(net, loaded[name], path(name), strict)
            if name + '_optim' in loaded:
                check_optimizer_state(net.optim, loaded[name + '_optim'], path(name + '_optim'))
                check_settings_agree(loaded[name + '_optim'], loaded['state_dict'], name,
                                     path(name + '_optim'))
    # save_weights never writes NaN or Inf, so a set holding them was damaged after saving.
    # Checked, once their structure is, as the nets will hold them: float64 1e300 is finite,
    # and Inf in float32.
    nets = {'G': G, 'D': D, 'G_ema': G_ema}
    bad = first_nonfinite({name: in_dtypes_of(nets[name.replace('_optim', '')], loaded[name])
                           for name in needed[:-1]})
    if bad is not None:
        raise CheckpointError(f"{path(bad.split('.')[0])}: {bad} holds NaN or Inf (in the "
                              f"model's dtype), which no checkpoint of this project is saved "
                              f'with; the file is damaged{hint()}')
    # A variance below 0 is no batch norm's: its square root is NaN in every image.
    for name in needed[:-1]:
        for key, value in loaded[name].items():
            if (key.endswith(('running_var', 'stored_var')) and torch.is_tensor(value)
                    and value.is_floating_point() and value.numel() and value.min() < 0):
                raise CheckpointError(f'{path(name)}: {key} holds a negative variance, which '
                                      f'no batch norm keeps; the file is damaged{hint()}')
    for name, net in [('G', G), ('D', D), ('G_ema', G_ema)]:
        if net is not None:
            net.load_state_dict(loaded[name], strict=strict)
            if name + '_optim' in loaded:
                net.optim.load_state_dict(loaded[name + '_optim'])
    saved = loaded['state_dict']
    asked = asked_settings(saved, saved.get('config'))
    if load_optim:
        override_optimizer_settings(G, D, state_dict.get('config'), asked, notices)
    for key, value in saved.items():
        if key not in ('config', 'files'):
            state_dict[key] = value
    state_dict['launch_optim'] = asked
    return saved.get('config')


# (flag, optimizer, setting, index within the setting) for each setting a relaunch may change.
OPTIM_FLAGS = [('G_lr', 'G', 'lr', None), ('G_B1', 'G', 'betas', 0), ('G_B2', 'G', 'betas', 1),
               ('D_lr', 'D', 'lr', None), ('D_B1', 'D', 'betas', 0), ('D_B2', 'D', 'betas', 1),
               ('adam_eps', 'G', 'eps', None), ('adam_eps', 'D', 'eps', None)]


def optimizer_settings(optim):
    """An optimizer's effective lr, betas and eps (its first param group's), as plain data."""
    group = optim.param_groups[0]
    return {'lr': group['lr'], 'betas': tuple(group['betas']), 'eps': group['eps']}


def set_optimizer_settings(optim, lr=None, betas=None, eps=None):
    """Set lr, betas and eps (those not None) in every param group; the moments are kept."""
    for group in optim.param_groups:
        for key, value in [('lr', lr), ('betas', betas), ('eps', eps)]:
            if value is not None:
                group[key] = tuple(value) if key == 'betas' else value


# What a launch can give each of OPTIM_FLAGS (flags.check_flags' domains).
LAUNCH_DOMAINS = {'G_lr': lambda v: v >= 0, 'D_lr': lambda v: v >= 0,
                  'G_B1': lambda v: 0 <= v < 1, 'G_B2': lambda v: 0 <= v < 1,
                  'D_B1': lambda v: 0 <= v < 1, 'D_B2': lambda v: 0 <= v < 1,
                  'adam_eps': lambda v: v > 0}

# The most distinct values state_dict.pth records for one flag (a run is resumed a few times).
MAX_ASKED = 1000


def asked_settings(state, config):
    """The values each of OPTIM_FLAGS was given by the launches of a run (a launch and its
    resumes), with config's added: state's launch_optim, or for a set saved without one (the
    release's) the config it was saved with."""
    asked = state.get('launch_optim')
    if not isinstance(asked, dict):
        saved_config = state.get('config')
        asked = {flag: [saved_config[flag]] for flag, *_ in OPTIM_FLAGS
                 if isinstance(saved_config, dict) and flag in saved_config}
    asked = {flag: list(values) for flag, values in asked.items()}
    for flag, *_ in OPTIM_FLAGS:
        if isinstance(config, dict) and flag in config:
            values = asked.setdefault(flag, [])
            if config[flag] not in values:
                values[:] = (values + [config[flag]])[-MAX_ASKED:]
    return asked


def override_optimizer_settings(G, D, config, asked, notices=True):
    """Apply the flags whose value no launch of the checkpointed run gave (asked: the
    values asked_settings records) to the resumed optimizers, with a notice on rank 0 for each.

    A flag at a value some launch of the run gave keeps the checkpoint's effective setting, so
    relaunching the original command, or an earlier resume's, does not undo a change made
    since (a rate lowered at a resume, by the collapse watch); a notice names what is kept.
    """
    if not isinstance(config, dict):
        return
    notices = notices and get_rank() == 0
    optims = {'G': G.optim if G is not None else None, 'D': D.optim if D is not None else None}
    for flag, which, key, index in OPTIM_FLAGS:
        optim = optims[which]
        if optim is None or flag not in config or flag not in asked:
            continue
        current = optimizer_settings(optim)
        old = current[key] if index is None else current[key][index]
        if config[flag] in asked[flag]:
            if config[flag] != old and notices and (flag != 'adam_eps' or which == 'G'):
                print(f"note: --{flag} {config[flag]} was given at an earlier launch of this "
                      f"run; the checkpoint's {old}, set since, is kept (give another value "
                      f'to change it)')
            continue
        if key == 'betas':
            betas = list(current['betas'])
            betas[index] = config[flag]
            set_optimizer_settings(optim, betas=betas)
        else:
            set_optimizer_settings(optim, **{key: config[flag]})
        if notices and (flag != 'adam_eps' or which == 'G'):
            print(f"--{flag} {config[flag]} overrides the checkpoint's {old}")


def check_finite_step(metrics, nets, itr, weights_root, experiment_name, scaled=False):
    """Stop the run when a step's losses are NaN or Inf, unless GradScaler skipped the step
    (scaled: fp16, whose non-finite losses it skips, and the weights are still finite).
    Returns whether the losses are finite: a skipped step's are neither shown nor logged.

    The losses are already on the host, so the common case costs nothing; only a non-finite
    loss pays for a look at the weights.
    """
    if all(math.isfinite(v) for v in metrics.values()):
        return True
    bad = first_nonfinite({name: net.state_dict() for name, net in nets.items()})
    if bad is None and scaled:
        return False
    losses = ', '.join(f'{k} {v:g}' for k, v in metrics.items())
    # Without a GradScaler the step was taken: finite weights now are no healthy run.
    what = f'{bad} is NaN or Inf' if bad is not None else 'the step was taken with them'
    if os.path.isfile(checkpoint_path(weights_root, experiment_name, 'state_dict')):
        advice = (f'the last checkpoint, {last_checkpoint(weights_root, experiment_name)}, '
                  f'is left as it was: resume from it with lower learning rates (--resume '
                  f'--experiment_name {experiment_name} --G_lr ... --D_lr ...)')
    else:
        advice = 'no checkpoint was saved before it: start again with lower learning rates'
    raise StopRun(f'training diverged at iteration {itr} ({losses}; {what}); {advice}')
