"""sample.py on a tiny S32 checkpoint: --config_from_name, standing stats, bad flags."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
import train
import utils
from helpers import ROOT, run_flags

pytestmark = pytest.mark.slow  # end to end: see pytest.ini


@pytest.fixture
def trained(data_root, shared_run):
    """A 2-iteration run with the release's own BN (--mybn), so standing stats apply: the
    session's tiny_run has the default BN, which has none (and its other users test that)."""
    def build(out):
        flags = run_flags(data_root, str(out), 'mybn', '--mybn', '--total_itrs', '2',
                          '--save_every', '2')
        train.run(vars(utils.prepare_parser().parse_args(flags)))
    return shared_run('mybn', build)


def copied(run, tmp_path):
    """A copy of the shared run to write into."""
    shutil.copytree(run, tmp_path / 'run')
    return tmp_path / 'run'


def roots(out):
    return ['--weights_root', str(out / 'weights'), '--samples_root', str(out / 'samples'),
            '--logs_root', str(out / 'logs')]


def test_config_from_name_rebuilds_the_model(trained, tmp_path, monkeypatch):
    """Only the experiment name and roots are given; the model flags come from the checkpoint
    (a different --G_ch on the command line is overridden), the EMA weights are loaded, and
    standing stats accumulate."""
    trained = copied(trained, tmp_path)  # sample.py writes its npz beside the weights
    calls = []
    accumulate = utils.accumulate_standing_stats

    def spy(net, z, y, nclasses, num_accumulations=16):
        calls.append((num_accumulations, {k: p.detach().clone()
                                          for k, p in net.named_parameters()}))
        return accumulate(net, z, y, nclasses, num_accumulations)
    monkeypatch.setattr(utils, 'accumulate_standing_stats', spy)
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = vars(parser.parse_args(
        ['--experiment_name', 'mybn', '--config_from_name', '--dataset', 'S32', '--G_ch', '64',
         '--use_ema', '--G_eval_mode', '--accumulate_stats', '--num_standing_accumulations', '3',
         '--sample_npz', '--sample_num_npz', '7', '--device', 'cpu'] + roots(trained)))
    sample.run(config)
    assert config['G_ch'] == 4  # the checkpoint's
    with np.load(trained / 'samples' / 'mybn' / 'samples.npz') as npz:
        assert npz['x'].shape == (7, 3, 32, 32)
    assert len(calls) == 1 and calls[0][0] == 3
    saved = utils.torch_load(str(trained / 'weights' / 'mybn' / 'G_ema.pth'))
    assert calls[0][1] and all(torch.equal(p, saved[k]) for k, p in calls[0][1].items())


def test_standing_stats_average_the_batches(data_root):
    """accumulate_standing_stats leaves myBN's stats as the mean over the accumulated batches."""
    import BigGAN
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(
        ['--dataset', 'S32', '--G_ch', '4', '--G_attn', '0', '--mybn', '--device', 'cpu'])))
    G = BigGAN.Generator(**config)
    bn = G.output_layer[0].bn
    seen = []
    hook = G.output_layer[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().float()))
    z_, y_ = utils.prepare_z_y(6, G.dim_z, 10)
    utils.accumulate_standing_stats(G, z_, y_, 10, num_accumulations=3)
    hook.remove()
    assert len(seen) == 3 and bn.accumulation_counter.item() == 3
    means = torch.stack([x.mean([0, 2, 3]) for x in seen]).mean(0)
    variances = torch.stack([x.var([0, 2, 3], unbiased=False) for x in seen]).mean(0)
    torch.testing.assert_close(bn.stored_mean / bn.accumulation_counter, means,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.stored_var / bn.accumulation_counter, variances,
                               rtol=1e-4, atol=1e-5)
    assert not G.training


@pytest.mark.parametrize('bad,message', [
    (['--sample_trunc_curves', '1.0_x'], 'start_step_end'),
    (['--sample_npz', '--sample_num_npz', '0'], 'sample_num_npz')])
def test_bad_sample_flags_fail_with_one_line(trained, bad, message):
    """Bad sampling flags: one line on stderr, exit 2, before any checkpoint is read."""
    args = ['--experiment_name', 'mybn', '--dataset', 'S32', '--G_ch', '4', '--device', 'cpu']
    proc = subprocess.run([sys.executable, 'sample.py'] + args + roots(trained) + bad,
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.parametrize('spec, expected', [
    ('0.05_0.05_1.0', [round(0.05 * k, 2) for k in range(1, 21)]),  # the release's script
    ('0.1_0.4_1.0', [0.1, 0.5, 0.9, 1.3]),  # the release's range overshoots the end
    ('0.5_0.5_0.5', [0.5]),
])
def test_truncation_values_as_the_release(spec, expected):
    assert sample.truncation_values(spec) == pytest.approx(expected)
