"""A fork server for running many documented commands cheaply: `python X.py ...` costs an
interpreter start and the torch import (seconds each on a loaded 2-core machine) before any
work; here one server process imports them once and forks a child per command.

- `python tests/forkserver.py SOCKET MODULE...` imports the modules, listens on the Unix socket
  SOCKET and, for each request, forks a child that becomes the requested interpreter: the
  client's stdin, stdout and stderr (passed over the socket), working directory, environment
  and arguments, `sys.path[0]` the script's directory, as `python` sets it.
- `write_shim(path, socket)` writes an executable `python` (run with `-S`: no site, stdlib only,
  milliseconds to start) that sends its command line to the server, forwards SIGINT, SIGTERM
  and SIGHUP to the child and exits with the child's status. A command line other than a
  script, `-`, `-c` or `-m` runs the real interpreter.

Only stdlib at the top: the shim imports this module.
"""
import json
import os
import select
import signal
import socket
import struct
import sys

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _send(conn, data, fds=()):
    """A length-prefixed message, with file descriptors attached to its first bytes."""
    message = struct.pack('>I', len(data)) + data
    socket.send_fds(conn, [message], list(fds))


def _recv(conn, maxfds=0):
    """(message, fds) of _send; an empty message when the peer is gone."""
    chunk, fds, _, _ = socket.recv_fds(conn, 1 << 16, maxfds)
    if len(chunk) < 4:
        return b'', fds
    size = struct.unpack('>I', chunk[:4])[0]
    data = chunk[4:]
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            break
        data += more
    return data, fds


# ----------------------------------------------------------------------------
# The client: the shim's body.

def write_shim(path, sock):
    """An executable at path that runs its command line through the server at sock."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(f'#!{sys.executable} -S\n'
                f'import sys\n'
                f'sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n'
                f'import forkserver\n'
                f'forkserver.client({sock!r}, {sys.executable!r})\n')
    os.chmod(path, 0o755)


def client(sock, real_python):
    """Run sys.argv[1:] in a child of the server; exit with its status."""
    args = sys.argv[1:]
    if not args or (args[0].startswith('-') and args[0] not in ('-', '-c', '-m')):
        os.execv(real_python, [real_python] + args)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    request = {'argv': args, 'cwd': os.getcwd(), 'env': dict(os.environ),
               'executable': os.path.abspath(sys.argv[0])}
    _send(conn, json.dumps(request).encode(), [0, 1, 2])
    reply = conn.makefile('r')
    pid = int(reply.readline())
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _: os.killpg(pid, s))
    status = reply.readline()
    sys.exit(int(status) if status else 1)


# ----------------------------------------------------------------------------
# The server.

def _exit_code(error):
    """The status Python exits with for SystemExit(error.code)."""
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _become(request, fds):
    """In the forked child: take on the request's process state and run it, then exit as
    python does (SystemExit up through serve: atexit, finalizers, so that a loader's workers
    are shut down); never returns."""
    import runpy
    import traceback
    # A process group of its own: the client forwards signals to it, workers included.
    os.setpgid(0, 0)
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    for sig in FORWARDED + (signal.SIGCHLD,):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Subprocesses of the command (a benchmark's per-mode runs) come back through the shim.
    sys.executable = request['executable']
    args = request['argv']
    code = 0
    try:
        if args[0] == '-':
            sys.argv = args
            sys.path[0] = ''
            exec(compile(sys.stdin.read(), '<stdin>', 'exec'), {'__name__': '__main__'})
        elif args[0] == '-c':
            sys.argv = ['-c'] + args[2:]
            sys.path[0] = ''
            exec(compile(args[1], '<string>', 'exec'), {'__name__': '__main__'})
        elif args[0] == '-m':
            sys.argv = args[1:]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name='__main__', alter_sys=True)
        else:
            sys.argv = args
            sys.path[0] = os.path.dirname(os.path.realpath(args[0]))
            runpy.run_path(args[0], run_name='__main__')
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # what an uncaught exception does to python: traceback, status 1
        traceback.print_exc()
        code = 1
    sys.exit(code)


def serve(sock, modules):
    """Import modules, then fork a child per request on sock until SIGTERM."""
    import importlib
    for name in modules:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    listener.listen(16)
    waiting = {}  # child pid -> the connection its status goes to

    def stop(*_):
        for pid in waiting:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass  # gone already
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print('ready', flush=True)
    while True:
        readable, _, _ = select.select([listener], [], [], 0.05)
        if readable:
            conn, _ = listener.accept()
            data, fds = _recv(conn, 3)
            request = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                _become(request, fds)
            try:
                os.setpgid(pid, pid)  # as the child does: set before the client can signal it
            except OSError:
                pass  # the child did it first, or is gone
            for fd in fds:
                os.close(fd)
            conn.sendall(f'{pid}\n'.encode())
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f'{code if code >= 0 else 128 - code}\n'.encode())
                except OSError:
                    pass  # the client is gone
                conn.close()


if __name__ == '__main__':
    serve(sys.argv[1], sys.argv[2:])
