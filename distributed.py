"""Where a process runs: its device, and its place in a torchrun job (rank, world size, the
few collectives the rest of the project needs).

Everything here works without a process group, as a job of one.
"""
import datetime
import os
import socket
import time

import torch
import torch.distributed as dist

from flags import ConfigError

# How long the ranks wait for each other at start-up (torch's default for a process group);
# each wait polls the store in steps of POLL.
RENDEZVOUS_SECONDS = 1800
POLL = datetime.timedelta(seconds=1)


def pick_device(name=''):
    """torch.device from a flag value; '' or None picks CUDA when available, else CPU. Under
    torchrun a CUDA device without an index is this process's GPU, cuda:LOCAL_RANK."""
    try:
        device = torch.device(name or ('cuda' if torch.cuda.is_available() else 'cpu'))
    except RuntimeError:
        raise ConfigError(f'--device {name!r} is not a device: use cpu, cuda or cuda:N') from None
    if device.type != 'cpu':
        # The one accelerator this PyTorch build drives here, whatever its kind.
        here = (torch.accelerator.current_accelerator() if torch.accelerator.is_available()
                else None)
        if here is None or here.type != device.type:
            raise ConfigError(f"--device {name} is not on this machine (it has "
                              f"{here.type if here else 'no accelerator'}): use --device cpu or "
                              'leave --device out')
        if device.index is not None and device.index >= torch.accelerator.device_count():
            raise ConfigError(f'--device {name}: this machine has '
                              f'{torch.accelerator.device_count()} {here.type} device(s)')
    if device.type == 'cuda' and device.index is None and 'LOCAL_RANK' in os.environ:
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return device


def launch_environment():
    """(rank, world size) from torchrun's variables, checked before any rendezvous: one set
    by hand that no launcher gives (RANK 5 of 2) waited for peers that never come, past
    SIGTERM. Without WORLD_SIZE, (0, 1)."""
    def number(name, default=None):
        value = os.environ.get(name, default)
        if value is None or not value.strip().isdigit():
            raise ConfigError(f'{name}={value!r} in the environment is not a whole number >= 0 '
                              f'while WORLD_SIZE is set: launch with torchrun '
                              f'(docs/scaling.md), or unset WORLD_SIZE, RANK and LOCAL_RANK')
        return int(value)
    if 'WORLD_SIZE' not in os.environ:
        return 0, 1
    world_size = number('WORLD_SIZE')
    rank = number('RANK', '0' if world_size == 1 else None)
    local_rank = number('LOCAL_RANK', '0')
    if world_size < 1 or rank >= world_size or local_rank > rank:
        raise ConfigError(f'RANK {rank}, LOCAL_RANK {local_rank} and WORLD_SIZE {world_size} in '
                          f'the environment are no launch torchrun makes (0 <= LOCAL_RANK <= '
                          f'RANK < WORLD_SIZE): launch with torchrun (docs/scaling.md), or '
                          f'unset WORLD_SIZE, RANK and LOCAL_RANK')
    if world_size > 1:
        missing = [v for v in ('MASTER_ADDR', 'MASTER_PORT') if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"WORLD_SIZE {world_size} without {' and '.join(missing)} in "
                              f'the environment: launch with torchrun (docs/scaling.md)')
    return rank, world_size


def setup_distributed(config):
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE in the environment).

    Returns (rank, world_size, device): NCCL and one GPU per process on CUDA, Gloo on CPU.
    """
    rank, world_size = launch_environment()
    device = pick_device(config.get('device'))
    if world_size == 1:
        return 0, 1, device
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                                store=join_store(rank, world_size), rank=rank,
                                world_size=world_size)
    return rank, world_size, device


def join_store(rank, world_size):
    """The TCP store at MASTER_ADDR:MASTER_PORT once every rank has checked in. torch's own
    rendezvous waits for missing ranks inside C++, where neither SIGTERM nor Ctrl-C reaches
    Python (a rank that never came hung the run for half an hour, signals ignored); here every
    wait is a short one, so a signal ends it with its line, and a rank missing after
    RENDEZVOUS_SECONDS is one line."""
    addr, port = os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT'])
    # Under torchrun the agent serves the store; a rank started by hand serves it as rank 0.
    serve = rank == 0 and os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True'
    start = time.monotonic()
    noted = False

    def waited(what):
        nonlocal noted
        if time.monotonic() > start + RENDEZVOUS_SECONDS:
            raise ConfigError(f'rank {rank} of {world_size} waited {RENDEZVOUS_SECONDS} s for '
                              f'{what} at {addr}:{port}: start every rank (torchrun, '
                              f'docs/scaling.md), or unset WORLD_SIZE, RANK and LOCAL_RANK')
        if not noted and time.monotonic() > start + 5:
            print(f'note: rank {rank} of {world_size} is waiting for {what} at {addr}:{port}',
                  flush=True)
            noted = True
        time.sleep(0.2)

    # A client first waits for the port to accept a connection with a plain socket: torch's
    # client logs a line of its own for every attempt that times out.
    while not serve:
        try:
            socket.create_connection((addr, port), timeout=POLL.total_seconds()).close()
            break
        except OSError:
            waited('rank 0')
    try:
        store = dist.TCPStore(addr, port, world_size, serve, timeout=POLL,
                              wait_for_workers=False)
    except (RuntimeError, OSError) as err:  # DistNetworkError among them
        raise ConfigError(f'rank {rank} cannot {"serve" if serve else "reach"} the rendezvous '
                          f'at {addr}:{port} ({" ".join(str(err).split())[:120]}): pick a '
                          f'free MASTER_PORT') from None
    store.set_timeout(datetime.timedelta(seconds=RENDEZVOUS_SECONDS))
    # Keyed by torchrun's run and restart, so a restarted job counts afresh in the same store.
    key = ('biggan_joined_' + os.environ.get('TORCHELASTIC_RUN_ID', '') + '_'
           + os.environ.get('TORCHELASTIC_RESTART_COUNT', '0'))
    store.add(key, 1)
    while (joined := store.add(key, 0)) < world_size:
        waited(f'{world_size - joined} more of the {world_size} ranks')
    return store


def is_distributed():
    """Whether this process is part of a process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank():
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    """Processes in the group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def broadcast_object(obj):
    """Rank 0's obj on every rank; obj itself without a process group."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] without a process group."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def free_port():
    """A TCP port free on this machine now, for a local rendezvous (tests, tools)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
