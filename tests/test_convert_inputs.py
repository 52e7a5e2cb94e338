"""convert_pretrained.py on damaged or hostile sources: every wrongly typed or out-of-range
config.json field, width that disagrees with the weights, badly shaped spectral-norm vector or
TF-Hub variable, and width that would build a model larger than its files, is one line and
exit status 2, with nothing written (issue 19, mechanisms 3 and 5)."""
import json
import os

import numpy as np
import pytest
import torch
from test_tfhub import tfhub_variables

import convert_pretrained
import tf_bundle
from helpers import hf_standin


@pytest.fixture(scope='module')
def hf_source():
    """(config dict, state dict) of a small HF BigGAN-deep stand-in."""
    config, model = hf_standin(seed=0, batch=4)
    return config.to_dict(), model.state_dict()


def write_hf(folder, cfg, state):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as f:
        f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))
    torch.save(state, os.path.join(folder, 'pytorch_model.bin'))
    return folder


def refused(argv, capsys, weights_root):
    """The one stderr line of a run refused with exit status 2, having written nothing."""
    with pytest.raises(SystemExit) as info:
        convert_pretrained.main(argv + ['--weights_root', str(weights_root)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1, lines
    assert not os.path.exists(weights_root)
    return lines[0]


def hf_refused(tmp_path, capsys, cfg, state):
    folder = write_hf(str(tmp_path / 'hf'), cfg, state)
    return refused(['--hf_dir', folder, '--truncation', '0.5'], capsys, tmp_path / 'w')


@pytest.mark.parametrize('key, value, message', [
    ('z_dim', '12', 'z_dim'), ('channel_width', [8], 'channel_width'),
    ('num_classes', None, 'num_classes'), ('n_stats', True, 'n_stats'),
    ('n_stats', 1, 'n_stats'), ('channel_width', -3, 'channel_width'),
    ('channel_width', 0, 'channel_width'), ('attention_layer_position', 1.5, 'attention'),
    ('eps', 'x', 'eps'), ('eps', -1e-4, 'eps'), ('eps', float('inf'), 'eps'),
    ('layers', 5, 'layers'), ('layers', [[1, 16, 16]], 'layers'),
    ('layers', [[False, 16]], 'layers'), ('layers', [], 'layers'),
    ('layers', [[True, 10 ** 6, 10 ** 6]] * 5, 'layers'),
    # Widths of a million: a model of terabytes, refused against the weights' shapes.
    ('channel_width', 10 ** 6, 'shape'), ('z_dim', 10 ** 6, 'shape'),
    ('num_classes', 10 ** 9, 'shape'), ('n_stats', 10 ** 7, 'shape'),
    ('z_dim', 13, 'shape'),  # a plain width mismatch
])
def test_config_values_are_checked(hf_source, tmp_path, capsys, key, value, message):
    cfg, state = hf_source
    line = hf_refused(tmp_path, capsys, {**cfg, key: value}, state)
    assert message in line, line


@pytest.mark.parametrize('text', ['[1, 2]', '{"z_dim": 1' + '0' * 5000 + '}',
                                  '[' * 100000 + ']' * 100000, '\xff\xfe', 'nul'])
def test_config_files_that_are_no_object(hf_source, tmp_path, capsys, text):
    """A JSON list, an integer of more digits than Python converts, nesting beyond the
    recursion limit, bytes that are not UTF-8, no JSON at all."""
    line = hf_refused(tmp_path, capsys, text, hf_source[1])
    assert 'config.json' in line, line


def test_oversized_config_file(hf_source, tmp_path, capsys):
    text = json.dumps({**hf_source[0], 'pad': ' ' * (convert_pretrained.MAX_CONFIG_BYTES)})
    assert 'config.json' in hf_refused(tmp_path, capsys, text, hf_source[1])


@pytest.mark.parametrize('key, value, message', [
    ('generator.gen_z.weight_u', torch.ones(7), 'shape'),
    ('generator.layers.0.conv_1.weight_v', torch.ones(2, 9), 'shape'),
    ('generator.layers.3.bn_2.scale.weight_u', torch.ones(()), 'shape'),
    ('generator.conv_to_rgb.weight_orig', torch.ones(8, 8, 3), 'shape'),
    ('embeddings.weight', torch.ones(12, 10, dtype=torch.int64), 'floating'),
    ('generator.bn.running_means', [0.0] * 8, 'floating'),
    ('generator.layers.8.gamma', torch.ones(2), 'shape'),
])
def test_entries_are_checked_against_the_config(hf_source, tmp_path, capsys, key, value,
                                                message):
    """Every entry HF's model has, with the shape its config implies (SN vectors included)
    and floating values, before any model is built."""
    cfg, state = hf_source
    line = hf_refused(tmp_path, capsys, cfg, {**state, key: value})
    assert message in line and key in line, line


@pytest.mark.parametrize('name', ['config.json', 'pytorch_model.bin'])
@pytest.mark.parametrize('odd', ['fifo', 'devzero'])
def test_an_hf_file_that_is_no_regular_file_is_named_so(hf_source, tmp_path, capsys, name, odd):
    """config.json a FIFO, pytorch_model.bin a link to /dev/zero: refused, but as 'missing',
    which sends the user looking for a file that is there (the outside attacker's round
    13). Now the line says what it is."""
    folder = write_hf(str(tmp_path / 'hf'), *hf_source)
    path = os.path.join(folder, name)
    os.remove(path)
    if odd == 'fifo':
        os.mkfifo(path)
    else:
        os.symlink('/dev/zero', path)
    line = refused(['--hf_dir', folder, '--truncation', '0.5'], capsys, tmp_path / 'w')
    assert line == (f'error: {name} {path} is not a regular file (a FIFO, device or folder); '
                    f'give a file')


def test_a_damaged_tf_index_block_names_its_file(tmp_path, capsys):
    """A bit flipped in the index's first table block: 'checksum mismatch in table block at
    offset 0', naming no file and no remedy (the outside attacker's round 13)."""
    prefix = str(tmp_path / 'module' / 'variables' / 'variables')
    tf_bundle.write_bundle(prefix, tfhub_variables(128))
    with open(prefix + '.index', 'r+b') as f:
        f.seek(3)
        byte = f.read(1)
        f.seek(3)
        f.write(bytes([byte[0] ^ 1]))
    line = refused(['--tfhub_dir', str(tmp_path / 'module'), '-r', '128'], capsys,
                   tmp_path / 'w')
    assert f'{prefix}.index: checksum mismatch in its table block at offset 0' in line, line
    assert 'download the module again' in line


def tf_refused(tmp_path, capsys, variables, *extra):
    tf_bundle.write_bundle(str(tmp_path / 'module' / 'variables' / 'variables'), variables)
    return refused(['--tfhub_dir', str(tmp_path / 'module'), '-r', '128'] + list(extra),
                   capsys, tmp_path / 'w')


@pytest.mark.parametrize('name, value, message', [
    # Early variables of the conversion's order, so each case stops soon.
    ('Generator/G_Z/G_linear/u0', np.ones((1, 5), np.float32), 'values'),
    ('Generator/GBlock/conv0/w/ema_b999900', np.ones((3, 3, 64), np.float32), 'shape'),
    ('Generator/GBlock/HyperBN/gamma/w/ema_b999900', np.ones(8, np.float32), 'shape'),
    ('Generator/G_Z/G_linear/b/ema_b999900', np.ones(100, np.float32), 'values'),
    ('Generator/GBlock/CrossReplicaBN/accumulated_mean', np.ones((1, 64), np.float32),
     'levels'),
    ('Generator/G_Z/G_linear/w/ema_b999900', np.ones((4, 1024), np.int32), 'int32'),
    ('linear/w/ema_b999900', np.ones(10, np.float32), 'shape'),
    ('Generator/G_Z/G_linear/w/ema_b999900', np.ones((4, 1000), np.float32), 'multiple'),
])
def test_tfhub_variables_are_checked(tmp_path, capsys, name, value, message):
    line = tf_refused(tmp_path, capsys, {**tfhub_variables(128), name: value})
    assert message in line, line


def test_tfhub_width_beyond_its_files(tmp_path, capsys):
    """A G_linear of 16 x 16 x 64 outputs implies a 128px G of 120 MB; the bundle holds far
    less, so the model is refused before it is built."""
    variables = tfhub_variables(128)
    variables['Generator/G_Z/G_linear/w/ema_b999900'] = np.zeros((4, 16 * 16 * 64), np.uint8)
    line = tf_refused(tmp_path, capsys, variables)
    assert 'the generator its shapes describe' in line, line
