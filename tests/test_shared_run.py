"""helpers.shared_folder and the shared_run fixture: each shared run is built once per pytest
run, however many processes ask for it."""
import multiprocessing
import os
import time

import pytest

from helpers import shared_folder


def slow_build(folder):
    """Record which process built, and take long enough that the others ask meanwhile."""
    with open(folder.parent / 'builds.txt', 'a') as f:
        f.write(f'{os.getpid()}\n')
    time.sleep(0.5)
    (folder / 'data').write_text('built')


def ask(base):
    folder = shared_folder(base, 'run', slow_build)
    return str(folder), (folder / 'data').read_text()


def test_built_once_for_every_process(tmp_path):
    """Three processes asking at once get the same folder, built by one of them."""
    with multiprocessing.get_context('fork').Pool(3) as pool:
        answers = pool.map(ask, [tmp_path] * 3)
    assert answers == [(str(tmp_path / 'run'), 'built')] * 3
    assert len((tmp_path / 'builds.txt').read_text().splitlines()) == 1
    assert ask(tmp_path) == answers[0]  # later callers find it done
    assert len((tmp_path / 'builds.txt').read_text().splitlines()) == 1


def test_a_failed_build_is_rebuilt_from_empty(tmp_path):
    def fails(folder):
        (folder / 'partial').write_text('half')
        raise RuntimeError('build failed')
    with pytest.raises(RuntimeError, match='build failed'):
        shared_folder(tmp_path, 'run', fails)
    folder = shared_folder(tmp_path, 'run', lambda f: (f / 'data').write_text('ok'))
    assert sorted(os.listdir(folder)) == ['data']


def test_shared_runs_live_above_the_workers_folders(data_root, tmp_path_factory):
    """Under pytest-xdist the shared runs are in the parent of this worker's base temporary
    folder, where every worker of the run looks; without it, in the base folder itself."""
    base = tmp_path_factory.getbasetemp()
    expected = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
    assert data_root == str(expected / 'shared_runs' / 'data')
