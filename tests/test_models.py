"""Models against the release's facts (state-dict keys, shapes, counts) and checkpoint
compatibility in both directions."""
import functools
import importlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import utils
from helpers import FIXTURES, tiny_config, tiny_models

REFERENCE = ['C10_ema', 'I128_bs256x8', 'I128_SNGAN', 'I128_deep']


def load_fixture(name):
    with open(os.path.join(FIXTURES, name + '.json')) as f:
        return json.load(f)


def build_meta(flags):
    """G and D for the release's flags, on the meta device (no memory, no init)."""
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(flags)))
    config['skip_init'] = True
    model = importlib.import_module(config['model'])
    with torch.device('meta'):
        return model.Generator(**config), model.Discriminator(**config)


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize('name', REFERENCE)
def test_reference_state_dicts(name):
    """G and D have the release's state-dict keys, shapes, parameter counts and dim_z."""
    ref = load_fixture(name)
    G, D = build_meta(ref['config_flags'])
    for net, key in [(G, 'G_state_dict'), (D, 'D_state_dict')]:
        ours, theirs = shapes(net), ref[key]
        assert sorted(set(ours) ^ set(theirs)) == [], key
        assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, key
    assert sum(p.numel() for p in G.parameters()) == ref['G_params']
    assert sum(p.numel() for p in D.parameters()) == ref['D_params']
    assert G.dim_z == ref['G_dim_z']


# ----------------------------------------------------------------------------
# Checkpoints.

def release_save(G, D, G_ema, folder, config, legacy=True):
    """Write files as the release did: plain torch.save (PyTorch 1.0's legacy format with
    pickle protocol 2 when legacy), nn.ReLU objects in the config, numpy best_IS/best_FID."""
    os.makedirs(folder)
    save = functools.partial(torch.save, _use_new_zipfile_serialization=not legacy,
                             pickle_protocol=2)
    for name, obj in [('G', G.state_dict()), ('G_optim', G.optim.state_dict()),
                      ('D', D.state_dict()), ('D_optim', D.optim.state_dict()),
                      ('G_ema', G_ema.state_dict())]:
        save(obj, os.path.join(folder, name + '.pth'))
    release_config = dict(config, G_activation=nn.ReLU(inplace=False),
                          D_activation=nn.ReLU(inplace=False))
    save({'itr': 7, 'epoch': 1, 'save_num': 1, 'save_best_num': 0, 'best_IS': np.float64(1.5),
          'best_FID': np.float64(99.0), 'config': release_config},
         os.path.join(folder, 'state_dict.pth'))


def G_out(G, config):
    G.eval()
    torch.manual_seed(123)
    z = torch.randn(4, G.dim_z)
    y = torch.arange(4) % config['n_classes']
    with torch.no_grad():
        return G(z, G.shared(y))


@pytest.mark.parametrize('legacy', [True, False])
def test_release_checkpoint_loads_strict_and_matches(tmp_path, legacy):
    """A release-style checkpoint loads strictly, keeps itr etc., and gives the same outputs."""
    config = tiny_config('--G_attn', '32', '--D_attn', '32')
    G, D, G_ema = tiny_models(config, seed=1)
    release_save(G, D, G_ema, str(tmp_path / 'w' / 'exp'), config, legacy)
    G2, D2, G_ema2 = tiny_models(config, seed=2)
    assert not torch.equal(G_out(G, config), G_out(G2, config))
    state = {'itr': 0, 'epoch': 0, 'config': config}
    utils.load_weights(G2, D2, state, str(tmp_path / 'w'), 'exp', G_ema=G_ema2)
    assert (state['itr'], state['epoch'], state['best_FID']) == (7, 1, 99.0)
    assert state['config'] is config
    assert torch.equal(G_out(G, config), G_out(G2, config))
    assert torch.equal(G_out(G_ema, config), G_out(G_ema2, config))
    x = torch.randn(3, 3, 32, 32)
    D.eval()
    D2.eval()
    with torch.no_grad():
        assert torch.equal(D(x, torch.tensor([0, 1, 2])), D2(x, torch.tensor([0, 1, 2])))
    for a, b in [(G.optim, G2.optim), (D.optim, D2.optim)]:
        sa, sb = a.state_dict()['state'], b.state_dict()['state']
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k]['exp_avg_sq'], sb[k]['exp_avg_sq'])


def test_our_checkpoint_loads_with_plain_torch(tmp_path):
    """Files from save_weights load with torch.load(weights_only=True) and strict=True."""
    config = tiny_config()
    G, D, G_ema = tiny_models(config, seed=1)
    state = {'itr': 3, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    utils.save_weights(G, D, state, str(tmp_path), 'exp', None, G_ema)
    G2, D2, G_ema2 = tiny_models(config, seed=2)
    folder = tmp_path / 'exp'
    for name, net in [('G', G2), ('D', D2), ('G_ema', G_ema2)]:
        net.load_state_dict(torch.load(folder / (name + '.pth'), weights_only=True),
                            strict=True)
    for name, net in [('G_optim', G2), ('D_optim', D2)]:
        net.optim.load_state_dict(torch.load(folder / (name + '.pth'), weights_only=True))
    saved = torch.load(folder / 'state_dict.pth', weights_only=True)
    assert saved['itr'] == 3 and saved['config']['G_ch'] == config['G_ch']
    assert torch.equal(G_out(G, config), G_out(G2, config))
    assert torch.equal(G_out(G_ema, config), G_out(G_ema2, config))


class Payload:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ('echo unpickled',))


@pytest.mark.parametrize('legacy', [True, False])
def test_checkpoint_with_code_is_refused(tmp_path, legacy):
    """A state_dict.pth that would run code on unpickling is refused in either format."""
    path = str(tmp_path / 'state_dict.pth')
    torch.save({'itr': 1, 'x': Payload()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(utils.ConfigError, match='not allowed'):
        utils.torch_load(path)


@pytest.mark.parametrize('model_name,attn,expect', [
    ('BigGAN', '16', {0, 1, 2, 3}), ('BigGAN', '8', set()),
    ('BigGANdeep', '16', {0, 1, 2}), ('BigGANdeep', '8', set())])
def test_32px_D_attention_follows_release_table(model_name, attn, expect):
    """At 32px the release's D tables list resolution 16 for every stage, so --D_attn 16 puts
    attention after every stage and --D_attn 8 nowhere."""
    config = tiny_config('--model', model_name, '--D_attn', attn, '--D_ch', '8')
    with torch.device('meta'):
        D = importlib.import_module(model_name).Discriminator(**{**config, 'skip_init': True})
    stages = {i for i, block in enumerate(D.blocks)
              if any(type(m).__name__ == 'Attention' for m in block)}
    assert stages == expect
