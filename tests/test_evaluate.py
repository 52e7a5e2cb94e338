"""evaluate.py: metrics between image folders, npz files of images and statistics files, on a
stand-in network whose features are pixels (so the expected numbers are computed directly);
bad inputs refused in one line. (The checkpoint source: tests/test_metrics_e2e.py.)"""
import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate
import inception_utils
import metrics
from conftest import FakeInception


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """(folder, npz of other images, weights file); the network is FakeInception."""
    torch.manual_seed(0)
    net = FakeInception()
    weights = tmp_path / 'weights.pth'
    weights.write_bytes(b'stand-in weights')
    monkeypatch.setattr(inception_utils, 'check_inception_weights', lambda *a: str(weights))
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: net)
    rng = np.random.default_rng(0)
    folder = tmp_path / 'folder' / 'nested'
    folder.mkdir(parents=True)
    real = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    for i, pixels in enumerate(real):
        Image.fromarray(pixels).save(folder / f'{i:02d}.png')
    fake = rng.integers(0, 200, (25, 3, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / 'samples.npz', x=fake, y=np.zeros(25, dtype=np.int64))
    return tmp_path / 'folder', tmp_path / 'samples.npz', real, fake


def features(uint8_nchw):
    """FakeInception's pool features of uint8 images: the first 8 values in [-1, 1]."""
    x = (torch.from_numpy(uint8_nchw).float() / 255 - 0.5) * 2
    return x.flatten(1)[:, :8].double().numpy()


def evaluate_main(*args):
    parser = evaluate.prepare_parser()
    return evaluate.run(vars(parser.parse_args(['--device', 'cpu', *map(str, args)])))


def test_folder_against_npz(sources, capsys):
    folder, npz, real, fake = sources
    record = evaluate_main(folder, npz, '--metrics', 'IS,FID,KID,PRDC', '--kid_subset_size',
                           '20', '--prdc_k', '3')
    fr, ff = features(real.transpose(0, 3, 1, 2)), features(fake)
    assert record['FID'] == pytest.approx(metrics.numpy_calculate_frechet_distance(
        ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False)), rel=1e-6)
    expected = metrics.compute_prdc(fr.astype(np.float32), ff.astype(np.float32), 3)
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, abs=1e-9)
    assert np.isfinite(record['IS_mean']) and np.isfinite(record['KID_mean'])
    p = record['protocol']
    assert p['reference']['kind'] == 'folder' and p['reference']['count'] == 30
    assert p['fake']['kind'] == 'images' and p['num_fakes'] == 25 and p['fake']['sha256']
    assert p['PRDC'] == {'nearest_k': 3, 'real_count': 30, 'fake_count': 25}
    # The record is printed as the last line, as JSON.
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(
        json.dumps(record))


def test_save_stats_then_compare(sources, tmp_path):
    folder, npz, real, fake = sources
    out = tmp_path / 'stats.npz'
    evaluate_main(folder, '--save_stats', out)
    with np.load(out) as data:
        fr = features(real.transpose(0, 3, 1, 2))
        np.testing.assert_allclose(data['mu'], fr.mean(0), rtol=1e-6)
        assert int(data['count']) == 30 and data['feats'].shape == (30, 8)
    direct = evaluate_main(folder, npz, '--metrics', 'FID,KID', '--kid_subset_size', '20')
    via_stats = evaluate_main(out, npz, '--metrics', 'FID,KID', '--kid_subset_size', '20')
    assert via_stats['FID'] == pytest.approx(direct['FID'], rel=1e-9)
    assert via_stats['KID_mean'] == pytest.approx(direct['KID_mean'], rel=1e-6)
    assert via_stats['protocol']['reference']['kind'] == 'statistics'


def exits_with_one_line_each(cases, capsys):
    """Each (args, why): evaluate.py exits 2 with one stderr line containing why."""
    for args, why in cases:
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(['--device', 'cpu', *map(str, args)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert '\n' not in err and why in err, (args, err)


def test_bad_inputs_one_line_exit_2(sources, tmp_path, capsys):
    folder, npz, _, _ = sources
    (tmp_path / 'notes.txt').write_text('x')
    np.savez(tmp_path / 'empty.npz', y=np.zeros(3))
    np.savez(tmp_path / 'other.npz', mu=np.zeros(8), sigma=np.eye(8), backend=np.array('tf_fid'))
    (tmp_path / 'no_images').mkdir()
    cases = [([folder, tmp_path / 'absent'], 'does not exist'),
             ([folder, tmp_path / 'notes.txt'], 'neither a folder nor an .npz'),
             ([folder, tmp_path / 'empty.npz'], 'no x array'),
             ([folder, tmp_path / 'other.npz'], 'tf_fid backend'),
             ([tmp_path / 'no_images', npz], 'holds no'),
             ([folder], 'two sources'),
             ([folder, npz, '--metrics', 'intraFID'], 'not intraFID'),
             ([folder, npz, '--save_stats', tmp_path / 's.npz'], 'exactly one source'),
             ([folder, '--save_stats', tmp_path / 'stats.txt'], 'must end in .npz'),
             ([folder, npz, '--metrics', 'KID'], '--kid_subset_size')]
    before = sorted(os.listdir(tmp_path))
    exits_with_one_line_each(cases, capsys)
    assert sorted(os.listdir(tmp_path)) == before


def test_bad_statistics_and_arrays_one_line_exit_2(sources, tmp_path, capsys):
    """Statistics files get every moments file's checks (inception_utils.check_moments), so no
    FID of NaN or of a non-covariance is printed as a number; npz arrays of Python objects are
    refused at the header (files.check_npz)."""
    folder, npz, _, _ = sources
    eye = np.eye(8)
    asym = eye.copy()
    asym[0, 3] = 1.0
    np.savez(tmp_path / 'nan.npz', mu=np.full(8, np.nan), sigma=eye)
    np.savez(tmp_path / 'asym.npz', mu=np.zeros(8), sigma=asym)
    np.savez(tmp_path / 'inf_feats.npz', mu=np.zeros(8), sigma=eye, feats=np.full((5, 8), np.inf))
    np.savez(tmp_path / 'objects.npz', x=np.array([{'a': 1}, None], dtype=object))
    np.savez(tmp_path / 'good.npz', mu=np.zeros(8), sigma=eye)
    # The outside attacker's round 10: finite values no float32 features give (FID 2e203
    # printed), and features of the wrong width, refused first as lower --kid_subset_size.
    np.savez(tmp_path / 'huge.npz', mu=np.zeros(8), sigma=eye * 1e200)
    np.savez(tmp_path / 'narrow.npz', mu=np.zeros(8), sigma=eye, feats=np.zeros((10, 7)))
    cases = [([tmp_path / 'nan.npz', npz], 'NaN or Inf'),
             ([tmp_path / 'huge.npz', npz], 'beyond what float32 features give'),
             ([tmp_path / 'narrow.npz', npz, '--metrics', 'KID'],
              'KID features have shape (10, 7), not (K, 8)'),
             ([tmp_path / 'asym.npz', npz], 'not symmetric'),
             ([tmp_path / 'inf_feats.npz', npz, '--metrics', 'KID', '--kid_subset_size', '5'],
              'KID features hold NaN'),
             ([folder, tmp_path / 'objects.npz'], 'Python objects'),
             ([tmp_path / 'good.npz', tmp_path / 'good.npz', '--metrics', 'IS'], 'IS needs images'),
             # The outside attacker's round 13: statistics of another width than the
             # network's (0 wide: a ValueError; 1 wide against itself: FID 0), and images of
             # no pixels (a RuntimeError in the resize).
             ([tmp_path / 'one.npz', tmp_path / 'one.npz'],
              'hold 1 features, but the torchvision Inception network gives 8'),
             ([tmp_path / 'none.npz', npz], 'hold 0 features, but the torchvision Inception'),
             ([folder, tmp_path / 'empty_images.npz'], 'x must be uint8 N x 3 x H x W images, '
                                                       'got uint8 (4, 3, 0, 0)')]
    np.savez(tmp_path / 'one.npz', mu=np.zeros(1), sigma=np.eye(1))
    np.savez(tmp_path / 'none.npz', mu=np.zeros(0), sigma=np.zeros((0, 0)))
    np.savez(tmp_path / 'empty_images.npz', x=np.zeros((4, 3, 0, 0), np.uint8))
    exits_with_one_line_each(cases, capsys)



def test_statistics_no_inception_gives_are_refused_without_warnings(sources, tmp_path, capsys):
    """The outside attacker's round 14: KID features of 1e30 in float32 printed a KID of
    1e180 +/- inf after numpy's overflow warning (and logged Infinity); float64 ones of 1e209
    gave KID nan; a backend recorded as the number 3 advised `--inception_backend 3`, which
    argparse refuses. Each is now one line, under warnings turned into errors."""
    rng = np.random.default_rng(0)
    good = rng.random((30, 8)).astype(np.float32)
    np.savez(tmp_path / 'good.npz', mu=good.mean(0), sigma=np.cov(good.T), feats=good)
    np.savez(tmp_path / 'f32_huge.npz', mu=good.mean(0), sigma=np.cov(good.T),
             feats=(good * 1e30).astype(np.float32))
    np.savez(tmp_path / 'f64_huge.npz', mu=good.mean(0), sigma=np.cov(good.T),
             feats=good.astype(np.float64) * 1e209)
    np.savez(tmp_path / 'backend_int.npz', mu=good.mean(0), sigma=np.cov(good.T),
             backend=np.array(3))
    np.savez(tmp_path / 'backend_nl.npz', mu=good.mean(0), sigma=np.cov(good.T),
             backend=np.array('torch\nvision'))
    kid = ['--metrics', 'KID', '--kid_subset_size', '10', '--kid_subsets', '2']
    cases = [([tmp_path / 'f32_huge.npz', tmp_path / 'good.npz', *kid],
              'KID came out as'),
             ([tmp_path / 'f64_huge.npz', tmp_path / 'good.npz', *kid],
              'the KID features hold values beyond float32'),
             ([tmp_path / 'backend_int.npz', tmp_path / 'good.npz'],
              'record the backend 3, which is none of torchvision, tf_fid: the file is damaged'),
             ([tmp_path / 'backend_nl.npz', tmp_path / 'good.npz'],
              "record the backend 'torch\\nvision', which is none of")]
    before = sorted(os.listdir(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        exits_with_one_line_each(cases, capsys)
    assert sorted(os.listdir(tmp_path)) == before
    # The same statistics, within float32 and of a known backend, give a finite KID.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = evaluate_main(tmp_path / 'good.npz', tmp_path / 'good.npz', *kid)
    assert np.isfinite(result['KID_mean']) and np.isfinite(result['KID_std'])

def test_config_from_name_keeps_the_measurement_flags_of_the_command_line(monkeypatch):
    """A checkpoint's stored config gives the model flags, never how it is measured: every
    flag of flags.MEASUREMENT_FLAGS keeps its command-line value (a downloaded checkpoint
    storing kid_subsets 10**9 or other metrics cannot change the protocol or its cost)."""
    import sample
    import utils
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = vars(parser.parse_args(['--experiment_name', 'x', '--config_from_name',
                                     '--metrics', 'KID,PRDC', '--kid_subsets', '3']))
    asked = dict(config)
    stored = dict(config)
    stored.update(metrics='intraFID', kid_subsets=10 ** 9, kid_subset_size=10 ** 9, prdc_k=10 ** 9,
                  intra_fid_per_class=10 ** 9, num_inception_images=10 ** 12,
                  no_fid=True, kid=True, inception_backend='tf_fid', inception_weights='/x',
                  G_ch=4)
    monkeypatch.setattr(sample, 'load_weights', lambda *a, **k: dict(stored))
    monkeypatch.setattr(utils, 'check_names', lambda config: None)
    out = sample.config_from_checkpoint(config)
    assert out['G_ch'] == 4  # a model flag: the checkpoint's
    for key in ('metrics', 'kid_subsets', 'kid_subset_size', 'prdc_k', 'intra_fid_per_class',
                'num_inception_images', 'no_fid', 'kid', 'inception_backend',
                'inception_weights'):
        assert out[key] == asked[key], key


def test_sizes_that_cannot_fit_are_refused_before_any_inception_pass(sources, tmp_path, capsys,
                                                                      monkeypatch):
    """KID's subset, PRDC's k and a statistics file without features are refused from the
    sources' listings and headers: no image goes through the network first."""
    folder, npz, _, _ = sources  # 30 images in the folder, 25 in the npz
    np.savez(tmp_path / 'stats.npz', mu=np.zeros(108), sigma=np.eye(108))

    def no_pass(*args, **kwargs):
        raise AssertionError('an Inception pass ran before the sizes were checked')
    monkeypatch.setattr(inception_utils, 'iterate_inception_outputs', no_pass)
    cases = [([folder, npz, '--metrics', 'KID', '--kid_subset_size', '26'], '25 rows'),
             ([npz, folder, '--metrics', 'FID,KID', '--kid_subset_size', '26'], '25 and 30'),
             ([folder, npz, '--metrics', 'PRDC', '--prdc_k', '25'], '25 fake'),
             ([tmp_path / 'stats.npz', npz, '--metrics', 'PRDC'], 'hold none'),
             # Subsets' scores beyond memory (8 PB): refused before the pass, not after it.
             ([folder, npz, '--metrics', 'KID', '--kid_subset_size', '5', '--kid_subsets',
               str(10 ** 15)], 'KID subsets')]
    exits_with_one_line_each(cases, capsys)


def test_counts_that_ask_for_more_memory_than_there_is_are_refused(monkeypatch):
    """10^15 KID subsets (their scores alone 8 PB) and a truncation curve of 10^12 values are
    refused in one line before anything is allocated (files.check_fits)."""
    import files
    import sample
    import utils
    monkeypatch.setattr(files, 'available_memory', lambda: 2 ** 30)
    feats = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(utils.ConfigError, match='KID subsets'):
        metrics.calculate_kid(feats, feats, num_subsets=10 ** 15, subset_size=5)
    with pytest.raises(utils.ConfigError, match='sample_trunc_curves'):
        sample.truncation_values('0.000000000001_0.000000000001_1.0')
    assert len(sample.truncation_values('0.05_0.05_1.0')) == 20  # the release's curve


def test_an_inception_giving_nan_features_is_refused_and_writes_nothing(sources, tmp_path):
    """Inception weights that give NaN features: FID was numpy's LinAlgError traceback and
    --save_stats wrote all-NaN statistics, exit 0 (the outside attacker's round 13). Now one
    line blaming the weights, nothing written."""
    folder, npz, _, _ = sources
    net = inception_utils.load_inception_net()
    net.register_forward_hook(lambda module, args, out: tuple(t * float('nan') for t in out))
    out = tmp_path / 'stats.npz'
    for args in [(folder, '--save_stats', out), (folder, npz, '--metrics', 'IS,FID')]:
        with pytest.raises(metrics.MetricsError, match='weights are damaged'):
            evaluate_main(*args)
    assert not out.exists()
