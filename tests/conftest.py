"""The tests' fixtures. Plain helpers live in helpers.py (importing it puts the repo root on
sys.path and sets the thread counts); they are re-exported here for test files that import
them from conftest."""
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
    tiny_config,
    tiny_models,
)


@pytest.fixture
def make_config():
    """tiny_config as a fixture."""
    return tiny_config


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """One data_root for the session, so S32 is generated (and cached) only once."""
    root = tmp_path_factory.mktemp('data')
    import datasets
    datasets.S32(os.path.join(str(root), datasets.DATASETS['S32'].root))
    return str(root)


@pytest.fixture(scope='session')
def tiny_run(data_root, tmp_path_factory):
    """One 3-iteration tiny S32 run (run_flags, experiment 'exp') for the session, saving
    every iteration, singular values logged every iteration: sets '' (itr 3), copy0 (3) and
    copy1 (2). Read-only: tests that change it copy it first."""
    import train
    out = tmp_path_factory.mktemp('tiny_run')
    flags = run_flags(data_root, str(out), 'exp', '--total_itrs', '3', '--save_every', '1',
                      '--sv_log_interval', '1')
    train.run(vars(train.utils.prepare_parser().parse_args(flags)))
    return out
