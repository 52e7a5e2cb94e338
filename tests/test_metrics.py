"""metrics.py against implementations others wrote: the prdc package (precision, recall,
density, coverage), torch-fidelity (KID), pytorch-fid (the Frechet distance and its Inception,
which the tf_fid backend must equal); plus small cases worked out by hand."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import files
import inception_utils
import metrics

prdc = pytest.importorskip('prdc')
PRDC_KEYS = ('precision', 'recall', 'density', 'coverage')


# ----------------------------------------------------------------------------
# PRDC.

def reference_prdc(real, fake, k, capsys):
    """The prdc package's numbers (it prints a line, which the test swallows)."""
    out = prdc.compute_prdc(real, fake, k)
    capsys.readouterr()
    return {key: float(out[key]) for key in PRDC_KEYS}


def feature_sets(seed):
    """(name, real, fake) pairs covering the cases that decide a strict '<': float32 and
    float64, mixed dtypes, integer grids (many exactly equal distances), an identical copy."""
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((230, 48))
    fake = rng.standard_normal((190, 48)) * 1.2 + 0.15
    grid_r = rng.integers(0, 3, (150, 5)).astype(np.float32)
    grid_f = rng.integers(0, 3, (140, 5)).astype(np.float32)
    return [('float64', real, fake), ('float32', real.astype(np.float32), fake.astype(np.float32)),
            ('mixed', real, fake.astype(np.float32)), ('grid', grid_r, grid_f),
            ('identical', real[:120].astype(np.float32), real[:120].astype(np.float32).copy())]


@pytest.mark.parametrize('case', range(5))
@pytest.mark.parametrize('k', [1, 3, 7])
def test_prdc_equals_prdc_package(case, k, capsys):
    name, real, fake = feature_sets(0)[case]
    expected = reference_prdc(real, fake, k, capsys)
    # Blocks of 64 rows: several blocks per side, a ragged last one.
    got = metrics.compute_prdc(real, fake, k, block_size=64)
    assert set(got) == set(PRDC_KEYS)
    for key in PRDC_KEYS:
        assert abs(got[key] - expected[key]) <= 1e-9, (name, key)
    # Block size changes nothing.
    assert metrics.compute_prdc(real, fake, k, block_size=1000) == got


def test_prdc_by_hand():
    """1-d points worked out on paper. Reals 0, 1, 2, 10: with k = 1 their radii are 1, 1, 1,
    8. Fakes 0.5, 9, 30: radii 8.5, 8.5, 21."""
    real = np.array([[0.], [1.], [2.], [10.]])
    fake = np.array([[0.5], [9.], [30.]])
    got = metrics.compute_prdc(real, fake, 1, block_size=2)
    # 0.5 lies in the balls of 0 and 1, 9 in the ball of 10, 30 in none.
    assert got['precision'] == pytest.approx(2 / 3)
    assert got['density'] == pytest.approx((2 + 1 + 0) / 3)
    # Every real lies within 8.5 of 0.5 or 9 (0, 1, 2 of 0.5; 10 of 9).
    assert got['recall'] == pytest.approx(1.0)
    # Balls holding a fake: 0 (0.5 at 0.5 < 1), 1 (0.5 < 1), 10 (1 < 8); not 2 (1.5 > 1).
    assert got['coverage'] == pytest.approx(3 / 4)


def test_prdc_works_in_blocks(monkeypatch):
    """No distance block is ever larger than block_size x block_size."""
    shapes = []
    blocks = metrics._distance_blocks

    def spy(*args, **kwargs):
        for i, j, d in blocks(*args, **kwargs):
            shapes.append(tuple(d.shape))
            yield i, j, d
    monkeypatch.setattr(metrics, '_distance_blocks', spy)
    rng = np.random.default_rng(1)
    metrics.compute_prdc(rng.standard_normal((100, 4)), rng.standard_normal((90, 4)), 3,
                         block_size=16)
    assert max(max(s) for s in shapes) == 16
    # real-real, fake-fake and real-fake passes, block by block.
    assert len(shapes) == 7 * 7 + 6 * 6 + 7 * 6


def test_prdc_accepts_tensors():
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    assert metrics.compute_prdc(torch.from_numpy(real), torch.from_numpy(fake), 2) == \
        metrics.compute_prdc(real, fake, 2)


@pytest.mark.parametrize('k, shapes, match', [
    (0, ((10, 3), (10, 3)), 'nearest_k'), (10, ((10, 3), (20, 3)), 'nearest_k'),
    (2, ((10, 3), (10, 4)), 'dimensions'), (2, ((10,), (10, 3)), 'shape')])
def test_prdc_refuses_bad_inputs(k, shapes, match):
    with pytest.raises(metrics.MetricsError, match=match) as err:
        metrics.compute_prdc(np.zeros(shapes[0]), np.zeros(shapes[1]), k)
    assert '\n' not in str(err.value)


# ----------------------------------------------------------------------------
# KID.

def test_kid_equals_torch_fidelity_with_one_subset_of_all():
    metric_kid = pytest.importorskip('torch_fidelity.metric_kid')
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 32))
    y = rng.standard_normal((150, 32)) * 0.9 + 0.2
    expected = metric_kid.kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=1, kid_subset_size=150,
        verbose=False)['kernel_inception_distance_mean']
    mean, std = metrics.calculate_kid(x, y, num_subsets=1, subset_size=150)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == 0.0


@pytest.mark.parametrize('size, n1, n2', [(11, 10, 50), (11, 50, 10), (1, 10, 10)])
def test_kid_refuses_subsets_larger_than_the_samples(size, n1, n2):
    with pytest.raises(metrics.MetricsError, match='--kid_subset_size') as err:
        metrics.calculate_kid(np.zeros((n1, 3)), np.zeros((n2, 3)), subset_size=size)
    assert '\n' not in str(err.value)


# ----------------------------------------------------------------------------
# FID and the tf_fid backend against pytorch-fid.

@pytest.mark.parametrize('fid_fn', [metrics.numpy_calculate_frechet_distance,
                                    metrics.torch_calculate_frechet_distance])
def test_fid_equals_pytorch_fid(fid_fn, capsys):
    fid_score = pytest.importorskip('pytorch_fid.fid_score')
    rng = np.random.default_rng(4)
    for dim in (3, 32, 128):
        a = rng.standard_normal((4 * dim, dim)) @ rng.standard_normal((dim, dim))
        b = rng.standard_normal((4 * dim, dim)) + 0.3
        mu1, mu2 = a.mean(0), b.mean(0)
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        expected = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
        assert float(fid_fn(mu1, s1, mu2, s2)) == pytest.approx(expected, rel=1e-7)
    capsys.readouterr()


def test_tf_fid_backend_equals_pytorch_fid_inception(tmp_path, monkeypatch):
    """pytorch-fid's InceptionV3 (pool block) and the tf_fid backend, both given the same
    seeded random weights saved in the public .pth's layout, give the same pool features."""
    pf_inception = pytest.importorskip('pytorch_fid.inception')
    torch.manual_seed(0)
    net = inception_utils.build_inception_net('tf_fid')
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.running_mean.numel()
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    path = tmp_path / inception_utils.WEIGHT_FILES['tf_fid']
    torch.save(net.state_dict(), path)
    # pytorch-fid fetches its weights by URL; here it gets the file above.
    monkeypatch.setattr(pf_inception, 'load_state_dict_from_url',
                        lambda *a, **k: torch.load(path, weights_only=True))
    theirs = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours = inception_utils.load_inception_net(backend='tf_fid', weights_path=str(path),
                                              device='cpu')
    images = torch.rand(1, 3, 37, 41, generator=gen)  # pytorch-fid takes [0, 1], ours [-1, 1]
    with torch.no_grad():
        expected = theirs(images)[0].flatten(1)
        pool, _ = ours(images * 2 - 1)
    assert expected.abs().mean() > 1e-3  # the random network passes a signal through
    torch.testing.assert_close(pool, expected, rtol=1e-4, atol=1e-5 * expected.abs().max())


def test_inception_utils_re_exports_the_math():
    for name in ('FeatureStats', 'InceptionScoreStats', 'calculate_inception_score',
                 'numpy_calculate_frechet_distance', 'torch_calculate_frechet_distance',
                 'calculate_kid', 'torch_cov'):
        assert getattr(inception_utils, name) is getattr(metrics, name)


# ----------------------------------------------------------------------------
# intra-FID and per-class moments.

def test_intra_fid_by_hand():
    """FID of 1-d Gaussians is (mu1 - mu2)^2 + (s1 - s2)^2 with s the standard deviations:
    class 0: 3^2 + (1 - 2)^2 = 10; class 1: 0 + (3 - 1)^2 = 4; class 2 (2-d, diagonal):
    2 + (1 - 2)^2 + (2 - 1)^2 = 4. intra-FID is their mean, 6."""
    fake = {0: ([0.], [[1.]]), 1: ([1.], [[9.]]), 2: ([0., 0.], np.diag([1., 4.]))}
    real = {0: ([3.], [[4.]]), 1: ([1.], [[1.]]), 2: ([1., 1.], np.diag([4., 1.]))}
    calls = []

    def real_moments(c):
        calls.append(c)
        return real[c]
    value, per_class = metrics.calculate_intra_fid([0, 1, 2], fake.get, real_moments)
    assert per_class == pytest.approx({0: 10., 1: 4., 2: 4.})
    assert value == pytest.approx(6.)
    assert calls == [0, 1, 2]  # one class at a time


def test_per_class_moments_file(tmp_path):
    """Shuffled classes with room for two in memory: every class is flushed and merged
    several times, and still equals numpy's mean and covariance of its rows."""
    import h5py
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((120, 6)) * 3 + 10
    labels = rng.integers(0, 5, 120)
    labels[labels == 4] = 3  # class 4 has no image
    labels[0] = 4  # ... now one
    path = tmp_path / 'm.hdf5'
    with h5py.File(path, 'w') as h5:
        writer = inception_utils.PerClassMomentsWriter(h5, 6, 'tf_fid', open_classes=2)
        for i in range(0, 120, 7):
            writer.update(torch.from_numpy(feats[i:i + 7]), labels[i:i + 7])
        writer.finish()
    reader = inception_utils.PerClassMoments(str(path), 'tf_fid')
    assert reader.h5['sigma'].chunks == (1, 6, 6)
    assert reader.classes == [0, 1, 2, 3]
    assert list(reader.counts) == [int((labels == c).sum()) for c in range(6)]
    for c in reader.classes:
        mu, sigma = reader.moments(c)
        rows = feats[labels == c]
        np.testing.assert_allclose(mu, rows.mean(0), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(rows, rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(inception_utils.InceptionMomentsError, match='torchvision'):
        inception_utils.PerClassMoments(str(path), 'torchvision')


def test_calculate_inception_moments_per_class(tmp_path, monkeypatch):
    import calculate_inception_moments as cim
    from helpers import FakeInception
    images = torch.rand(11, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 0, 1, 2])

    def get_data_loaders(**config):
        data = torch.utils.data.TensorDataset(images, labels)
        return [torch.utils.data.DataLoader(data, batch_size=4)]
    monkeypatch.setattr(cim, 'get_data_loaders', get_data_loaders)
    monkeypatch.setattr(cim, 'check_dataset', lambda config: None)
    monkeypatch.setattr(cim, 'check_training_set', lambda *a: None)
    monkeypatch.setattr(inception_utils, 'check_inception_weights', lambda *a: 'x')
    torch.manual_seed(0)
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())
    config = vars(cim.prepare_parser().parse_args(
        ['--dataset', 'S8', '--data_root', str(tmp_path), '--device', 'cpu', '--kid_feats', '0',
         '--n_classes', '3', '--per_class']))
    cim.run(config)
    reader = inception_utils.find_per_class_moments('S8', str(tmp_path), 'torchvision')
    pool = images.flatten(1)[:, :8].double().numpy()
    for c in range(3):
        mu, sigma = reader.moments(c)
        rows = pool[labels.numpy() == c]
        np.testing.assert_allclose(mu, rows.mean(0), rtol=1e-6)
        np.testing.assert_allclose(sigma, np.cov(rows, rowvar=False), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------
# Selecting metrics, and the best copies' directions.

def test_select_metrics():
    select = inception_utils.select_metrics
    assert select() == ('IS', 'FID')
    assert select('IS,FID', no_fid=True) == ('IS',)
    assert select('IS,FID', kid=True) == ('IS', 'FID', 'KID')
    assert select('intraFID, PRDC,IS') == ('IS', 'PRDC', 'intraFID')
    with pytest.raises(inception_utils.ConfigError, match='unknown LPIPS'):
        select('IS,LPIPS')
    inception_utils.check_which_best('FID', ('IS',))  # the release's: always allowed
    inception_utils.check_which_best('coverage', ('IS', 'PRDC'))
    with pytest.raises(inception_utils.ConfigError, match='needs PRDC'):
        inception_utils.check_which_best('recall', ('IS', 'FID'))


@pytest.mark.parametrize('which, values, improved', [
    ('IS', [2., 3., 2.5], [True, True, False]),
    ('FID', [50., 40., 45.], [True, True, False]),
    ('KID', [0.1, -0.01, 0.0], [True, True, False]),
    ('density', [0.5, 1.5, 1.2], [True, True, False]),
    ('intraFID', [80., 90., 70.], [True, False, True])])
def test_update_best_in_each_direction(which, values, improved):
    import train_fns
    key = metrics.BEST[which][0]
    state = {'best_IS': 0, 'best_FID': 999999}
    got = []
    for v in values:
        record = {'IS_mean': 1.0, 'FID': 100.0, key: v}
        got.append(train_fns.update_best(state, record, which))
    assert got == improved
    best = max(values) if metrics.BEST[which][1] else min(values)
    assert state[f'best_{which}'] == best


class LabelSampler:
    """sample(label=None) -> 3 random 8x8 images (and their labels); class c's images are
    shifted by c, so that classes differ."""

    def __init__(self):
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, label=None):
        y = (torch.randint(0, 2, (3,), generator=self.gen) if label is None
             else torch.full((3,), label))
        x = torch.rand(3, 3, 8, 8, generator=self.gen) * 2 - 1 + y.view(-1, 1, 1, 1)
        return x, y


def test_measure_computes_every_selected_metric(tmp_path, monkeypatch, capsys):
    """IS/FID/KID/PRDC/intraFID of a measure() on a stand-in network equal the functions
    (and the prdc package) applied to the same features."""
    import h5py

    from conftest import FakeInception
    torch.manual_seed(0)
    net = FakeInception()
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: net)
    rng = np.random.default_rng(9)
    real = rng.uniform(-1, 1, (40, 8)).astype(np.float32)
    inception_utils.save_inception_moments(str(tmp_path / 'C10_inception_moments.npz'),
                                           real.mean(0), np.cov(real, rowvar=False),
                                           'torchvision', feats=real)
    real_class = {c: rng.uniform(-1, 1, (9, 8)) + c for c in range(2)}
    with h5py.File(tmp_path / 'C10_inception_moments_per_class.hdf5', 'w') as h5:
        writer = inception_utils.PerClassMomentsWriter(h5, 2, 'torchvision')
        for c, rows in real_class.items():
            writer.update(torch.from_numpy(rows), np.full(9, c))
        writer.finish()
    measure = inception_utils.prepare_metrics(
        'C10_hdf5', data_root=str(tmp_path), metrics='IS,FID,KID,PRDC,intraFID',
        kid_subset_size=10, kid_subsets=5, prdc_k=3, intra_fid_per_class=6, num_images=12)
    out = measure(LabelSampler(), 12, num_splits=2, prints=False)

    # The same draws: 4 batches for the main pass, then 2 per class.
    sampler = LabelSampler()
    with torch.no_grad():
        pool = torch.cat([net(sampler()[0])[0] for _ in range(4)]).numpy()
        fakes_of = {c: torch.cat([net(sampler(c)[0])[0] for _ in range(2)]).double().numpy()
                    for c in range(2)}
    expected = reference_prdc(real, pool, 3, capsys)
    for key in PRDC_KEYS:
        assert abs(out[key] - expected[key]) <= 1e-9
    assert out['KID_mean'] == pytest.approx(metrics.calculate_kid(
        pool, real, num_subsets=5, subset_size=10)[0], rel=1e-6)
    pool64 = pool.astype(np.float64)
    assert out['FID'] == pytest.approx(metrics.numpy_calculate_frechet_distance(
        pool64.mean(0), np.cov(pool64, rowvar=False), real.mean(0),
        np.cov(real.astype(np.float64), rowvar=False)), rel=1e-6)
    intra = np.mean([metrics.numpy_calculate_frechet_distance(
        fakes_of[c].mean(0), np.cov(fakes_of[c], rowvar=False), real_class[c].mean(0),
        np.cov(real_class[c], rowvar=False)) for c in range(2)])
    assert out['intraFID'] == pytest.approx(intra, rel=1e-6)

    # The stamp: what was measured how, against what.
    import hashlib
    p = out['protocol']
    digest = hashlib.sha256((tmp_path / 'C10_inception_moments.npz').read_bytes()).hexdigest()
    assert p['reference'] == {'dataset': 'C10_hdf5', 'split': 'train', 'count': None,
                              'moments_sha256': digest}
    assert (p['backend'], p['num_fakes'], p['IS_splits']) == ('torchvision', 12, 2)
    assert p['resize'] == inception_utils.RESIZE['torchvision']
    assert p['KID'] == {'subset_size': 10, 'subsets': 5}
    assert p['PRDC'] == {'nearest_k': 3, 'real_count': 40, 'fake_count': 12}
    per_class = tmp_path / 'C10_inception_moments_per_class.hdf5'
    assert p['intraFID'] == {'fakes_per_class': 6, 'classes': 2, 'moments_sha256':
                             hashlib.sha256(per_class.read_bytes()).hexdigest()}
    assert p['metrics'] == ['IS', 'FID', 'KID', 'PRDC', 'intraFID']
    stamped = measure(LabelSampler(), 12, num_splits=2, prints=False,
                      sampling={'truncation': 0.5, 'seed': 3})['protocol']
    assert (stamped['truncation'], stamped['seed']) == (0.5, 3)


def test_measure_refuses_sizes_at_start(tmp_path, monkeypatch):
    from conftest import FakeInception
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())
    real = np.zeros((20, 8), dtype=np.float32)
    inception_utils.save_inception_moments(str(tmp_path / 'C10_inception_moments.npz'),
                                           real.mean(0), np.eye(8), 'torchvision', feats=real)
    kwargs = dict(data_root=str(tmp_path), num_images=10)
    with pytest.raises(metrics.MetricsError, match='--kid_subset_size'):
        inception_utils.prepare_metrics('C10', metrics='IS,KID', kid_subset_size=11, **kwargs)
    with pytest.raises(inception_utils.ConfigError, match='--prdc_k 10'):
        inception_utils.prepare_metrics('C10', metrics='PRDC', prdc_k=10, **kwargs)
    with pytest.raises(inception_utils.InceptionMomentsError, match='--per_class'):
        inception_utils.prepare_metrics('C10', metrics='intraFID', **kwargs)


def write_jsonl(path, records):
    with open(path, 'w') as f:
        for r in records:
            f.write(__import__('json').dumps(r) + '\n')


def test_plot_logs_draws_the_new_metrics(tmp_path):
    import plot_logs
    records = [{'itr': i, 'IS_mean': 1.0 + i, 'IS_std': 0.1, 'FID': 50.0 - i, '_stamp': 1e9 + i,
                'KID_mean': [0.3, 0.1, 0.2][k], 'precision': [0.5, 0.7, 0.6][k],
                'intraFID': [90., 80., 85.][k]} for k, i in enumerate((100, 200, 300))]
    write_jsonl(tmp_path / 'run_log.jsonl', records)
    run = plot_logs.read_experiment(str(tmp_path), 'run')
    fig = plot_logs.figure_metrics(run)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(': ')[1].split(' ')[0] for t in titles] == ['KID', 'precision', 'intraFID']
    for ax, key, best_itr in zip(fig.axes, ['KID_mean', 'precision', 'intraFID'],
                                 [200, 200, 200]):
        assert ax.lines[0].get_ydata().tolist() == [r[key] for r in records]
        assert ax.lines[1].get_xdata().tolist() == [best_itr]  # KID, intraFID: lowest
    fig = plot_logs.figure_compare([run, run])
    assert [ax.get_title() for ax in fig.axes] == [
        f'{t}\nunknown protocol' for t in ('Inception Score', 'FID', 'KID', 'precision',
                                           'intraFID')]
    plot_logs.pyplot().close('all')


def stamped_records(protocols):
    return [{'itr': 100 * (i + 1), 'IS_mean': 2.0, 'IS_std': 0.1, 'FID': 40.0, '_stamp': 1e9 + i,
             **({'protocol': p} if p is not None else {})} for i, p in enumerate(protocols)]


def test_plot_logs_refuses_mixed_protocols(tmp_path, capsys):
    import plot_logs
    a = {'backend': 'tf_fid', 'num_fakes': 50000, 'seed': 0,
         'reference': {'dataset': 'I128', 'split': 'train'}}
    b = {**a, 'num_fakes': 10000}
    write_jsonl(tmp_path / 'same_log.jsonl', stamped_records([a, {**a, 'seed': 1}]))
    write_jsonl(tmp_path / 'mixed_log.jsonl', stamped_records([a, b]))
    write_jsonl(tmp_path / 'release_log.jsonl', stamped_records([None, None]))

    def plot(*args):
        return plot_logs.main(['--logs_root', str(tmp_path), '--experiment_name', *args])
    plot('same')  # seeds differ: the same protocol
    # No stamps at all: one (unknown) protocol.
    run = plot_logs.read_experiment(str(tmp_path), 'release')
    plot_logs.check_protocols([run])
    assert plot_logs.figure_IS_FID(run).axes[0].get_title().endswith('unknown protocol')
    plot_logs.pyplot().close('all')
    for names, why in [(['mixed'], 'num_fakes'), (['same', 'release'], 'some records have none')]:
        before = sorted(p.name for p in tmp_path.rglob('*.png'))
        with pytest.raises(SystemExit) as exit_info:
            plot(*names)
        assert exit_info.value.code == 2
        line = capsys.readouterr().err.strip()
        assert '\n' not in line and why in line and '--mix_protocols' in line
        assert sorted(p.name for p in tmp_path.rglob('*.png')) == before  # nothing written
    plot('mixed', '--mix_protocols')
    assert (tmp_path / 'mixed' / 'IS_FID.png').exists()


@pytest.mark.parametrize('where', ['G_loss.log/x.png', 'nowhere/x.png'])
def test_plot_logs_compare_out_in_no_folder_is_refused_before_any_figure(tmp_path, capsys,
                                                                        where):
    """--compare_out inside a file or a missing folder: the per-run figures were written,
    then the comparison failed with errno's text naming its temporary file (the outside
    attacker's round 13). Now one line naming --compare_out, before any figure."""
    import plot_logs
    for name in ('a', 'b'):
        write_jsonl(tmp_path / f'{name}_log.jsonl', stamped_records([None, None]))
        (tmp_path / name).mkdir()
        (tmp_path / name / 'G_loss.log').write_text('1: 1.0\n2: 2.0\n')
    out = tmp_path / 'a' / where
    with pytest.raises(SystemExit) as exit_info:
        plot_logs.main(['--logs_root', str(tmp_path), '--experiment_name', 'a', 'b',
                        '--compare_out', str(out)])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == (f'error: --compare_out {out}: {out.parent} is not a folder; give a path '
                    f'in an existing folder')
    assert not list(tmp_path.rglob('*.png')) and not list(tmp_path.rglob('*.tmp-*'))


def test_plot_logs_draws_odd_logs_without_matplotlibs_warnings(tmp_path):
    """A singular-value log of only -1 and NaN (no value a log axis can show): the figure
    was written beside matplotlib's two-line UserWarning with its source line (the outside
    attacker's round 13). The figure still; stderr empty (in a child: pytest would catch the
    warning itself)."""
    import subprocess
    (tmp_path / 'r').mkdir()
    (tmp_path / 'r' / 'G_loss.log').write_text('1: 1.0\n2: 2.0\n')
    (tmp_path / 'r' / 'G_x_sv0.log').write_text('1: -1.0\n2: nan\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, 'plot_logs.py'), '--logs_root',
                           str(tmp_path), '--experiment_name', 'r'], capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, '')
    assert (tmp_path / 'r' / 'G_singular_values.png').stat().st_size > 0


def test_a_write_into_no_folder_names_the_file_asked_for(tmp_path):
    """files.atomic_path, every writer's: a target in a missing folder or under a file is
    one line naming the target, not its temporary file."""
    (tmp_path / 'f').write_text('x')
    for target in (tmp_path / 'f' / 'x.png', tmp_path / 'none' / 'x.png'):
        with pytest.raises(files.FileError, match=f'cannot write {target}: .* must be a folder'):
            with files.atomic_open(str(target)) as f:
                f.write(b'x')


@pytest.mark.parametrize('damage,where', [
    ('nan_mu', 'moments'), ('asymmetric', 'moments'), ('negative_count', 'open'),
    ('no_class', 'open')])
def test_damaged_per_class_moments_give_no_number(tmp_path, damage, where):
    """A per-class file is checked as a moments file is: its counts when opened, each class's
    mu and sigma (check_moments) when read, so intra-FID never averages a NaN or a non-PSD
    class into a number."""
    import h5py
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2, 20, 4))
    path = tmp_path / 'm.hdf5'
    with h5py.File(path, 'w') as h5:
        h5.attrs['backend'] = 'torchvision'
        counts = np.array([20, 20]) if damage != 'no_class' else np.array([1, 0])
        h5['count'] = -counts if damage == 'negative_count' else counts
        h5['mu'] = rows.mean(1)
        h5['sigma'] = np.stack([np.cov(r, rowvar=False) for r in rows])
        if damage == 'nan_mu':
            h5['mu'][1, 2] = np.nan
        if damage == 'asymmetric':
            h5['sigma'][1, 0, 3] += 1.0
    if where == 'open':
        with pytest.raises(inception_utils.InceptionMomentsError):
            inception_utils.PerClassMoments(str(path), 'torchvision')
        return
    reader = inception_utils.PerClassMoments(str(path), 'torchvision')
    reader.moments(0)  # the intact class reads
    with pytest.raises(inception_utils.InceptionMomentsError, match='class 1'):
        reader.moments(1)


def test_per_class_moments_of_another_class_count_are_refused_at_start_up(tmp_path,
                                                                          monkeypatch):
    import h5py

    from helpers import FakeInception
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((2, 20, 8))
    with h5py.File(tmp_path / inception_utils.per_class_moments_filename('S32'), 'w') as h5:
        h5.attrs['backend'] = 'torchvision'
        h5['count'] = np.array([20, 20])
        h5['mu'] = rows.mean(1)
        h5['sigma'] = np.stack([np.cov(r, rowvar=False) for r in rows])
    weights = tmp_path / 'w.pth'
    weights.write_bytes(b'stand-in')
    with pytest.raises(inception_utils.InceptionMomentsError, match='hold 2 classes, but the '
                       'dataset has 3'):
        inception_utils.prepare_metrics('S32', metrics='intraFID', data_root=str(tmp_path),
                                        weights_path=str(weights), n_classes=3)
    inception_utils.prepare_metrics('S32', metrics='intraFID', data_root=str(tmp_path),
                                    weights_path=str(weights), n_classes=2)


@pytest.mark.parametrize('damage', ['nan_mu', 'asymmetric'])
def test_damaged_per_class_moments_are_refused_at_start_up(tmp_path, monkeypatch, damage):
    """Every class is read and checked when the metrics are prepared (before training), not
    first at a test: a NaN mu or a non-symmetric sigma in class 1 fails now, naming it."""
    import h5py

    from helpers import FakeInception
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())
    rows = np.random.default_rng(1).standard_normal((2, 20, 8))
    with h5py.File(tmp_path / inception_utils.per_class_moments_filename('S32'), 'w') as h5:
        h5.attrs['backend'] = 'torchvision'
        h5['count'] = np.array([20, 20])
        h5['mu'] = rows.mean(1)
        h5['sigma'] = np.stack([np.cov(r, rowvar=False) for r in rows])
        if damage == 'nan_mu':
            h5['mu'][1, 2] = np.nan
        else:
            h5['sigma'][1, 0, 3] += 1.0
    weights = tmp_path / 'w.pth'
    weights.write_bytes(b'stand-in')
    with pytest.raises(inception_utils.InceptionMomentsError, match='class 1'):
        inception_utils.prepare_metrics('S32', metrics='intraFID', data_root=str(tmp_path),
                                        weights_path=str(weights), n_classes=2)


def test_classes_that_intra_fid_leaves_out_are_named_at_start_up(tmp_path, monkeypatch, capsys):
    """A class of fewer than 2 images has no covariance, so intraFID averages over the others:
    the start-up says which (a count edited to 0 left one out silently)."""
    import h5py

    from helpers import FakeInception
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())
    rows = np.random.default_rng(1).standard_normal((3, 20, 8))
    with h5py.File(tmp_path / inception_utils.per_class_moments_filename('S32'), 'w') as h5:
        h5.attrs['backend'] = 'torchvision'
        h5['count'] = np.array([20, 0, 1])
        h5['mu'] = rows.mean(1)
        h5['sigma'] = np.stack([np.cov(r, rowvar=False) for r in rows])
    weights = tmp_path / 'w.pth'
    weights.write_bytes(b'stand-in')
    capsys.readouterr()
    inception_utils.prepare_metrics('S32', metrics='intraFID', data_root=str(tmp_path),
                                    weights_path=str(weights), n_classes=3)
    assert ('hold 2 class(es) of fewer than 2 images (class 1, 2): intraFID leaves them out'
            in capsys.readouterr().out)


def test_moments_that_overflow_give_inf_without_a_warning():
    """Finite means of 1e200 (the outside attacker's round 10): the distance overflows to inf,
    which the callers refuse in one line; numpy's overflow warning printed two more lines and
    the source line before it."""
    import warnings
    rng = np.random.default_rng(0)
    sigma = np.cov(rng.normal(size=(64, 8)).T)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        fid = metrics.numpy_calculate_frechet_distance(np.full(8, 1e200), sigma, np.zeros(8),
                                                       sigma)
    assert fid == float('inf')
