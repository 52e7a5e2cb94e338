"""Files: the mechanisms every reader and writer of this project goes through.

- atomic writes (a kill at any moment leaves the old file or the new one) and the clean-up of
  what killed writers left behind;
- check_name, the one containment check for a path component taken from a flag or a file;
- open_regular and read_bounded, the one way to open and read a file whose content is not
  trusted: regular files only, and every declared size checked against the file's length
  and the memory available (check_declared) before anything is allocated;
- the memory probe behind --load_in_mem.
"""
import contextlib
import errno
import hashlib
import io
import math
import os
import re
import shutil
import socket
import stat
import sys
import zipfile
import zlib

import numpy as np

from flags import ConfigError, one_line

# torch, PIL and distributed are imported where they are used, so that the readers of untrusted
# files (tf_bundle among them) need only numpy.


class FileError(ConfigError):
    """A file or name that cannot be used as it is; the message names it and says what to do."""

# ----------------------------------------------------------------------------
# Atomic writes.

_HOST = re.sub(r'[^A-Za-z0-9.]', '_', socket.gethostname()) or 'host'
# A writer's temporary file: '<target>.tmp-<host>-<pid>', beside its target.
_TEMP = re.compile(r'^(?P<target>.+)\.tmp-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)$')


def is_temp(name):
    """Whether a file name is a writer's temporary file (temp_path's form)."""
    return _TEMP.match(name) is not None


def temp_path(path):
    """The temporary name this process writes path under."""
    return f'{path}.tmp-{_HOST}-{os.getpid()}'


def _running(pid):
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(folder, target=None, recursive=False):
    """Delete temporary files (and scratch folders) that killed writers on this host left in
    folder (for target only, if given). One is stale when its name matches the temp pattern,
    it names this host, and its pid runs no process here other than this one."""
    if not os.path.isdir(folder):
        return
    walk = os.walk(folder) if recursive else [(folder, os.listdir(folder), [])]
    for root, dirs, files in walk:
        for name in dirs + files:
            m = _TEMP.match(name)
            if (m is None or m['host'] != _HOST
                    or (target is not None and m['target'] != os.path.basename(target))):
                continue
            pid = int(m['pid'])
            if pid == os.getpid() or not _running(pid):
                stale = os.path.join(root, name)
                if os.path.isdir(stale) and not os.path.islink(stale):
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(stale)


def check_writable(folder, what):
    """Raise ConfigError, saying what cannot be written where, unless folder exists and is
    writable or can be created; creates nothing."""
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        if os.path.islink(parent):
            # makedirs cannot create what a dangling link names ('File exists'), nor follow
            # links that lead back to themselves.
            try:
                os.stat(parent)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ConfigError(f'{what} {folder} cannot be created: {parent} is a '
                                      f'symbolic link in a loop of links, which leads to no '
                                      f'folder; replace it by a folder or pass another') from None
            raise ConfigError(f'{what} {folder} cannot be created: {parent} is a symbolic '
                              f'link to {os.readlink(parent)}, which does not exist; create '
                              f'that folder or pass another')
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        reason = f'{parent} is a file'
    elif not os.access(parent, os.W_OK | os.X_OK):
        reason = f'{parent} is not writable'
    else:
        return
    raise ConfigError(f'{what} {folder} cannot be created or written ({reason}); pass a '
                      f'writable folder')


# What a writer raises when the disk is full or a size limit is reached: an OSError with its
# errno, or the RuntimeError torch.save and h5py raise around one, whose text says it.
FULL_ERRNOS = {errno.ENOSPC: 'the disk is full', errno.EFBIG: 'a file size limit is reached',
               errno.EDQUOT: 'the disk quota is reached'}


def write_failure(error):
    """Why a write failed, when it is a full disk or a size limit (FULL_ERRNOS), else None."""
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return FULL_ERRNOS[error.errno]
    text = str(error)
    for number, reason in FULL_ERRNOS.items():
        if os.strerror(number) in text or f'errno = {number},' in text:
            return reason
    return None


@contextlib.contextmanager
def full_disk_named(path):
    """Turn a write that fails on a full disk or a size limit, inside the block, into one
    line naming path (FileError): the OSError says only 'File too large', torch.save and h5py
    a RuntimeError around it."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        reason = write_failure(e)
        if reason is None:
            raise
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            reason += f' ({os.strerror(e.errno)})'
        raise FileError(f'cannot write {path}: {reason}; nothing was replaced: free space '
                        f'there (or raise the limit) and run again') from None


def check_target(path, what='output'):
    """Refuse (FileError) a path no file of this project may replace: a folder, a device, a
    FIFO or a socket there (the rename would put a file in place of /dev/null or of a named
    pipe). A regular file or a symbolic link (which the rename replaces, not what it names) may
    be replaced. Every atomic write checks its target here; entry points check theirs at
    start-up too, before any work."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise FileError(f'cannot write {path}: {e.strerror}; give another path') from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        kind = ('a folder' if stat.S_ISDIR(mode) else 'a FIFO' if stat.S_ISFIFO(mode)
                else 'a socket' if stat.S_ISSOCK(mode) else 'a device')
        raise FileError(f'cannot write {what} {path}: it is {kind}, which this project never '
                        f'replaces with a file; remove it or give another path')


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write path's content to; once the block ends it is synced
    and renamed over path, so a kill at any moment leaves the old file or the new one. On
    any exception (Ctrl-C and SIGTERM included) the temporary file is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    check_target(path)
    remove_stale_temps(folder, target=path)
    tmp = temp_path(path)
    # Created here, exclusively and without following links, so a planted file or symlink of
    # this name cannot redirect the write; writers then open this regular file.
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    except (NotADirectoryError, FileNotFoundError, PermissionError) as e:
        # Named by the file asked for: the temporary name means nothing to the user.
        raise FileError(f'cannot write {path}: {e.strerror} ({folder} must be a folder this '
                        f'process may write in); give another path') from None
    try:
        with full_disk_named(path):
            yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def scratch_folder(name):
    """A folder for a writer's intermediate files, named like a temporary file (so a killed
    writer's is cleaned up) and removed when the block ends."""
    remove_stale_temps(os.path.dirname(os.path.abspath(name)), target=name)
    folder = temp_path(name)
    os.makedirs(folder)
    try:
        with full_disk_named(name):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path, mode='wb'):
    """open() for writing through atomic_path; the file object hides its descriptor (below)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield _WritesOnly(f)


class _WritesOnly:
    """A file object without fileno(): writers that find one write to the descriptor from C
    and may ignore a short write (PIL's encoders do: past `ulimit -f` a sheet was cut at the
    limit and replaced the good one, silently), so every byte goes through Python's file,
    which retries a short write and raises on a failed one."""

    def __init__(self, f):
        self._f = f

    def fileno(self):
        raise io.UnsupportedOperation('fileno')

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_save_all(items):
    """torch.save every (obj, path) to its temporary file, then rename them all in a row, so
    the files of one checkpoint change together; if any write fails (a full disk), no file
    changes and no temporary file is left."""
    import torch
    with contextlib.ExitStack() as stack:
        # Entered in reverse, so the renames on exit run in the order given.
        tmps = {path: stack.enter_context(atomic_path(path)) for _, path in reversed(items)}
        for obj, path in items:
            torch.save(obj, tmps[path])


def atomic_link(source, path):
    """Make path a hard link to the file source (a copy where the file system has none),
    through atomic_path: a kill leaves path as it was or as source. Every writer replaces files
    by renaming, so a link keeps the content it was made with."""
    with atomic_path(path) as tmp:
        os.remove(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
            shutil.copyfile(source, tmp)


def file_digest(path):
    """{'size', 'sha256'} of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    size = 0
    with open(path, 'rb') as f:
        for piece in iter(lambda: f.read(1 << 20), b''):
            h.update(piece)
            size += len(piece)
    return {'size': size, 'sha256': h.hexdigest()}


def atomic_save_set(items, key='files'):
    """atomic_save_all for a set whose last item is a dict that vouches for the others: it gets
    obj[key] = {companion file name: file_digest}, hashed from the temporary files, and is
    renamed last, so a crash between the renames leaves a set a loader can tell is mixed."""
    import torch
    *companions, (last, last_path) = items
    with contextlib.ExitStack() as stack:
        tmps = {path: stack.enter_context(atomic_path(path)) for _, path in reversed(items)}
        digests = {}
        for obj, path in companions:
            torch.save(obj, tmps[path])
            digests[os.path.basename(path)] = file_digest(tmps[path])
        torch.save({**last, key: digests}, tmps[last_path])


# ----------------------------------------------------------------------------
# Memory for --load_in_mem: said up front, refused when the machine lacks it.

# Kept free for the rest of the training process (models, optimizers, loader buffers).
MEM_HEADROOM = 2 << 30
# Python objects around each item of an in-memory image folder (tensor, storage, list slot).
ITEM_OVERHEAD = 512


def _read_number(path, key=None):
    """An integer from a /proc or cgroup file: the whole file, or the line starting with key."""
    with open(path) as f:
        if key is None:
            return int(f.read().split()[0])
        for line in f:
            fields = line.split()
            if fields and fields[0] == key:
                return int(fields[1])
    raise ValueError(f'no {key} in {path}')


def _cgroup_room(cgroup_root, self_cgroup):
    """Bytes left under the tightest memory limit of this process's cgroups (v1 or v2), with
    inactive file cache counted as free; None when no limit applies or none can be read.

    Containers and schedulers (Docker, Kubernetes, Slurm) set these limits, and their OOM
    killer enforces them whatever /proc/meminfo says about the host.
    """
    try:
        with open(self_cgroup) as f:
            lines = [line.rstrip('\n').split(':', 2) for line in f]
    except OSError:
        return None
    room = None
    for _, controllers, path in (line for line in lines if len(line) == 3):
        if controllers == '':  # v2
            top, files = cgroup_root, ('memory.max', 'memory.current', 'inactive_file')
        elif 'memory' in controllers.split(','):  # v1
            top = os.path.join(cgroup_root, 'memory')
            files = ('memory.limit_in_bytes', 'memory.usage_in_bytes', 'total_inactive_file')
        else:
            continue
        # A limit on any ancestor applies; inside a container the mount root is its own cgroup.
        parts = [p for p in path.split('/') if p]
        for depth in range(len(parts), -1, -1):
            folder = os.path.join(top, *parts[:depth])
            try:
                with open(os.path.join(folder, files[0])) as f:
                    limit = f.read().strip()
                if limit == 'max' or int(limit) >= 1 << 60:
                    continue
                used = (_read_number(os.path.join(folder, files[1]))
                        - _read_number(os.path.join(folder, 'memory.stat'), files[2]))
            except (OSError, ValueError):
                continue
            left = int(limit) - max(used, 0)
            room = left if room is None else min(room, left)
    return room


def _address_space_room(status='/proc/self/status'):
    """Bytes this process may still map under its address-space limit (ulimit -v,
    RLIMIT_AS), or None when it has none or it cannot be read."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        return max(limit - _read_number(status, 'VmSize:') * 1024, 0)
    except (ImportError, OSError, ValueError):
        return None


def available_memory(meminfo='/proc/meminfo', cgroup_root='/sys/fs/cgroup',
                     self_cgroup='/proc/self/cgroup'):
    """Bytes this process can still take: MemAvailable (else free pages), capped by its
    cgroups' memory limits and its address-space limit; None when unknown. The paths are
    parameters for tests."""
    try:
        avail = _read_number(meminfo, 'MemAvailable:') * 1024
    except (OSError, ValueError):
        try:
            avail = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (OSError, ValueError, AttributeError):
            avail = None
    for room in (_cgroup_room(cgroup_root, self_cgroup), _address_space_room()):
        if room is not None:
            avail = room if avail is None else min(avail, room)
    return avail


def _gb(nbytes):
    """Bytes as GB with one decimal (two below 1 GB, kB below 10 MB; a size no machine has
    as its order of magnitude: a count of 10^320 bytes is past float range)."""
    if 1e15 <= nbytes != float('inf'):
        return f'about 10^{len(str(int(nbytes))) - 10} GB'
    gb = nbytes / 1e9
    if gb < 0.01:
        return f'{nbytes / 1e3:.0f} kB'
    return f'{gb:.1f} GB' if gb >= 1 else f'{gb:.2f} GB'


def check_fits(nbytes, what, advice):
    """Refuse (ConfigError, one line) what flags ask to hold at once (a model of their widths,
    a batch of their size) when it alone exceeds the memory available: found before anything
    is allocated rather than by the allocator, after logs were written."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ConfigError(f'{what} take {_gb(nbytes)}, more than the {_gb(avail)} of memory '
                          f'available; {advice}')


def check_disk(nbytes, folder, what, advice, largest=None):
    """Refuse (ConfigError, one line) writing nbytes into folder (which may not exist yet: its
    disk is its nearest existing parent's) when its disk has less free space, or when the
    largest file (default: all nbytes in one) is past the process's file size limit."""
    largest = nbytes if largest is None else largest
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if nbytes > free:
        raise ConfigError(f'{what} need {_gb(nbytes)} free in {folder}, which has {_gb(free)}; '
                          f'{advice}')
    # The process's file size limit (ulimit -f): a file past it fails in its last writes.
    import resource
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and largest > limit:
        raise ConfigError(f'{what} need files of {_gb(largest)}, past this process\'s file '
                          f'size limit of {_gb(limit)} (ulimit -f); raise it, or {advice}')


def size_limit():
    """', under a file size limit of N (ulimit -f)' when this process has one, else '': a write
    past it fails with EFBIG, which torch.save's own message does not say."""
    import resource
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return '' if limit == resource.RLIM_INFINITY else (f', under a file size limit of '
                                                       f'{_gb(limit)} (ulimit -f)')


def check_memory(nbytes, what):
    """Say how much memory --load_in_mem takes, and refuse with one line when it is not there.

    Every process of this machine under torchrun (LOCAL_WORLD_SIZE) loads its own copy.
    """
    from distributed import get_rank
    procs = os.environ.get('LOCAL_WORLD_SIZE', '1')
    procs = int(procs) if procs.strip().isdigit() and int(procs) > 0 else 1
    copies = f' x {procs} processes' if procs > 1 else ''
    avail = available_memory()
    have = 'unknown' if avail is None else _gb(avail)
    if get_rank() == 0:
        print(f'--load_in_mem: {what} take {_gb(nbytes)}{copies}; {have} available')
    if avail is not None and nbytes * procs + MEM_HEADROOM > avail:
        raise FileError(
            f'--load_in_mem needs {_gb(nbytes)}{copies} for {what}, plus '
            f'{_gb(MEM_HEADROOM)} to train, but only {have} is available; free memory, use '
            f'a machine with more, or drop --load_in_mem (an HDF5 file written by make_hdf5.py '
            f'reads fast enough from disk)')


def item_nbytes(item):
    """Bytes one in-memory item holds: a tensor's or array's data, a PIL image's pixels."""
    import torch
    from PIL import Image
    if isinstance(item, torch.Tensor):
        nbytes = item.element_size() * item.nelement()
    elif isinstance(item, np.ndarray):
        nbytes = item.nbytes
    elif isinstance(item, Image.Image):
        nbytes = item.width * item.height * len(item.getbands())
    else:
        nbytes = sys.getsizeof(item)
    return nbytes + ITEM_OVERHEAD


# ----------------------------------------------------------------------------
# Containment: one check for every path component built from a flag or a file's content.

def check_name(name, what):
    """Return name if it is one plain path component; else raise FileError naming what.

    Refused: empty, '.', '..', any separator (/ or the platform's), NUL or other control
    characters. Every folder or file name this project builds from a flag (experiment names,
    --load_weights suffixes), from a stored config or from a file's content goes through here
    before anything is created, so no such name can reach outside the root it is joined to.
    """
    bad = None
    if not isinstance(name, str):
        bad = f'is a {type(name).__name__}, not a name'
    elif name in ('', '.', '..'):
        bad = 'is not a name' if name == '' else f'is {name!r}'
    elif '/' in name or (os.sep in name) or (os.altsep and os.altsep in name):
        bad = 'holds a path separator'
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        bad = 'holds a control character'
    if bad is not None:
        raise FileError(f'{what} {name!r} {bad}; give one plain name (no "/", "..", or '
                        f'control characters)')
    return name


def _link_refusal(path):
    """The one line refusing a symbolic link where this project writes a folder of its own."""
    return FileError(f'{path} is a symbolic link (to {os.readlink(path)}); this project writes '
                     f'only inside the roots given, so it does not write through links below '
                     f'them: replace the link by a folder, or pass the folder it names as the '
                     f'root')


def own_folder(root, *names, deep=False):
    """root/name/..., created, every name one plain component (check_name) and every folder
    below root a real folder: a symbolic link planted there, which would carry the writes to
    a place outside the roots, is refused with one line (FileError). root itself is the
    user's to choose and may be a link. With deep, the last folder, if it exists, must hold no
    linked folder at any depth either (checked once at start-up, before anything is written).
    Every folder this project writes into below a root is made here."""
    os.makedirs(root, exist_ok=True)
    path = root
    for name in names:
        path = os.path.join(path, check_name(str(name), 'folder name'))
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise _link_refusal(path)
        if not stat.S_ISDIR(mode):
            raise FileError(f'{path} is a file where a folder is written; move it away')
    for folder, dirs, _ in os.walk(path) if deep and names else ():
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                raise _link_refusal(os.path.join(folder, name))
    return path


# ----------------------------------------------------------------------------
# Reading untrusted files: regular files only, every declared size bounded.

def open_append(path, what='log'):
    """open(path, 'a') for a log this process appends to, created if missing; a symlink or a
    hard link in its place (either would carry the lines to a file outside the roots), a FIFO
    or a device is refused with one line (FileError). The checks are made on the open
    descriptor."""
    return _open_append(path, what, create=True)


def check_appendable(path, what='log'):
    """Refuse (FileError), as open_append would, a file at path that no line may be appended
    to; nothing is created or written. A resume runs it over every log it will append to
    before its first step, so a planted link or FIFO stops the run before anything is written."""
    # Only what is there: a name that cannot exist (past the OS's length) hides nothing.
    if os.path.lexists(path):
        try:
            _open_append(path, what, create=False).close()
        except FileNotFoundError:  # gone since
            pass


def _open_append(path, what, create):
    """open_append's one mechanism: the file opened for appending with the checks made."""
    flags = (os.O_WRONLY | os.O_APPEND | getattr(os, 'O_NOFOLLOW', 0)
             | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_CLOEXEC', 0))
    try:
        fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o666)
    except OSError as e:
        if e.errno == errno.ENOENT and not create:
            raise
        if e.errno == errno.ELOOP:
            raise FileError(f'{what} {path} is a symbolic link; logs are written only to '
                            f'files of their own: remove the link') from None
        if e.errno == errno.ENXIO:  # a FIFO nothing reads, opened without blocking
            raise FileError(f'{what} {path} is not a regular file (a FIFO); remove it') from None
        raise FileError(f'{what} {path} cannot be opened for appending ({e.strerror})') from None
    try:
        links = os.fstat(fd).st_nlink
    except OSError:
        links = 1
    if links > 1:
        # Appending writes the one inode every name shares, which may lie outside the roots.
        os.close(fd)
        raise FileError(f'{what} {path} is a hard link ({links} names share the file): lines '
                        f'appended there would change the others too; remove it, or copy it '
                        f'(cp) to give it a file of its own')
    return _regular(fd, 'a', f'{what} {path} is not a regular file (a FIFO or device); remove '
                             f'it')


def _regular(fd, mode, refusal):
    """fd (opened without blocking) as a file object in mode once fstat says it is a regular
    file, blocking again; else FileError(refusal). fd is closed on any failure."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileError(refusal)
        if hasattr(os, 'set_blocking'):
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


_HELD = []  # the locks hold_lock gave out, for release_locks


def hold_lock(path, what):
    """An exclusive lock on path (created), held while the returned file stays open: a second
    process asking for it gets one line (FileError) instead of writing the same files at once."""
    import fcntl
    f = open_append(path, 'lock file')
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise FileError(f'{what} is in use by another process (it holds {path}); wait for it '
                        f'to finish, or use another name') from None
    _HELD.append(f)
    return f


def release_locks():
    """Release every lock hold_lock gave out in this process (its runs have ended, also one
    that failed, whose frames a kept traceback may hold)."""
    while _HELD:
        _HELD.pop().close()


def open_regular(path, what='file', mode='rb'):
    """open() path for reading, refusing anything but a regular file (FIFOs, devices, sockets,
    folders) with one line; symlinks are followed to what they name, which must be regular.
    The check is made on the open descriptor, so the file cannot be swapped in between."""
    flags = os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_CLOEXEC', 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileError(f'{what} {path} does not exist; check the path') from None
    except IsADirectoryError:
        raise FileError(f'{what} {path} is a folder, not a file') from None
    except OSError as e:
        raise FileError(f'{what} {path} cannot be opened ({e.strerror})') from None
    return _regular(fd, mode, f'{what} {path} is not a regular file (a FIFO, device or '
                              f'folder); give a file')


def file_size(f):
    """The length in bytes of an open regular file."""
    return os.fstat(f.fileno()).st_size


def check_declared(nbytes, what, path, limit=None):
    """Refuse (FileError) a size a file declares that exceeds limit (the file's length, when
    what is declared must be stored in it) or the memory available; returns nbytes as int.
    Every size, shape or count read from a file passes through here before any allocation."""
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < 0:
        raise FileError(f'{path}: {what} declares a size of {nbytes!r}; the file is damaged '
                        f'or not what it claims to be')
    nbytes = int(nbytes)
    if limit is not None and nbytes > limit:
        raise FileError(f'{path}: {what} declares {nbytes} bytes but the file holds only '
                        f'{limit}; the file is truncated or damaged')
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise FileError(f'{path}: {what} declares {_gb(nbytes)}, more than the {_gb(avail)} '
                        f'of memory available; the file is damaged or too large for this '
                        f'machine')
    return nbytes


# numpy's and PyTorch's common limit on a tensor's dimensions.
MAX_DIMS = 32


def declared_nbytes(shape, itemsize, what, path):
    """Bytes of an array of this declared shape and item size, refusing a shape that is not a
    sequence of non-negative ints; no overflow (Python ints)."""
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        raise FileError(f'{path}: {what} has shape {shape!r}; the file is damaged') from None
    if len(dims) > MAX_DIMS:
        raise FileError(f'{path}: {what} declares {len(dims)} dimensions (a tensor has at most '
                        f'{MAX_DIMS}); the file is damaged')
    if any(d < 0 for d in dims) or any(not isinstance(d, (int, np.integer)) for d in shape):
        raise FileError(f'{path}: {what} has shape {tuple(shape)!r}; the file is damaged')
    n = int(itemsize)
    for d in dims:
        n *= d
    return n


def read_bounded(f, nbytes, what, path):
    """Read exactly nbytes from the open file f after check_declared against what is left of
    the file; a short read is a FileError, never a partial result."""
    left = file_size(f) - f.tell()
    nbytes = check_declared(nbytes, what, path, limit=max(left, 0))
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise FileError(f'{path}: {what} ends early; the file is truncated')
    return data


class BoundedReader:
    """A file's read() that never asks for more bytes than are left: a declared length of
    2^60 is then a short read, not an allocation."""

    def __init__(self, file, left):
        self.file, self.left = file, left

    def read(self, n=-1):
        data = self.file.read(self.left if n is None or n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def readline(self):
        line = self.file.readline(self.left)
        self.left -= len(line)
        return line


def read_lines(path, what='log', max_line=1 << 20):
    """Yield the lines of a regular text file, refusing (FileError) a line longer than
    max_line bytes, so a file without newlines cannot fill memory."""
    with open_regular(path, what) as f:
        for number, line in enumerate(iter(lambda: f.readline(max_line + 1), b''), 1):
            if len(line) > max_line:
                raise FileError(f'{path}: line {number} is longer than {max_line} bytes; '
                                f'not a log this project writes')
            yield line.decode('utf-8', errors='replace')


# What reading a damaged .npz raises besides FileError: zipfile's errors (a bad CRC, an
# unsupported compression or flag), zlib's, and numpy's ValueError for a bad .npy header.
def hdf5_dataset(f, name, path, advice='write the file again with make_hdf5.py'):
    """f[name] when it is stored in the open HDF5 file f itself (None when f has no name):
    a soft or external link, a dataset whose data lies in external raw files or a virtual
    dataset would make h5py open other files on read (a FIFO among them blocks it forever,
    any file of the machine would be read as pixels), so those are refused, as is a damaged
    object header (FileError ending with advice)."""
    import h5py
    try:
        link = f.get(name, getlink=True)
        if link is None:
            return None
        hard = isinstance(link, h5py.HardLink)
        obj = f[name] if hard else None
        elsewhere = isinstance(obj, h5py.Dataset) and bool(obj.external or obj.is_virtual)
    except (KeyError, RuntimeError, OSError, ValueError) as e:
        raise FileError(f"{path}: '{name}' cannot be read ({one_line(e)[:120]}); the file is "
                        f'damaged: {advice}') from None
    if not hard:
        raise FileError(f"{path}: '{name}' is a {type(link).__name__} to another place; "
                        f'datasets are read only from the file itself: {advice}')
    if elsewhere:
        raise FileError(f"{path}: '{name}' keeps its data in other files (external or "
                        f'virtual storage); datasets are read only from the file itself: '
                        f'{advice}')
    return obj


def read_hdf5(dataset, index, path, advice='write the file again with make_hdf5.py'):
    """dataset[index], a read that fails (a chunk whose checksum or filter fails, a filter
    this machine lacks) as one line naming the file and the dataset (FileError ending with
    advice), not h5py's bare message."""
    try:
        return dataset[index]
    except (OSError, RuntimeError, ValueError) as e:
        raise FileError(f"{path}: '{dataset.name.lstrip('/')}' cannot be read "
                        f'({one_line(e)[:120]}); the file is damaged: {advice}') from None


def check_hdf5_stored(dataset, path, what):
    """Refuse (FileError) an HDF5 dataset that declares more than it stores: h5py reads a
    chunk never written, or a contiguous dataset never allocated, as its fill value (black
    images, zero labels) without a word, so a file whose writing stopped early would train on
    them."""
    if not dataset.size:
        return
    if dataset.chunks:
        want = math.prod(-(-n // c) for n, c in zip(dataset.shape, dataset.chunks))
        have, unit = dataset.id.get_num_chunks(), 'chunks'
    else:
        want, unit = dataset.size * dataset.dtype.itemsize, 'bytes'
        have = dataset.id.get_storage_size()
    if have < want:
        raise FileError(f'{path}: {what} declares shape {dataset.shape} but stores only part of '
                        f'it ({have} of {want} {unit}); the file was not written to its end: '
                        f'write it again with make_hdf5.py')


NPZ_ERRORS = (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
              NotImplementedError, RuntimeError, KeyError)


def check_npz(path, what='.npz file'):
    """Refuse (FileError) an .npz whose arrays declare more bytes than their members hold or
    than memory has, reading only the zip directory and each .npy header: np.load allocates
    an array from its header's shape before reading any of its data. Returns the members'
    shapes ({'x.npy': (N, 3, H, W), ...})."""
    from numpy.lib import format as npy
    shapes = {}
    with open_regular(path, what) as f:
        length = file_size(f)
        try:
            archive = zipfile.ZipFile(f)
        except NPZ_ERRORS as e:
            raise FileError(f'{what} {path} is not an .npz file ({one_line(e)[:200]})'
                            ) from None
        with archive:
            for info in archive.infolist():
                if not info.filename.endswith('.npy'):
                    continue
                member = f'{what} member {info.filename}'
                if info.filename in shapes:
                    # np.load reads one of the two (the zip directory's last), not
                    # necessarily the one checked here.
                    raise FileError(f'{path}: {member} is stored twice; the file is crafted '
                                    f'or damaged')
                check_declared(info.file_size, member, path)
                if info.compress_type == zipfile.ZIP_STORED:
                    check_declared(info.compress_size, member, path, limit=length)
                try:
                    with archive.open(info) as g:
                        version = npy.read_magic(g)
                        if version == (1, 0):
                            shape, _, dtype = npy.read_array_header_1_0(g)
                        elif version == (2, 0):
                            shape, _, dtype = npy.read_array_header_2_0(g)
                        else:
                            raise ValueError(f'.npy format version {version} is not supported')
                        left = info.file_size - g.tell()
                except NPZ_ERRORS as e:
                    raise FileError(f'{path}: {member} is not a readable .npy array '
                                    f'({" ".join(str(e).split())[:200]})') from None
                if dtype.hasobject:  # pickled objects: np.load(allow_pickle=False) would stop
                    raise FileError(f'{path}: {member} is an array of Python objects; only '
                                    f'numeric arrays are read')
                check_declared(declared_nbytes(shape, dtype.itemsize, member, path),
                               f'the array {info.filename}', path, limit=max(left, 0))
                shapes[info.filename] = tuple(shape)
    return shapes
