"""The public functions the release's users call work on a config built the release's way:
parse, update_config_roots, the four keys its train.py derives, skip_init/no_optim for sampling
(no 'device' entry beyond the flag's default '', nothing prepare_config adds).

Also: every name a release user imports from utils, inception_utils, train_fns or the model
files keeps working from there.
"""
import importlib
import os

import numpy as np
import pytest
import torch

import BigGAN
import inception_utils
import train_fns
import utils
from helpers import FakeInception

FLAGS = ['--dataset', 'S32', '--G_ch', '4', '--D_ch', '4', '--batch_size', '4', '--G_attn', '0',
         '--D_attn', '0', '--dim_z', '8', '--G_shared', '--shared_dim', '8', '--hier', '--ema',
         '--use_ema', '--num_D_steps', '1', '--G_init', 'N02', '--D_init', 'N02', '--mybn',
         '--num_inception_images', '12', '--num_standing_accumulations', '2',
         '--accumulate_stats']


def release_config(root, sampling=False):
    """The config exactly as the release's train.py (or sample.py) builds it."""
    parser = utils.prepare_parser()
    if sampling:
        parser = utils.add_sample_parser(parser)
    config = vars(parser.parse_args(FLAGS + ['--base_root', str(root)]))
    config['resolution'] = utils.imsize_dict[config['dataset']]
    config['n_classes'] = utils.nclass_dict[config['dataset']]
    config['G_activation'] = utils.activation_dict[config['G_nl']]
    config['D_activation'] = utils.activation_dict[config['D_nl']]
    config = utils.update_config_roots(config)
    if sampling:
        config['skip_init'] = True
        config['no_optim'] = True
    return config


def test_release_style_training_calls(tmp_path, monkeypatch):
    config = release_config(tmp_path)
    assert config['device'] == ''
    utils.prepare_root(config)
    model = importlib.import_module(config['model'])
    torch.manual_seed(0)
    G, D = model.Generator(**config), model.Discriminator(**config)
    G_ema = model.Generator(**{**config, 'skip_init': True, 'no_optim': True})
    ema = utils.ema(G, G_ema, config['ema_decay'], config['ema_start'])
    GD = model.G_D(G, D)
    state_dict = {'itr': 0, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
                  'best_FID': 999999, 'config': config}
    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device='cpu')
    fixed_z, fixed_y = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'])
    fixed_z.sample_()
    fixed_y.sample_()

    # The step.
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (4,))
    before = G.linear.weight.detach().clone()
    state_dict['itr'] += 1
    metrics = train(x, y)
    assert set(metrics) == {'G_loss', 'D_loss_real', 'D_loss_fake'}
    assert all(np.isfinite(v) for v in metrics.values())
    assert not torch.equal(before, G.linear.weight)

    # Checkpoint and sheets.
    name = 'release_style'
    train_fns.save_and_sample(G, D, G_ema, z_, y_, fixed_z, fixed_y, state_dict, config, name)
    assert os.path.isfile(f"{config['weights_root']}/{name}/G.pth")
    assert os.path.isfile(f"{config['samples_root']}/{name}/fixed_samples1.jpg")
    assert os.path.isfile(f"{config['samples_root']}/{name}/1/interpZY0.jpg")

    # Metrics the release's way: prepare_inception_metrics(dataset, parallel, no_fid) with the
    # moments in the working directory, and test() logging its tuple.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: FakeInception())
    real = np.random.default_rng(0).uniform(-1, 1, (40, 8))
    inception_utils.save_inception_moments('S32_inception_moments.npz', real.mean(0),
                                           np.cov(real, rowvar=False), 'torchvision')
    get_inception_metrics = inception_utils.prepare_inception_metrics(
        config['dataset'], config['parallel'], config['no_fid'])
    sample = lambda: utils.sample(G_ema, z_, y_, config)  # noqa: E731 (as the release)
    images, labels = sample()
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)
    test_log = utils.MetricsLogger(f"{config['logs_root']}/{name}_log.jsonl")
    train_fns.test(G, D, G_ema, z_, y_, state_dict, config, sample, get_inception_metrics,
                   name, test_log)
    assert state_dict['best_IS'] > 0 and state_dict['best_FID'] < 999999
    assert os.path.isfile(f"{config['weights_root']}/{name}/G_best0.pth")

    # Sheets, standing stats and loading, called directly.
    utils.sample_sheet(G_ema, classes_per_sheet=utils.classes_per_sheet_dict['S32'],
                       num_classes=config['n_classes'], samples_per_class=2,
                       parallel=config['parallel'], samples_root=config['samples_root'],
                       experiment_name=name, folder_number=7, z_=z_)
    utils.interp_sheet(G_ema, num_per_sheet=2, num_midpoints=2,
                       num_classes=config['n_classes'], parallel=config['parallel'],
                       samples_root=config['samples_root'], experiment_name=name,
                       folder_number=7, sheet_number=0, fix_z=False, fix_y=True)
    assert os.path.isfile(f"{config['samples_root']}/{name}/7/samples0.jpg")
    assert os.path.isfile(f"{config['samples_root']}/{name}/7/interpZ0.jpg")
    utils.accumulate_standing_stats(G_ema, z_, y_, config['n_classes'],
                                    config['num_standing_accumulations'])
    assert G_ema.output_layer[0].bn.accumulation_counter.item() == 2

    # Loading into a model built for sampling, as the release's sample.py does.
    sconfig = release_config(tmp_path, sampling=True)
    G2 = model.Generator(**sconfig)
    loaded = {'itr': 0}
    utils.load_weights(G2 if not sconfig['use_ema'] else None, None, loaded,
                       sconfig['weights_root'], name, sconfig['load_weights'] or None,
                       G2 if sconfig['use_ema'] else None, strict=False, load_optim=False)
    assert loaded['itr'] == 1
    saved = utils.torch_load(f"{config['weights_root']}/{name}/G_ema.pth")
    for k, v in G2.state_dict().items():
        assert torch.equal(v, saved[k]), k


# Names a release user imports, by module: they must keep working from there.
RELEASE_NAMES = {
    'utils': ['prepare_parser', 'add_sample_parser', 'activation_dict', 'dset_dict',
              'imsize_dict', 'root_dict', 'nclass_dict', 'classes_per_sheet_dict',
              'CenterCropLongEdge', 'RandomCropLongEdge', 'MultiEpochSampler',
              'get_data_loaders', 'seed_rng', 'update_config_roots', 'prepare_root', 'ema',
              'ortho', 'default_ortho', 'toggle_grad', 'join_strings', 'save_weights',
              'load_weights', 'MetricsLogger', 'MyLogger', 'write_metadata', 'progress',
              'sample', 'sample_sheet', 'interp', 'interp_sheet', 'get_SVs',
              'name_from_config', 'count_parameters', 'sample_1hot', 'Distribution',
              'print_grad_norms', 'query_gpu', 'prepare_z_y', 'initiate_standing_stats',
              'accumulate_standing_stats'],
    'inception_utils': ['WrapInception', 'torch_calculate_frechet_distance', 'torch_cov',
                        'numpy_calculate_frechet_distance', 'calculate_inception_score',
                        'accumulate_inception_activations', 'load_inception_net',
                        'prepare_inception_metrics'],
    'train_fns': ['dummy_training_function', 'GAN_training_function', 'save_and_sample',
                  'test'],
    'layers': ['proj', 'gram_schmidt', 'power_iteration', 'SN', 'SNConv2d', 'SNLinear',
               'SNEmbedding', 'Attention', 'fused_bn', 'manual_bn', 'myBN', 'groupnorm',
               'ccbn', 'bn', 'GBlock', 'DBlock', 'identity'],
    'BigGAN': ['G_arch', 'D_arch', 'Generator', 'Discriminator', 'G_D'],
    'BigGANdeep': ['G_arch', 'D_arch', 'Generator', 'Discriminator', 'G_D'],
    'losses': ['generator_loss', 'discriminator_loss', 'loss_hinge_dis', 'loss_hinge_gen',
               'loss_dcgan_dis', 'loss_dcgan_gen'],
    'datasets': ['ImageFolder', 'ILSVRC_HDF5', 'CIFAR10', 'CIFAR100', 'is_image_file',
                 'find_classes', 'make_dataset', 'default_loader'],
    'train': ['run', 'main'],
    'sample': ['run', 'main'],
}


@pytest.mark.parametrize('module', sorted(RELEASE_NAMES))
def test_release_names_importable(module):
    mod = importlib.import_module(module)
    missing = [n for n in RELEASE_NAMES[module] if not hasattr(mod, n)]
    assert not missing
    # The table dicts the release derived from its five parallel dicts agree with ours.
    if module == 'utils':
        assert mod.dset_dict['I128_hdf5'].__name__ == 'ILSVRC_HDF5'
        assert mod.imsize_dict['I128'] == 128 and mod.nclass_dict['C100'] == 100
        assert mod.prepare_parser is __import__('flags').prepare_parser


def test_G_D_matches_G_then_D(tmp_path):
    # The release's G_D(z, gy, x, dy) is D on G(z, G.shared(gy)) then on the reals x.
    config = release_config(tmp_path)
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config).eval(), BigGAN.Discriminator(**config).eval()
    z, gy = torch.randn(3, G.dim_z), torch.tensor([0, 4, 9])
    x, dy = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([1, 2])
    with torch.no_grad():
        D_fake, D_real = BigGAN.G_D(G, D)(z, gy, x, dy)
        G_z = G(z, G.shared(gy))
        assert torch.allclose(D_fake, D(G_z, gy), atol=1e-5)
        assert torch.allclose(D_real, D(x, dy), atol=1e-5)
        D_out, G_z2 = BigGAN.G_D(G, D)(z, gy, return_G_z=True)
    assert torch.allclose(G_z2, G_z, atol=1e-6) and torch.allclose(D_out, D_fake, atol=1e-5)


def test_sampler_names_and_aliases():
    assert utils.sample_1hot is utils.sample_classes
    assert utils.Distribution is utils.attach_sampler
    torch.manual_seed(0)
    y = utils.sample_classes(500, 7)
    assert y.dtype == torch.int64 and y.shape == (500,)
    assert set(y.tolist()) == set(range(7))
    z = utils.attach_sampler(torch.zeros(4000), 'normal', mean=3.0, var=0.5)
    z.sample_()
    assert type(z) is torch.Tensor
    assert abs(z.mean().item() - 3.0) < 0.05 and abs(z.std().item() - 0.5) < 0.05


@pytest.mark.parametrize('shape,rowvar', [((50, 4), False), ((4, 50), True), ((30,), False),
                                          ((1, 30), True)])
def test_torch_cov_matches_numpy(shape, rowvar):
    m = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    before = m.clone()
    got = inception_utils.torch_cov(m, rowvar=rowvar)
    np.testing.assert_allclose(got.numpy(), np.cov(m.numpy(), rowvar=rowvar), rtol=1e-10)
    assert torch.equal(m, before)
    with pytest.raises(ValueError):
        inception_utils.torch_cov(torch.zeros(2, 2, 2))


def test_print_grad_norms(capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2),
                              torch.nn.Linear(2, 2))
    net(torch.randn(5, 3))[:, :1].sum().backward()
    net[2].bias.grad = None  # a parameter without a gradient must not crash it
    utils.print_grad_norms(net)
    lines = capsys.readouterr().out.splitlines()
    params = dict(net.named_parameters())
    assert sorted(line.split(':')[0] for line in lines) == sorted(params)
    assert lines[0] == (f"2.bias: grad None, norm {params['2.bias'].norm().item():3.3e}, "
                        f"shape (2,)")
    norms = [float(line.split('grad ')[1].split(',')[0]) for line in lines[1:]]
    assert norms == sorted(norms)
    for line in lines[1:]:
        name = line.split(':')[0]
        p = params[name]
        expected = np.sqrt((p.grad.double().numpy() ** 2).sum())
        assert float(line.split('grad ')[1].split(',')[0]) == pytest.approx(expected, rel=1e-3)
        assert line.endswith(f'shape {tuple(p.shape)}')


def test_query_gpu_prints_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    utils.query_gpu([0])
    assert capsys.readouterr().out == 'query_gpu: no GPU (CUDA is not available)\n'
    if torch.cuda.device_count():
        monkeypatch.undo()
        utils.query_gpu(0)
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1 and out[0].startswith('GPU 0 ')
