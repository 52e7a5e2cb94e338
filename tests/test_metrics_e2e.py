"""End to end: moments of a custom folder, train.py testing with IS/FID/KID and a best copy,
then sample.py with every sampling flag; Inception weights are random ones saved to a file."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inception_utils
import sample
import train
import utils
from helpers import ROOT, TINY_FLAGS, metrics_setup

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

N_CLASSES = 10


@pytest.fixture
def setup(shared_run):
    """A 10-class image folder, random tf_fid weights on disk and the folder's moments, made
    once for the whole pytest run (shared_run). Read-only."""
    def build(tmp):
        paths = metrics_setup(tmp, 'cpu', N_CLASSES)
        (tmp / 'paths.json').write_text(json.dumps([str(p) for p in paths]))
    tmp = shared_run('metrics_e2e', build)
    folder, weights, data_root = map(Path, json.loads((tmp / 'paths.json').read_text()))
    return tmp, folder, weights, data_root


def flags(setup, *extra):
    """Tiny-model flags on the custom folder with tf_fid metrics."""
    tmp, folder, weights, data_root = setup
    base = [f for f in TINY_FLAGS]
    base[base.index('S32')] = 'custom'
    return base + [
        '--dataset_root', str(folder), '--resolution', '32', '--n_classes', str(N_CLASSES),
        '--data_root', str(data_root), '--weights_root', str(tmp / 'weights'),
        '--logs_root', str(tmp / 'logs'), '--samples_root', str(tmp / 'samples'),
        '--experiment_name', 'e2e', '--inception_backend', 'tf_fid',
        '--inception_weights', str(weights), '--kid', '--kid_subset_size', '10',
        '--metrics', 'IS,FID,PRDC', '--prdc_k', '3', '--num_inception_images', '10',
        '--ema', '--use_ema', '--num_D_steps', '1', '--batch_size', '2'] + list(extra)


def test_moments_file_records_backend(setup):
    """The moments file holds mu, sigma, the backend and real features for KID."""
    with np.load(setup[3] / 'custom_inception_moments.npz') as m:
        assert m['mu'].shape == (2048,) and m['sigma'].shape == (2048, 2048)
        assert str(m['backend']) == 'tf_fid'
        assert m['feats'].shape == (20, 2048)


@pytest.fixture
def trained(setup, shared_run):
    """A 2-iteration run on the folder that tests (metrics) and saves at iteration 2: setup
    with its own folder for the run's weights, logs and samples, made once for the whole
    pytest run. Its own run: the session's tiny_run trains on S32 and never tests. Read-only:
    tests that write use writable(trained)."""
    def build(out):
        parser = utils.prepare_parser()
        train.run(vars(parser.parse_args(flags((out,) + setup[1:], '--test_every', '2',
                                               '--save_every', '2', '--total_itrs', '2',
                                               '--num_epochs', '10'))))
    return (shared_run('metrics_e2e_trained', build),) + setup[1:]


def writable(trained, tmp_path):
    """trained with a copy of its run's folder, for a test that writes beside the weights."""
    shutil.copytree(trained[0], tmp_path / 'run')
    return (tmp_path / 'run',) + trained[1:]


def test_train_tests_and_keeps_best_copy(trained):
    """test_every writes a JSONL line with finite IS, FID, KID and PRDC, and a best0 checkpoint."""
    tmp = trained[0]
    lines = [json.loads(line) for line in open(tmp / 'logs' / 'e2e_log.jsonl')]
    assert [line['itr'] for line in lines] == [2]
    for key in ['IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std', 'precision', 'recall',
                'density', 'coverage']:
        assert np.isfinite(lines[0][key])
    # The stamp names the Inception weights by hash, and the sampling.
    protocol = lines[0]['protocol']
    weights = trained[2]
    assert protocol['weights_sha256'] == hashlib.sha256(open(weights, 'rb').read()).hexdigest()
    assert protocol['backend'] == 'tf_fid' and protocol['num_fakes'] == 10
    assert protocol['reference']['count'] == 2 * N_CLASSES
    assert (protocol['truncation'], protocol['z_std'], protocol['seed']) == (0.0, 1.0, 0)
    state = utils.torch_load(str(tmp / 'weights' / 'e2e' / 'state_dict_best0.pth'))
    assert state['best_IS'] == pytest.approx(lines[0]['IS_mean'])
    assert state['save_best_num'] == 1



def test_sample_py_checks_its_metrics_log_before_sampling(trained, tmp_path, capsys):
    """samples/NAME/metrics.jsonl hard-linked to a file outside the roots: sample.py wrote its
    random sheet and computed the metrics before refusing it (the outside attacker's round
    14). Now refused at start-up: one line, nothing written."""
    setup = writable(trained, tmp_path)
    folder = setup[0] / 'samples' / 'e2e'
    folder.mkdir(parents=True, exist_ok=True)
    victim = tmp_path / 'victim.jsonl'
    victim.write_text('keep\n')
    os.link(victim, folder / 'metrics.jsonl')
    before = sorted(os.listdir(folder))
    with pytest.raises(SystemExit) as info:
        sample.main(flags(setup, '--sample_random', '--sample_inception_metrics'))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and 'is a hard link' in err[0], err
    assert sorted(os.listdir(folder)) == before and victim.read_text() == 'keep\n'

def test_sample_py_writes_everything(trained, tmp_path, capsys, monkeypatch):
    """sample.py on the checkpoint: npz with exactly N images, sheets, interps, metrics."""
    setup = writable(trained, tmp_path)
    tmp = setup[0]
    # The z each sample() drew, grouped by the noise std z_ was set to at the time.
    drawn = {}
    sample_ = utils.sample

    def recording(G, z_, y_, config):
        out = sample_(G, z_, y_, config)
        drawn.setdefault(z_.dist_kwargs['var'], []).append(z_.detach().clone())
        return out
    monkeypatch.setattr(utils, 'sample', recording)
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = vars(parser.parse_args(flags(
        setup, '--sample_npz', '--sample_num_npz', '13', '--G_batch_size', '5',
        '--sample_sheets', '--sample_interps', '--sample_random', '--sample_inception_metrics',
        '--sample_trunc_curves', '0.5_0.5_1.0', '--load_weights', 'best0', '--G_eval_mode')))
    sample.run(config)
    folder = tmp / 'samples' / 'e2e'
    with np.load(folder / 'samples.npz') as npz:
        assert npz['x'].shape == (13, 3, 32, 32) and npz['x'].dtype == np.uint8
        assert npz['y'].shape == (13,) and npz['y'].dtype == np.int64
        assert npz['y'].min() >= 0 and npz['y'].max() < N_CLASSES
    for name in ['random_samples.jpg', '-1/samples0.jpg', '-1/interpZ0.jpg', '-1/interpY0.jpg',
                 '-1/interpZY0.jpg']:
        assert Image.open(folder / name).size[0] > 0
    metric_lines = [line for line in capsys.readouterr().out.splitlines()
                    if 'Inception Score is' in line]
    # One for --sample_inception_metrics, one per truncation value (0.5 and 1.0).
    assert len(metric_lines) == 3
    assert 'noise variance 0.500' in metric_lines[1]
    # Each report is also a record, stamped with the z it was computed on.
    records = [json.loads(line) for line in open(folder / 'metrics.jsonl')]
    assert [r['protocol']['z_std'] for r in records] == [1.0, 0.5, 1.0]
    assert all(r['protocol']['G_eval_mode'] and r['protocol']['weights'] == 'G_ema'
               for r in records)
    printed_fid = float(metric_lines[0].split('FID is ')[1].split(',')[0])
    assert records[0]['FID'] == pytest.approx(printed_fid, abs=1e-3)
    # The truncation values are standard deviations of the z the metrics were computed on.
    assert sorted(drawn) == [0.5, 1.0]
    for std, zs in drawn.items():
        assert torch.cat(zs).std().item() == pytest.approx(std, rel=0.2), std


def test_missing_weights_fail_before_training(setup, tmp_path):
    """Missing Inception weights: one line naming the file and the flag, exit 2, nothing run."""
    args = flags(setup, '--test_every', '2', '--total_itrs', '2',
                 '--weights_root', str(tmp_path / 'w'))
    args[args.index('--inception_weights') + 1] = str(tmp_path / 'absent.pth')
    proc = subprocess.run([sys.executable, 'train.py'] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'absent.pth' in err[0] and '--inception_weights' in err[0]
    assert not os.path.exists(tmp_path / 'w' / 'e2e')


def test_moments_of_another_backend_refused(setup, tmp_path):
    """Moments made with tf_fid are refused for the torchvision backend, naming the fix."""
    with pytest.raises(inception_utils.InceptionMomentsError, match='tf_fid'):
        inception_utils.load_inception_moments('custom', str(setup[3]), 'torchvision')


def test_evaluate_checkpoint_against_moments(trained, capsys):
    """evaluate.py's checkpoint source: sample.py's flags load the best copy; its FID against
    the moments file is that of the checkpoint's samples, stamped with how they were drawn."""
    import evaluate
    moments = trained[3] / 'custom_inception_moments.npz'
    args = flags(trained, '--load_weights', 'best0', '--metrics', 'IS,FID')
    record = evaluate.run(vars(evaluate.prepare_parser().parse_args(
        [str(moments), 'checkpoint'] + args)))
    assert np.isfinite(record['FID']) and np.isfinite(record['KID_mean'])
    protocol = record['protocol']
    assert protocol['fake']['kind'] == 'checkpoint' and protocol['num_fakes'] == 10
    assert protocol['reference']['kind'] == 'statistics'
    assert (protocol['itr'], protocol['weights'], protocol['z_std']) == (2, 'G_ema', 1.0)
