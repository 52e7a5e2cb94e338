"""Tests for inception_utils and calculate_inception_moments (CPU, fast)."""
import json
import os
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import files
import inception_utils as iu
from helpers import FakeInception

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')


# ----------------------------------------------------------------------------
# Helpers.

def release_inception_score(pred, num_splits):
    """The release's IS formula, written out directly."""
    scores = []
    size = pred.shape[0] // num_splits
    for k in range(num_splits):
        part = pred[k * size:(k + 1) * size]
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part) - np.log(py))).sum(1).mean()
        scores.append(np.exp(kl))
    return np.mean(scores), np.std(scores)


def eigen_reference_fid(mu1, s1, mu2, s2):
    """FID from the eigenvalues of sigma1 @ sigma2 (general solver)."""
    ev = np.linalg.eigvals(s1 @ s2)
    diff = mu1 - mu2
    return (diff @ diff + np.trace(s1) + np.trace(s2)
            - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def scipy_fid(mu1, s1, mu2, s2):
    """The release's numpy route (scipy sqrtm)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def random_cov(dim, cond, rng):
    """SPD matrix with a log-uniform spectrum of the given condition."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.logspace(0, -np.log10(cond), dim)) @ q.T


class CountingSampler:
    """sample() returning fixed-size batches of random images; counts calls."""

    def __init__(self, batch=2, size=8, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        self.batch, self.size, self.calls = batch, size, 0

    def __call__(self):
        self.calls += 1
        x = torch.rand(self.batch, 3, self.size, self.size,
                       generator=self.gen) * 2 - 1
        return x, torch.zeros(self.batch, dtype=torch.long)


# ----------------------------------------------------------------------------
# Inception Score.

def test_is_uniform_predictions_is_one():
    pred = np.full((100, 10), 0.1)
    mean, std = iu.calculate_inception_score(pred, num_splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize('k', [1, 2, 7, 10])
def test_is_one_hot_over_k_classes_is_k(k):
    labels = np.arange(10 * k * 3) % k
    pred = np.eye(12)[labels]
    mean, std = iu.calculate_inception_score(pred, num_splits=10)
    assert mean == pytest.approx(k, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_is_matches_release_formula_and_streams():
    rng = np.random.default_rng(0)
    pred = rng.dirichlet(np.full(20, 0.3), size=103)
    expected = release_inception_score(pred, 10)
    assert iu.calculate_inception_score(pred, 10) == pytest.approx(expected)
    # Streaming in uneven chunks, straddling split boundaries, is identical.
    stats = iu.InceptionScoreStats(103, 10)
    for chunk in np.array_split(pred, [7, 8, 40, 41, 99]):
        stats.update(torch.from_numpy(chunk))
    assert stats.result() == pytest.approx(expected)


# ----------------------------------------------------------------------------
# FID.

@pytest.mark.parametrize('fid_fn', [iu.numpy_calculate_frechet_distance,
                                    iu.torch_calculate_frechet_distance])
def test_fid_matches_eigen_reference_and_scipy(fid_fn):
    rng = np.random.default_rng(1)
    for dim in (2, 5, 16):
        a, b = rng.standard_normal((2, 3 * dim, dim))
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        mu1, mu2 = rng.standard_normal((2, dim))
        got = float(fid_fn(mu1, s1, mu2, s2))
        assert got == pytest.approx(eigen_reference_fid(mu1, s1, mu2, s2),
                                    rel=1e-10)
        assert got == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-8)


@pytest.mark.parametrize('fid_fn', [iu.numpy_calculate_frechet_distance,
                                    iu.torch_calculate_frechet_distance])
def test_fid_identical_and_shifted_gaussians(fid_fn):
    rng = np.random.default_rng(2)
    s = random_cov(12, 1e3, rng)
    mu = rng.standard_normal(12)
    assert float(fid_fn(mu, s, mu, s)) == pytest.approx(0.0, abs=1e-9)
    shift = rng.standard_normal(12)
    assert float(fid_fn(mu, s, mu + shift, s)) == pytest.approx(
        shift @ shift, rel=1e-9)


@pytest.mark.parametrize('fid_fn', [iu.numpy_calculate_frechet_distance,
                                    iu.torch_calculate_frechet_distance])
def test_fid_ill_conditioned_and_singular_no_nan(fid_fn):
    rng = np.random.default_rng(3)
    dim = 64
    s1, s2 = random_cov(dim, 1e5, rng), random_cov(dim, 1e5, rng)
    mu1, mu2 = rng.standard_normal((2, dim))
    got = float(fid_fn(mu1, s1, mu2, s2))
    assert np.isfinite(got)
    assert got == pytest.approx(eigen_reference_fid(mu1, s1, mu2, s2),
                                rel=1e-6)
    # Rank-deficient covariances (fewer images than dimensions).
    a, b = rng.standard_normal((2, 10, dim))
    r1, r2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    got = float(fid_fn(mu1, r1, mu2, r2))
    assert np.isfinite(got)
    assert got == pytest.approx(eigen_reference_fid(mu1, r1, mu2, r2),
                                rel=1e-6)


def test_torch_fid_accepts_tensors_and_returns_float64():
    rng = np.random.default_rng(4)
    s = torch.from_numpy(random_cov(6, 10, rng)).float()
    mu = torch.zeros(6)
    out = iu.torch_calculate_frechet_distance(mu, s, mu + 1, s)
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx(6.0, rel=1e-6)


# ----------------------------------------------------------------------------
# KID and streaming statistics.

def direct_mmd2(x, y):
    """Unbiased polynomial-kernel MMD^2 by explicit double loops."""
    d, m = x.shape[1], x.shape[0]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2 * sxy / m ** 2


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 4))
    y = rng.standard_normal((12, 4)) + 0.5
    # A subset as large as the sets is a permutation: MMD is unchanged.
    mean, std = iu.calculate_kid(x, y, num_subsets=3, subset_size=12)
    assert mean == pytest.approx(direct_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    # Proper subsets: each score is the direct MMD of the chosen rows.
    mean, _ = iu.calculate_kid(x, y, num_subsets=4, subset_size=5, seed=3)
    rng = np.random.default_rng(3)
    scores = []
    for _ in range(4):
        xi = x[rng.choice(12, 5, replace=False)]
        yi = y[rng.choice(12, 5, replace=False)]
        scores.append(direct_mmd2(xi, yi))
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)


def test_feature_stats_equal_numpy():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((57, 5)) * 0.1 + 1e3  # big mean, small spread
    stats = iu.FeatureStats(keep=100)
    for chunk in np.array_split(x, [1, 2, 20, 33]):
        stats.update(torch.from_numpy(chunk))
    assert stats.n == 57
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False),
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(stats.feats, x.astype(np.float32))


def test_feature_stats_reservoir_is_bounded_subset():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    stats = iu.FeatureStats(keep=30, seed=1)
    for chunk in np.array_split(x, 9):
        stats.update(chunk)
    kept = stats.feats
    assert kept.shape == (30, 3)
    rows = {tuple(r) for r in x}
    assert all(tuple(r) in rows for r in kept)
    assert len({tuple(r) for r in kept}) == 30
    # Not just the first rows: the reservoir samples the whole stream.
    assert any(tuple(r) not in {tuple(q) for q in x[:30]} for r in kept)


# ----------------------------------------------------------------------------
# Networks and weights.

def test_tf_fid_state_dict_matches_fixture():
    with open(os.path.join(FIXTURES, 'fid_inception_keys.json')) as f:
        fixture = json.load(f)
    net = iu.build_inception_net('tf_fid')
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert shapes == fixture['state_dict']
    assert fixture['file'] == iu.WEIGHT_FILES['tf_fid']
    assert net.fc.out_features == fixture['num_classes']


def test_torchvision_state_dict_keys():
    sd = iu.build_inception_net('torchvision').state_dict()
    # The release's file holds the auxiliary classifier too.
    assert any(k.startswith('AuxLogits.') for k in sd)
    assert tuple(sd['fc.weight'].shape) == (1000, 2048)


class _Capture(nn.Module):
    """Identity layer that records its input."""

    def forward(self, x):
        """Remember x and pass it on."""
        self.seen = x
        return x


def _stub_torchvision_net():
    """Object with Inception3's layer names: identities, a capturing stem."""
    stub = nn.Module()
    for name in ('Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1',
                 'Conv2d_4a_3x3', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d',
                 'Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e',
                 'Mixed_7a', 'Mixed_7b', 'Mixed_7c'):
        setattr(stub, name, nn.Identity())
    stub.Conv2d_1a_3x3 = _Capture()
    stub.fc = nn.Linear(3, 4)
    return stub


def test_torchvision_preprocessing_is_the_releases():
    stub = _stub_torchvision_net()
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    iu.WrapInception(stub)(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1)
    expected = torch.nn.functional.interpolate(
        ((x + 1) / 2 - mean) / std, size=(299, 299), mode='bilinear',
        align_corners=True)
    torch.testing.assert_close(stub.Conv2d_1a_3x3.seen, expected)


def test_tf_fid_preprocessing_is_pytorch_fids():
    seen = {}

    def stub(x):
        seen['x'] = x
        return x, x

    x = torch.rand(2, 3, 20, 20) * 2 - 1
    iu.WrapFIDInception(stub)(x)
    expected = torch.nn.functional.interpolate(
        x, size=(299, 299), mode='bilinear', align_corners=False)
    torch.testing.assert_close(seen['x'], expected)
    # 299x299 inputs pass through untouched.
    x = torch.rand(1, 3, 299, 299)
    iu.WrapFIDInception(stub)(x)
    assert seen['x'] is x


def _randomise_bn(net, seed):
    """Give BN running stats non-trivial values so loading them matters."""
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.running_mean.numel()
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


@pytest.mark.parametrize('backend,classes', [('torchvision', 1000),
                                             ('tf_fid', 1008)])
def test_weights_round_trip_and_forward_shapes(tmp_path, backend, classes):
    torch.manual_seed(0)
    net = iu.build_inception_net(backend)
    _randomise_bn(net, 0)
    state = net.state_dict()
    if backend == 'tf_fid':
        # The public file lacks num_batches_tracked: that must be tolerated.
        state = {k: v for k, v in state.items()
                 if not k.endswith('num_batches_tracked')}
    path = tmp_path / iu.WEIGHT_FILES[backend]
    torch.save(state, path)
    reference = iu.wrap_inception_net(net, backend).eval()
    loaded = iu.load_inception_net(backend=backend, weights_path=str(path),
                                   device='cpu')
    assert not loaded.training
    # One small image keeps the test fast; the wrapper resizes it to 299.
    x = torch.rand(1, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        pool, logits = loaded(x)
        ref_pool, ref_logits = reference(x)
    assert pool.shape == (1, 2048)
    assert logits.shape == (1, classes)
    assert torch.equal(pool, ref_pool)
    assert torch.equal(logits, ref_logits)


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / 'wrong.pth'
    torch.save({'fc.weight': torch.zeros(3, 3)}, path)
    with pytest.raises(iu.InceptionWeightsError, match='--inception_weights'):
        iu.load_inception_net(backend='tf_fid', weights_path=str(path),
                              device='cpu')


@pytest.mark.parametrize('key', [3, ('fc.weight',), None, b'fc.weight'])
def test_weights_keyed_by_no_name_are_refused(tmp_path, key):
    """An Inception weights file with a key that is not a string: load_state_dict's
    AttributeError traceback in evaluate.py, train.py and sample.py (the outside attacker's
    round 13). Now one line naming the file and the flag."""
    path = tmp_path / 'odd.pth'
    state = iu.build_inception_net('torchvision').state_dict()
    state[key] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(iu.InceptionWeightsError, match='tensors by name') as err:
        iu.load_inception_net(backend='torchvision', weights_path=str(path), device='cpu')
    _assert_one_line_weights_error(err, path)



@pytest.mark.parametrize('kind', ['fifo', 'device'])
def test_weights_that_are_no_regular_file_are_named_so(tmp_path, kind):
    """A FIFO or a link to /dev/zero given as --inception_weights was 'not found' with advice
    to pass the path already given (the outside attacker's round 14)."""
    path = tmp_path / 'w.pth'
    if kind == 'fifo':
        os.mkfifo(path)
    else:
        path.symlink_to('/dev/zero')
    with pytest.raises(files.FileError, match='is not a regular file') as err:
        iu.check_inception_weights('torchvision', str(path))
    assert str(path) in str(err.value) and '\n' not in str(err.value)


def test_complex_weights_are_refused_without_torchs_warning(tmp_path):
    """A complex tensor in the Inception weights was cast to real with torch's warning and
    used (round 14): one line now."""
    import warnings
    path = tmp_path / 'complex.pth'
    state = iu.build_inception_net('torchvision').state_dict()
    state['fc.weight'] = state['fc.weight'].to(torch.complex64)
    torch.save(state, path)
    with warnings.catch_warnings(record=True) as shown, \
            pytest.raises(iu.InceptionWeightsError, match='complex tensor') as err:
        warnings.simplefilter('always')
        iu.load_inception_net(backend='torchvision', weights_path=str(path), device='cpu')
    assert shown == [], [str(w.message) for w in shown]
    _assert_one_line_weights_error(err, path)

def _assert_one_line_weights_error(err, path):
    """The message is one line naming the file, the place and the flag."""
    msg = str(err.value)
    assert '\n' not in msg
    assert str(path) in msg
    assert '--inception_weights PATH' in msg


@pytest.mark.parametrize('backend', iu.BACKENDS)
def test_missing_explicit_weights_one_line_error(tmp_path, backend):
    path = tmp_path / 'nowhere' / 'weights.pth'
    with pytest.raises(iu.InceptionWeightsError) as err:
        iu.check_inception_weights(backend, str(path))
    _assert_one_line_weights_error(err, path)


def test_missing_default_weights_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))

    def no_network(path):
        raise OSError('no network')

    monkeypatch.setattr(iu, '_download_torchvision_weights', no_network)
    for backend in iu.BACKENDS:
        expected = tmp_path / 'checkpoints' / iu.WEIGHT_FILES[backend]
        assert iu.default_weights_path(backend) == str(expected)
        with pytest.raises(iu.InceptionWeightsError) as err:
            iu.load_inception_net(backend=backend, device='cpu')
        _assert_one_line_weights_error(err, expected)
        assert iu.WEIGHT_FILES[backend] in str(err.value)


# ----------------------------------------------------------------------------
# Moments files.

@pytest.mark.parametrize('dataset,name', [
    ('C10_hdf5', 'C10_inception_moments.npz'),
    ('I128_hdf5', 'I128_inception_moments.npz'),
    ('h5df_hdf5', 'h5df_inception_moments.npz'),
    ('hdf5_hdf5', 'hdf5_inception_moments.npz'),
    ('C100', 'C100_inception_moments.npz'),
])
def test_moments_filename_removes_suffix_only(dataset, name):
    assert iu.moments_filename(dataset) == name


def test_moments_round_trip_and_backend_refusal(tmp_path):
    rng = np.random.default_rng(8)
    mu, sigma = rng.standard_normal(4), random_cov(4, 10, rng)
    feats = rng.standard_normal((6, 4))
    path = tmp_path / 'C10_inception_moments.npz'
    iu.save_inception_moments(str(path), mu, sigma, 'tf_fid', feats=feats)
    assert sorted(os.listdir(tmp_path)) == ['C10_inception_moments.npz']
    got = iu.load_inception_moments('C10_hdf5', str(tmp_path), 'tf_fid',
                                    need_feats=True)
    np.testing.assert_array_equal(got['mu'], mu)
    np.testing.assert_array_equal(got['sigma'], sigma)
    np.testing.assert_array_equal(got['feats'], feats.astype(np.float32))
    with pytest.raises(iu.InceptionMomentsError) as err:
        iu.load_inception_moments('C10_hdf5', str(tmp_path), 'torchvision')
    msg = str(err.value)
    assert '\n' not in msg and 'tf_fid' in msg and 'torchvision' in msg


def test_release_moments_without_backend_are_torchvision(tmp_path):
    np.savez(tmp_path / 'I128_inception_moments.npz', mu=np.zeros(3),
             sigma=np.eye(3))
    got = iu.load_inception_moments('I128_hdf5', str(tmp_path))
    np.testing.assert_array_equal(got['sigma'], np.eye(3))
    with pytest.raises(iu.InceptionMomentsError, match='backend'):
        iu.load_inception_moments('I128_hdf5', str(tmp_path), 'tf_fid')
    with pytest.raises(iu.InceptionMomentsError, match='KID'):
        iu.load_inception_moments('I128_hdf5', str(tmp_path),
                                  need_feats=True)


def test_moments_data_root_first_then_cwd(tmp_path, monkeypatch):
    root, cwd = tmp_path / 'root', tmp_path / 'cwd'
    root.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    iu.save_inception_moments(str(cwd / 'C10_inception_moments.npz'),
                              np.zeros(2), np.eye(2), 'torchvision')
    assert iu.find_moments_file('C10', str(root)) == str(
        cwd / 'C10_inception_moments.npz')
    iu.save_inception_moments(str(root / 'C10_inception_moments.npz'),
                              np.ones(2), np.eye(2), 'torchvision')
    assert iu.find_moments_file('C10', str(root)) == str(
        root / 'C10_inception_moments.npz')


def test_missing_moments_names_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(iu.InceptionMomentsError) as err:
        iu.prepare_inception_metrics('C10_hdf5', False, data_root='mydata')
    msg = str(err.value)
    assert '\n' not in msg
    assert ('python calculate_inception_moments.py --dataset C10_hdf5 '
            '--data_root mydata') in msg


# ----------------------------------------------------------------------------
# Activations and the metrics closure.

def test_accumulate_gives_exactly_the_number_asked():
    torch.manual_seed(0)
    net, sample = FakeInception(), CountingSampler(batch=4)
    pool, probs, labels = iu.accumulate_inception_activations(sample, net, 10)
    assert pool.shape == (10, 8) and probs.shape == (10, 5) and labels.shape == (10,)
    torch.testing.assert_close(probs.sum(1), torch.ones(10))
    assert sample.calls == 3


def test_inception_runs_in_float32_under_autocast():
    # G may sample under --amp; the features compared with float32 moments must not.
    net = FakeInception()
    plain = iu.accumulate_inception_activations(CountingSampler(batch=4), net, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = iu.accumulate_inception_activations(CountingSampler(batch=4), net, 8)
    for a, b in zip(plain, amp):
        assert b.dtype == a.dtype
        assert torch.equal(a, b)


@pytest.fixture
def fake_metrics_setup(tmp_path, monkeypatch):
    """Moments for FakeInception's 8-d features and a patched network loader."""
    torch.manual_seed(0)
    net = FakeInception()
    monkeypatch.setattr(iu, 'load_inception_net', lambda *a, **k: net)
    rng = np.random.default_rng(9)
    real = rng.uniform(-1, 1, (40, 8))
    iu.save_inception_moments(
        str(tmp_path / 'C10_inception_moments.npz'), real.mean(0),
        np.cov(real, rowvar=False), 'torchvision', feats=real)
    return net, str(tmp_path), real


def test_get_inception_metrics_matches_parts(fake_metrics_setup):
    net, root, real = fake_metrics_setup
    get_metrics = iu.prepare_inception_metrics('C10_hdf5', False,
                                               data_root=root)
    is_mean, is_std, fid = get_metrics(CountingSampler(batch=3), 11,
                                       num_splits=2, prints=False)
    pool, probs, _ = iu.accumulate_inception_activations(CountingSampler(batch=3), net, 11)
    probs = probs.double().numpy()
    assert (is_mean, is_std) == pytest.approx(
        release_inception_score(probs, 2), rel=1e-6)
    pool = pool.double().numpy()
    expected = iu.numpy_calculate_frechet_distance(
        pool.mean(0), np.cov(pool, rowvar=False), real.mean(0),
        np.cov(real, rowvar=False))
    assert isinstance(fid, float)
    assert fid == pytest.approx(expected, rel=1e-9)
    fid_np = get_metrics(CountingSampler(batch=3), 11, num_splits=2,
                         prints=False, use_torch=False)[2]
    assert fid_np == pytest.approx(expected, rel=1e-9)


def test_get_inception_metrics_with_kid(fake_metrics_setup):
    net, root, real = fake_metrics_setup
    measure = iu.prepare_metrics('C10_hdf5', False, data_root=root, kid=True,
                                 kid_subset_size=12)
    out = measure(CountingSampler(batch=4), 12, num_splits=3, prints=False)
    assert set(out) == {'IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std', 'protocol'}
    assert all(np.isfinite(v) for k, v in out.items() if k != 'protocol')
    # KID of the generated pool features against the stored real ones: 100 subsets of
    # 12 rows (all generated rows, 12 of the 40 real), each an MMD^2 by double loops.
    pool = iu.accumulate_inception_activations(
        CountingSampler(batch=4), net, 12)[0].double().numpy()
    rng = np.random.default_rng(0)
    scores = [direct_mmd2(pool[rng.choice(12, 12, replace=False)],
                          real[rng.choice(40, 12, replace=False)]) for _ in range(100)]
    # The stored real features are float32.
    assert out['KID_mean'] == pytest.approx(np.mean(scores), rel=1e-6)
    assert out['KID_std'] == pytest.approx(np.std(scores), rel=1e-5)
    # The release's entry point gives the same IS and FID as its tuple.
    release = iu.prepare_inception_metrics('C10_hdf5', False, data_root=root)
    assert release(CountingSampler(batch=4), 12, num_splits=3, prints=False) == pytest.approx(
        (out['IS_mean'], out['IS_std'], out['FID']))


def test_no_fid_needs_no_moments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(iu, 'load_inception_net', lambda *a, **k: FakeInception())
    get_metrics = iu.prepare_inception_metrics(
        'C10_hdf5', False, no_fid=True, data_root=str(tmp_path))
    is_mean, _, fid = get_metrics(CountingSampler(), 4, num_splits=2,
                                  prints=False)
    assert fid == 9999.0 and np.isfinite(is_mean)


# ----------------------------------------------------------------------------
# calculate_inception_moments.py.

@pytest.mark.parametrize('hdf5', [False, True])
def test_calculate_inception_moments_run(tmp_path, monkeypatch, hdf5):
    """Moments of the images the loader gives; an HDF5 loader's uint8 batches reach the network
    as the release's floats, bit for bit."""
    import calculate_inception_moments as cim

    if hdf5:
        pixels = torch.randint(0, 256, (13, 3, 8, 8), dtype=torch.uint8)
        images = ((pixels.float() / 255) - 0.5) * 2  # the release's normalisation
    else:
        pixels = images = torch.rand(13, 3, 8, 8) * 2 - 1
    seen = {}

    def get_data_loaders(**config):
        seen.update(config)
        data = torch.utils.data.TensorDataset(pixels, torch.zeros(13))
        return [torch.utils.data.DataLoader(data, batch_size=5)]

    # The dataset checks pass (S8 is not in the real table) and the loader yields the
    # fake data.
    monkeypatch.setattr(cim, 'get_data_loaders', get_data_loaders)
    monkeypatch.setattr(cim, 'check_dataset', lambda config: None)
    monkeypatch.setattr(cim, 'check_training_set', lambda *a: None)
    torch.manual_seed(0)
    net, inputs = FakeInception(), []
    net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    monkeypatch.setattr(iu, 'check_inception_weights', lambda *a: 'x')
    monkeypatch.setattr(iu, 'load_inception_net', lambda *a, **k: net)
    config = vars(cim.prepare_parser().parse_args(
        ['--dataset', 'S8_hdf5', '--data_root', str(tmp_path),
         '--device', 'cpu', '--kid_feats', '5']))
    path = cim.run(config)
    assert torch.equal(torch.cat(inputs).view(torch.int32), images.view(torch.int32))
    assert path == str(tmp_path / 'S8_inception_moments.npz')
    assert seen['drop_last'] is False
    got = iu.load_inception_moments('S8_hdf5', str(tmp_path),
                                    need_feats=True)
    pool = images.flatten(1)[:, :8].double().numpy()
    np.testing.assert_allclose(got['mu'], pool.mean(0), rtol=1e-6)
    np.testing.assert_allclose(got['sigma'], np.cov(pool, rowvar=False),
                               rtol=1e-6, atol=1e-9)
    assert got['feats'].shape == (5, 8)


@pytest.mark.parametrize('per_class', [False, True])
def test_calculate_inception_moments_refuses_nan_features(tmp_path, monkeypatch, per_class):
    """Inception weights that give NaN features (a damaged --inception_weights): all-NaN
    moments and a per-class file were written, exit 0 (the outside attacker's round 13).
    Now one line blaming the weights, and no file written."""
    import calculate_inception_moments as cim

    images = torch.rand(13, 3, 8, 8) * 2 - 1

    def get_data_loaders(**config):
        data = torch.utils.data.TensorDataset(images, torch.zeros(13, dtype=torch.int64))
        return [torch.utils.data.DataLoader(data, batch_size=5)]
    monkeypatch.setattr(cim, 'get_data_loaders', get_data_loaders)
    monkeypatch.setattr(cim, 'check_dataset', lambda config: None)
    monkeypatch.setattr(cim, 'check_training_set', lambda *a: None)
    net = FakeInception()
    net.register_forward_hook(lambda module, args, out: tuple(t * float('nan') for t in out))
    monkeypatch.setattr(iu, 'check_inception_weights', lambda *a: 'x')
    monkeypatch.setattr(iu, 'load_inception_net', lambda *a, **k: net)
    argv = ['--dataset', 'S8_hdf5', '--data_root', str(tmp_path), '--device', 'cpu',
            '--n_classes', '1'] + (['--per_class'] if per_class else [])
    with pytest.raises(iu.MetricsError, match='weights are damaged; check --inception_weights'):
        cim.run(vars(cim.prepare_parser().parse_args(argv)))
    assert os.listdir(tmp_path) == []


def test_moments_holding_nan_are_never_written(tmp_path):
    """save_inception_moments, the one writer of moments files, refuses what every reader
    would refuse."""
    path = tmp_path / 'm.npz'
    for mu, sigma, feats in [(np.full(3, np.nan), np.eye(3), None),
                             (np.zeros(3), np.eye(3) * np.inf, None),
                             (np.zeros(3), np.eye(3), np.full((4, 3), np.nan))]:
        with pytest.raises(iu.MetricsError, match='was not written'):
            iu.save_inception_moments(str(path), mu, sigma, 'torchvision', feats)
    assert not path.exists()
