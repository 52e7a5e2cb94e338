"""The tests' fixtures. Plain helpers live in helpers.py (importing it puts the repo root on
sys.path and sets the thread counts); they are re-exported here for test files that import
them from conftest."""
import functools
import os

import pytest

from helpers import (  # noqa: F401
    FIXTURES,
    HF_LAYERS,
    ROOT,
    TINY_FLAGS,
    FakeInception,
    assert_same,
    demo_flags,
    hf_standin,
    import_hf,
    load_as_sample,
    metrics_setup,
    penalty_grad,
    run_flags,
    save_hf,
    shared_folder,
    tiny_config,
    tiny_models,
)


@pytest.fixture
def make_config():
    """tiny_config as a fixture."""
    return tiny_config


@pytest.fixture(scope='session')
def data_root(shared_run):
    """One data_root for the whole pytest run, so S32 is generated (and cached) only once.
    Read-only: the tests read it and write elsewhere."""
    def build(root):
        import datasets
        datasets.S32(os.path.join(str(root), datasets.DATASETS['S32'].root))
    return str(shared_run('data', build))


@pytest.fixture(scope='session')
def shared_run(tmp_path_factory):
    """shared_run(name, build): the folder build(folder) filled, built once per pytest run
    (helpers.shared_folder).

    Under pytest-xdist every worker has its own session, so a session fixture alone would
    build once per worker: the folders live in the run's base temporary folder, the parent of
    the workers' own. They are read-only for the tests: one that writes copies first.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    base = base / 'shared_runs'
    base.mkdir(exist_ok=True)
    return functools.partial(shared_folder, base)


@pytest.fixture(scope='session')
def tiny_run(data_root, shared_run):
    """One 3-iteration tiny S32 run (run_flags, experiment 'exp') for the whole pytest run,
    saving every iteration, singular values logged every iteration: sets '' (itr 3), copy0 (3)
    and copy1 (2). Read-only: tests that change it copy it first."""
    def build(out):
        import train
        flags = run_flags(data_root, str(out), 'exp', '--total_itrs', '3', '--save_every', '1',
                          '--sv_log_interval', '1')
        train.run(vars(train.utils.prepare_parser().parse_args(flags)))
    return shared_run('tiny_run', build)
