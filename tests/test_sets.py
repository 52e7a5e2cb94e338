"""A checkpoint set is loaded whole or refused: state_dict.pth, renamed last, records the
size and sha256 of its companions, so a save interrupted between renames is caught."""
import os
import subprocess
import zipfile

import numpy as np
import pytest
import torch

import checkpoints
import convert_pretrained
import files
import step_helpers
from flags import StopRun
from helpers import hf_standin, load_as_sample, save_hf, tiny_config, tiny_models

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

NAMES = ['G', 'G_optim', 'D', 'D_optim', 'G_ema', 'state_dict']


def state(itr, config):
    return {'itr': itr, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
            'best_FID': 999999, 'config': config}


def load(root, config, suffix=None):
    """load_weights into fresh models; returns the state dict it filled and G."""
    G, D, G_ema = tiny_models(config, seed=9)
    out = state(-1, config)
    checkpoints.load_weights(G, D, out, root, 'exp', suffix, G_ema)
    return out, G


def fail_after(monkeypatch, k):
    """os.replace works k times, then raises, as a crash between renames would."""
    real, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == k:
            raise OSError(28, 'No space left on device')
        calls.append(dst)
        real(src, dst)
    monkeypatch.setattr(os, 'replace', replace)
    return calls


@pytest.mark.parametrize('k', range(len(NAMES)))
def test_interrupted_save_is_refused_or_old(tmp_path, monkeypatch, k):
    """A save failing after its k-th rename: k = 0 leaves the old set, which loads; any other
    k leaves a mixed set, refused in one line naming G.pth and the intact copy0 set."""
    root, config = str(tmp_path), tiny_config()
    G1, D1, E1 = tiny_models(config, seed=1)
    checkpoints.save_weights(G1, D1, state(1, config), root, 'exp', None, E1)
    checkpoints.save_weights(G1, D1, state(1, config), root, 'exp', 'copy0', E1)
    before = {n: open(f'{root}/exp/{n}.pth', 'rb').read() for n in NAMES}
    G2, D2, E2 = tiny_models(config, seed=2)
    calls = fail_after(monkeypatch, k)
    with pytest.raises(StopRun):
        checkpoints.save_weights(G2, D2, state(2, config), root, 'exp', None, E2)
    monkeypatch.undo()
    changed = [n for n in NAMES if open(f'{root}/exp/{n}.pth', 'rb').read() != before[n]]
    assert changed == NAMES[:k] and len(calls) == k  # the set really is mixed
    assert not [f for f in os.listdir(f'{root}/exp') if not f.endswith('.pth')]
    if k == 0:
        out, G = load(root, config)
        assert out['itr'] == 1 and 'files' not in out
        assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(),
                                                      G1.state_dict().values()))
        return
    with pytest.raises(checkpoints.CheckpointError) as e:
        load(root, config)
    msg = str(e.value)
    assert '\n' not in msg and 'G.pth' in msg and 'mixed' in msg
    assert "'copy0'" in msg and "'' (the latest)" not in msg
    assert load(root, config, 'copy0')[0]['itr'] == 1


def test_completed_save_loads_new(tmp_path):
    """With every rename done, the new set loads."""
    root, config = str(tmp_path), tiny_config()
    for itr, seed in [(1, 1), (2, 2)]:
        G, D, E = tiny_models(config, seed=seed)
        checkpoints.save_weights(G, D, state(itr, config), root, 'exp', None, E)
    saved = torch.load(f'{root}/exp/state_dict.pth', weights_only=True)
    assert sorted(saved['files']) == sorted(f'{n}.pth' for n in NAMES[:-1])
    assert saved['files']['G.pth']['size'] == os.path.getsize(f'{root}/exp/G.pth')
    assert load(root, config)[0]['itr'] == 2


def test_bit_flip_in_G_is_refused(tmp_path):
    """One flipped bit (same size) in G.pth: its sha256 differs and the set is refused."""
    root, config = str(tmp_path), tiny_config()
    G, D, E = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, E)
    path = f'{root}/exp/G.pth'
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 1
    open(path, 'wb').write(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match=r'G\.pth \(sha256 differs\)') as e:
        load(root, config)
    assert '\n' not in str(e.value) and 'train first' in str(e.value)


@pytest.mark.parametrize('name', ['G.pth\x00x', '../G.pth', '', '.', 'a/G.pth', 'G.pth\n', 7])
def test_a_record_naming_no_plain_file_is_refused_in_printable_words(tmp_path, name):
    """A files record whose key is no plain file name (a NUL, a separator, '..', not a
    string): refused as a damaged record, the name written escaped (a raw NUL reached the
    terminal: the outside attacker's round 12) and no file outside the folder looked at."""
    root, config = str(tmp_path), tiny_config()
    G, D, E = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, E)
    path = f'{root}/exp/state_dict.pth'
    saved = torch.load(path, weights_only=True)
    saved['files'][name] = saved['files']['G.pth']
    torch.save(saved, path)
    with pytest.raises(checkpoints.CheckpointError) as e:
        load(root, config)
    msg = str(e.value)
    assert 'is not a file name' in msg and ascii(name) in msg
    assert msg.isprintable()


@pytest.mark.parametrize('entry', ['data/0', 'data.pkl', 'version'])
def test_a_zip_checkpoint_with_an_entry_twice_is_refused(tmp_path, entry):
    """A zip checkpoint holding an entry twice (the second all NaN, the outside attacker's
    round 12) loaded as if whole: which copy a reader takes is the reader's choice, so what is
    checked might not be what another tool loads. Refused in one line naming the entry."""
    import zipfile
    G, _, _ = tiny_models(tiny_config(), seed=1)
    path = tmp_path / 'G.pth'
    torch.save(G.state_dict(), path)
    assert sorted(checkpoints.torch_load(str(path))) == sorted(G.state_dict())
    with zipfile.ZipFile(path) as z:
        items = [(info.filename, z.read(info)) for info in z.infolist()]
    name, data = next((n, d) for n, d in items if n.endswith('/' + entry))
    with zipfile.ZipFile(path, 'a', zipfile.ZIP_STORED) as z, pytest.warns(UserWarning):
        z.writestr(name, data if entry != 'data/0' else
                   np.full(len(data) // 4, np.nan, np.float32).tobytes())
    with pytest.raises(checkpoints.CheckpointError, match=f'two zip entries are named {name}'):
        checkpoints.torch_load(str(path))


def test_release_style_set_without_record_loads(tmp_path):
    """A state_dict.pth without 'files' (the release's) loads as before."""
    root, config = str(tmp_path), tiny_config()
    G, D, E = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(4, config), root, 'exp', None, E)
    path = f'{root}/exp/state_dict.pth'
    saved = torch.load(path, weights_only=True)
    del saved['files']
    torch.save(saved, path)
    assert load(root, config)[0]['itr'] == 4
    assert checkpoints.complete_sets(f'{root}/exp', NAMES, intact=True) == ['']


@pytest.fixture(scope='module')
def hf_folder(tmp_path_factory):
    """A small HF BigGAN-deep folder to convert."""
    return save_hf(*hf_standin(channel_width=4), str(tmp_path_factory.mktemp('hf') / 'hf'))


def convert_argv(folder, root, *extra):
    return ['--hf_dir', folder, '--truncation', '0.5', '--weights_root', root,
            '--experiment_name', 'exp'] + list(extra)


def snapshot(folder):
    return {f: open(os.path.join(folder, f), 'rb').read() for f in sorted(os.listdir(folder))}


def trained_set(root):
    """A training run's set (G, D, optimizers, G_ema, state_dict) and a copy0 set in root/exp."""
    config = tiny_config()
    G, D, E = tiny_models(config, seed=1)
    for suffix in (None, 'copy0'):
        checkpoints.save_weights(G, D, state(5, config), root, 'exp', suffix, E)
    return os.path.join(root, 'exp')


def test_convert_into_existing_experiment_is_refused(hf_folder, tmp_path, capsys):
    """Without --overwrite: exit 2, one line naming the folder, every file unchanged."""
    folder = trained_set(str(tmp_path))
    before = snapshot(folder)
    with pytest.raises(SystemExit) as e:
        convert_pretrained.main(convert_argv(hf_folder, str(tmp_path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and '--overwrite' in err[0] and folder in err[0]
    assert snapshot(folder) == before


def test_convert_overwrite_leaves_no_stale_files(hf_folder, tmp_path):
    """With --overwrite the folder holds exactly the converted set, and it loads intact."""
    folder = trained_set(str(tmp_path))
    convert_pretrained.main(convert_argv(hf_folder, str(tmp_path), '--overwrite'))
    assert sorted(os.listdir(folder)) == ['G.pth', 'G_ema.pth', 'state_dict.pth']
    saved = torch.load(os.path.join(folder, 'state_dict.pth'), weights_only=True)
    assert sorted(saved['files']) == ['G.pth', 'G_ema.pth'] and saved['itr'] == 0
    load_as_sample(str(tmp_path), 'exp')


def test_convert_refuses_nonfinite_weights(tmp_path, capsys):
    """A NaN in the source's weights: exit 2, one line naming the weight, nothing written."""
    config, model = hf_standin(channel_width=4)
    with torch.no_grad():
        model.generator.gen_z.weight_orig[0, 0] = float('nan')
    folder = save_hf(config, model, str(tmp_path / 'hf'))
    with pytest.raises(SystemExit) as e:
        convert_pretrained.main(convert_argv(folder, str(tmp_path / 'w')))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'NaN or Inf' in err[0]
    assert not os.path.exists(tmp_path / 'w' / 'exp')


def test_make_hdf5_refuses_uint16_source(tmp_path, capsys):
    """An HDF5 source of uint16 images would wrap into uint8: exit 2, one line, no output."""
    import h5py

    import make_hdf5
    src = tmp_path / 'src.hdf5'
    with h5py.File(src, 'w') as f:
        f['imgs'] = np.full((4, 3, 16, 16), 300, np.uint16)
        f['labels'] = np.zeros(4, np.int64)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as e:
        make_hdf5.main(['--dataset', 'I16', '--data_root', str(out),
                        '--dataset_root', str(src), '--no_progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'uint16' in err[0]
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize('labels,why', [
    (np.array([0, 1, -1, 2], np.int8), 'a label of -1'),
    (np.array([0, 1, 2 ** 63 + 1, 2], np.uint64), 'beyond int64'),
    (np.array([0, 1.5, 1, 2], np.float32), 'float32 labels')])
def test_make_hdf5_refuses_labels_it_would_wrap(tmp_path, capsys, labels, why):
    """An HDF5 source whose labels are negative, past int64 (uint64 2^63 + 1 became a negative
    int64) or not integers was rewritten as if valid (the outside attacker's round 12): exit
    2, one line, no output."""
    import h5py

    import make_hdf5
    src = tmp_path / 'src.hdf5'
    with h5py.File(src, 'w') as f:
        f['imgs'] = np.zeros((4, 3, 16, 16), np.uint8)
        f['labels'] = labels
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as e:
        make_hdf5.main(['--dataset', 'I16', '--data_root', str(out),
                        '--dataset_root', str(src), '--no_progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and why in err[0], err
    assert not out.exists() or not os.listdir(out)


def test_duplicate_refuses_dangling_symlink_target(tmp_path):
    """A dangling symlink named like TARGET's weights folder counts as existing: exit 2, the
    link and its missing destination untouched."""
    (tmp_path / 'weights' / 'a').mkdir(parents=True)
    (tmp_path / 'weights' / 'a' / 'G.pth').write_bytes(b'x')
    link = tmp_path / 'weights' / 'b'
    link.symlink_to(tmp_path / 'elsewhere')
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts', 'utils',
                          'duplicate.sh')
    proc = subprocess.run(['bash', script, 'a', 'b'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and 'already exists' in proc.stderr
    assert link.is_symlink() and not (tmp_path / 'elsewhere').exists()


def test_a_tensor_larger_than_its_storage_is_refused(tmp_path):
    """A stride-0 view declaring 10^12 elements over 4 bytes: torch builds it without complaint,
    and any full read of it would materialise terabytes. Its elements share memory, which no
    checkpoint's tensor does."""
    path = str(tmp_path / 'G.pth')
    torch.save({'w': torch.ones(1).expand(10 ** 12)}, path)
    with pytest.raises(checkpoints.CheckpointError, match='whose elements share memory'):
        checkpoints.torch_load(path)
    torch.save({'w': torch.ones(4, 4)[1:3]}, path)  # a view inside its storage is fine
    assert torch.equal(checkpoints.torch_load(path)['w'], torch.ones(2, 4))


def stepped_models(config):
    """tiny_models after one optimizer step each, so the optimizers hold per-parameter state."""
    G, D, G_ema = tiny_models(config, seed=1)
    for net in (G, D):
        net.optim.zero_grad()
        sum(p.sum() for p in net.parameters()).backward()
        net.optim.step()
    return G, D, G_ema


@pytest.mark.parametrize('damage', ['shape', 'index', 'groups'])
def test_an_optimizer_state_that_does_not_fit_is_refused(tmp_path, damage):
    """An optimizer file whose per-parameter state does not fit the model (saved consistently,
    so the set's record matches) is refused at load, before torch's first Adam step would
    crash on it; nothing is loaded into the models."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = stepped_models(config)
    first = next(iter(G.optim.state))
    if damage == 'shape':
        G.optim.state[first]['exp_avg'] = torch.zeros(3)
    saved = G.optim.state_dict
    if damage == 'index':
        G.optim.state_dict = lambda: {**saved(), 'state': {10 ** 6: {'step': 1.0}}}
    elif damage == 'groups':
        G.optim.state_dict = lambda: {**saved(), 'param_groups': saved()['param_groups'] * 2}
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)
    G2, D2, E2 = tiny_models(config, seed=9)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    with pytest.raises(checkpoints.CheckpointError, match='G_optim.pth'):
        checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2)
    assert all(torch.equal(v, before[k]) for k, v in G2.state_dict().items())


def corrupt_state(root, name, change):
    """Rewrite one file of the saved set with change(obj) applied, and refresh state_dict.pth's
    record of it, as someone who can write the files can."""
    path = f'{root}/exp/{name}.pth'
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)
    if name != 'state_dict':
        state_path = f'{root}/exp/state_dict.pth'
        saved = torch.load(state_path, weights_only=True)
        saved['files'][f'{name}.pth'] = files.file_digest(path)
        torch.save(saved, state_path)


def set_key(key, value):
    def change(obj):
        obj[key] = value
    return change


def first_group(key, value):
    def change(obj):
        obj['param_groups'][0][key] = value
    return change


def shared_dag(levels, kind=list):
    """A container of two references to one container of two references ... levels deep: a
    few bytes per level pickled, 2^levels entries walked as a tree."""
    node = kind()
    for _ in range(levels):
        node = kind((node, node))
    return node


def first_state(key, value):
    def change(obj):
        obj['state'][0][key] = value(obj['state'][0][key])
    return change


def alias_across(states):
    """The later of the first two parameters of one shape takes the earlier's exp_avg."""
    seen = {}
    for index, entry in sorted(states.items()):
        shape = tuple(entry['exp_avg'].shape)
        if shape in seen:
            entry['exp_avg'] = states[seen[shape]]['exp_avg']
            return
        seen[shape] = index
    raise AssertionError('no two parameters of one shape')


ANCHORS = {'G_loss': 1.0, 'D_loss_real': 0.5, 'D_loss_fake': 0.5, 'D_real': 0.2, 'D_fake': -0.2}


def scales(scale):
    """A saved --amp fp16 state with G's loss scale at scale."""
    scaler = {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5,
              'growth_interval': 2000, '_growth_tracker': 0}
    return {'G_scaler': dict(scaler, scale=scale), 'D_scaler': scaler,
            'skipped': {'G': 0, 'D': 0}}


def test_the_step_states_the_refusals_start_from_are_valid():
    """The intact anchors and scales the cases below damage pass the same checks, and they
    are what the step itself saves."""
    assert step_helpers.ema_losses.check_state_dict(ANCHORS) is None
    assert step_helpers.Precision.check_state_dict(scales(65536.0)) is None
    saved = step_helpers.Precision({'amp': 'fp16'}, 'cpu').state_dict()['amp']
    assert set(saved) == set(scales(1.0)) and step_helpers.Precision.check_state_dict(
        saved) is None
    assert set(step_helpers.ema_losses().state_dict()) == set(ANCHORS)


@pytest.mark.parametrize('name,change,expect', [
    ('state_dict', set_key('config', [1, 2]), 'config'),
    ('state_dict', set_key('itr', -5), 'itr'),
    ('state_dict', set_key('itr', '2'), 'itr'),
    ('state_dict', set_key('itr', 2 ** 70), 'its itr is 1180591620717411303424, not a count'),
    ('state_dict', set_key('best_FID', float('nan')), 'best_FID'),
    ('state_dict', set_key('rng', {'torch': 'x'}), 'rng'),
    ('state_dict', set_key('optim_settings', {'G': {'lr': float('nan'), 'betas': [0, 0.9],
                                                    'eps': 1e-8}}), 'optim_settings'),
    ('G_optim', first_group('lr', 'x'), 'lr'),
    ('G_optim', first_group('betas', (0.0,)), 'betas'),
    ('G_optim', first_state('step', lambda v: torch.tensor(-1.0)), 'step'),
    ('G_optim', first_state('exp_avg_sq', lambda v: torch.full_like(v, float('nan'))), 'NaN'),
    ('D', lambda obj: obj[next(iter(obj))].fill_(float('inf')), 'NaN or Inf'),
    # Finite, and no batch norm's: every image NaN (the outside attacker's round 10).
    ('G_ema', lambda obj: next(v for k, v in obj.items() if k.endswith('stored_var')).fill_(-1),
     'negative variance'),
    # Bests no test can give (FID is a distance), and rates no launch can give.
    ('state_dict', set_key('best_IS', float('inf')), 'not a finite number >= 0'),
    ('state_dict', set_key('best_FID', -1.0), 'not a finite number >= 0'),
    ('state_dict', set_key('launch_optim', {'G_lr': [-1.0]}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', {'D_B1': [1.0]}), 'launch_optim has entry'),
    # Settings that change the algorithm (amsgrad needs state of its own; maximize ascends),
    # and a beta of 1 (Adam divides by 1 - beta^t): the outside attacker's round 3.
    ('G_optim', first_group('amsgrad', True), 'amsgrad'),
    ('G_optim', first_group('maximize', True), 'maximize'),
    # No flag sets it: a file's 0.1 was trained with and saved again (round 13).
    ('G_optim', first_group('weight_decay', 0.1), 'its weight_decay 0.1'),
    ('G_optim', first_group('betas', (1.0, 0.999)), 'betas'),
    # A group's rate that contradicts the optim_settings saved with it (a resume took it).
    ('G_optim', first_group('lr', 7.0), 'contradict'),
    # A moment of another dtype: torch would cast a bool one to 0s and 1s.
    ('G_optim', first_state('exp_avg', lambda v: v > 0), 'not floating point'),
    # Parameter ids in another order (torch pairs them with ours by position) or twice.
    ('G_optim', lambda obj: obj['param_groups'][0]['params'].reverse(), 'has shape'),
    ('G_optim', lambda obj: obj['param_groups'][0].update(
        params=[0] * len(obj['param_groups'][0]['params'])), 'twice'),
    # A record that vouches for no companion, or not for G.pth.
    ('state_dict', set_key('files', {}), 'not in the record'),
    ('state_dict', lambda obj: obj['files'].pop('G.pth'), 'G.pth'),
    # An Adam entry that is not what Adam writes (the outside attacker's round 5): a key
    # missing (a KeyError in the first step) or all of them, a step that is no 0-d float
    # count, a rate as a tensor or beyond float32, a negative second moment, two moments in
    # one storage, a moment without data or not dense.
    ('G_optim', lambda obj: obj['state'][0].pop('step'), "not Adam's"),
    ('G_optim', lambda obj: obj['state'][0].pop('exp_avg'), "not Adam's"),
    ('G_optim', lambda obj: obj['state'].update({0: {}}), "not Adam's"),
    ('G_optim', first_state('step', lambda v: torch.tensor(2)), 'not a 0-d float32 or'),
    ('G_optim', first_state('step', lambda v: v.half()), 'not a 0-d float32 or'),
    ('G_optim', first_state('step', lambda v: torch.tensor(2.5)), 'not a count'),
    # A step that no longer counts (round 9: 1e300 + 1 == 1e300, trained on silently).
    ('G_optim', first_state('step', lambda v: torch.tensor(1e300, dtype=torch.float64)),
     'not a count'),
    ('G_optim', first_state('step', lambda v: torch.tensor(2.0 ** 24)), 'not a count'),
    ('G_optim', first_group('lr', torch.tensor(5e-5)), r"its lr 'tensor\(4.99"),
    ('G_optim', first_group('lr', 1e300), r'its lr 1e\+300'),
    # A setting the built optimizer has no key for, kept by torch's load (round 15).
    ('G_optim', first_group('initial_lr', float('inf')), 'its initial_lr inf is not an '
                                                         'optimizer setting'),
    ('G_optim', first_group('initial_lr', torch.tensor(1.0)), 'its initial_lr'),
    ('G_optim', first_state('exp_avg_sq', lambda v: -v.abs() - 1), 'negative'),
    ('G_optim', lambda obj: obj['state'][0].update(exp_avg_sq=obj['state'][0]['exp_avg'].abs_()),
     'shares its storage with'),
    # ... or one parameter's moment in another's storage (round 6).
    ('G_optim', lambda obj: alias_across(obj['state']), 'shares its storage with optimizer '
                                                        'state of parameter'),
    ('G_optim', first_state('exp_avg', lambda v: torch.empty_like(v, device='meta')),
     'not a dense one with data'),
    ('G_optim', first_state('exp_avg', lambda v: v.to_sparse()), 'not a dense one with data'),
    # Moments whose elements share memory: an expanded view crashed the first Adam step
    # (31 lines), an overlapping as_strided one was updated through the aliasing and saved
    # again (the outside attacker's round 14).
    ('G_optim', first_state('exp_avg', lambda v: v.flatten()[:1].clone().expand(v.shape)),
     'whose elements share memory'),
    ('G_optim', first_state('exp_avg_sq', lambda v: v.flatten().clone().as_strided(
        v.shape, (1,) * v.dim())), 'whose elements share memory'),
    ('G_optim', first_state('exp_avg_sq', lambda v: v.to(torch.float8_e4m3fn)),
     'float8_e4m3fn, not floating point'),
    # The step's saved state: a NaN or non-number LeCam anchor, a NaN or negative fp16 scale
    # (kept and saved again by the resumed run).
    ('state_dict', set_key('ema_losses', dict(ANCHORS, D_real=float('nan'))),
     'ema_losses has D_real nan'),
    ('state_dict', set_key('ema_losses', dict(ANCHORS, D_fake='x')), "ema_losses has D_fake 'x'"),
    ('state_dict', set_key('amp', scales(float('nan'))), 'amp has a G_scaler'),
    ('state_dict', set_key('amp', scales(-4096.0)), 'amp has a G_scaler'),
    ('state_dict', set_key('collapse', {'rollbacks': -1}), 'not a count of rollbacks'),
    # The rates a run's launches gave: only the rate flags, lists of finite numbers.
    ('state_dict', set_key('launch_optim', {'G_lr': [float('inf')]}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', {'G_lr': 5e-5}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', {'G_lr': []}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', {'num_D_steps': [2]}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', {'G_lr': [True]}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', {'G_lr': [1e-4] * 1001}), 'launch_optim has entry'),
    ('state_dict', set_key('launch_optim', []), 'launch_optim is'),
    # Shared references: 23 KB that every walk of the objects read as 2^90 entries (a hang
    # at the resume, round 7), in a key of its own, the config, the RNG state, the collapse
    # watch's state (whose own check never ran).
    ('state_dict', set_key('bomb', shared_dag(90)), 'more than 1000000 entries'),
    ('state_dict', lambda obj: obj['config'].update(zz_extra=shared_dag(90)), 'more than'),
    ('state_dict', lambda obj: obj['rng'][0].update(extra=shared_dag(90)), 'more than'),
    ('state_dict', set_key('collapse', shared_dag(90, lambda pair=(): dict(zip('ab', pair)))),
     'more than'),
    # Finite in the file, Inf in the float32 nets (round 7): a float64 weight or moment.
    ('G', lambda obj: obj.__setitem__('linear.weight', obj['linear.weight'].double() * 1e300),
     r"linear.weight holds NaN or Inf \(in the model's dtype\)"),
    ('G_optim', first_state('exp_avg', lambda v: v.double() + 1e300),
     r"exp_avg holds NaN or Inf \(in the model's dtype\)"),
])
def test_a_damaged_training_state_is_refused_before_anything_loads(tmp_path, name, change,
                                                                   expect):
    """Every entry a resume reads is checked at load (checkpoints.check_training_state,
    check_optimizer_state, the finiteness of every tensor), not found by the first step."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = stepped_models(config)
    saved = state(1, config)
    saved['rng'] = checkpoints.get_rng_state()
    checkpoints.save_weights(G, D, saved, root, 'exp', None, G_ema)
    corrupt_state(root, name, change)
    G2, D2, E2 = tiny_models(config, seed=9)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(checkpoints.CheckpointError, match=expect) as refused:
        checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2)
    assert all(torch.equal(v, before[k]) for k, v in G2.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    # The advice never offers the refused set itself (the only one here) as one that loads.
    assert "'' (the latest)" not in str(refused.value)


def test_an_adam_state_as_the_release_wrote_it_loads_and_steps(tmp_path):
    """The release's torch saved Adam's step as a Python int; such an entry is Adam's and
    loads (the control of the refusals above), and the next step runs on it."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = stepped_models(config)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)
    corrupt_state(root, 'G_optim', lambda obj: [entry.update(step=int(entry['step']))
                                                for entry in obj['state'].values()])
    G2, D2, E2 = tiny_models(config, seed=9)
    checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2)
    steps = {float(entry['step']) for entry in G2.optim.state.values()}
    assert steps == {float(e['step']) for e in G.optim.state_dict()['state'].values()}
    G2.optim.zero_grad()
    sum(p.sum() for p in G2.parameters()).backward()
    G2.optim.step()
    assert {float(entry['step']) for entry in G2.optim.state.values()} == {s + 1 for s in steps}


@pytest.mark.parametrize('dtype', [torch.bool, torch.int64, torch.complex64, torch.float16])
def test_weights_of_another_kind_are_refused(tmp_path, dtype):
    """G.pth whose float tensors became bool, int64 or complex (the record refreshed) would
    be cast silently into other numbers by load_state_dict: refused, nothing loaded. float16
    weights (a --G_fp16 run's) load into a float32 G as the release's did."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = stepped_models(config)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)

    def change(obj):
        for key, value in obj.items():
            if value.is_floating_point():
                obj[key] = value.to(dtype)
    corrupt_state(root, 'G', change)
    G2, D2, E2 = tiny_models(config, seed=9)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    if dtype == torch.float16:
        checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2)
        assert all(torch.equal(v, G.state_dict()[k].half().to(v.dtype))
                   for k, v in G2.state_dict().items())
        return
    why = 'holds a complex tensor' if dtype.is_complex else 'dtype mismatch'
    with pytest.raises(checkpoints.ConfigError, match=why):
        checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2)
    assert all(torch.equal(v, before[k]) for k, v in G2.state_dict().items())


@pytest.mark.parametrize('strict', [True, False])
@pytest.mark.parametrize('key', [3, b'x', ('a',), None])
@pytest.mark.parametrize('name', ['G', 'G_ema'])
def test_a_state_dict_key_that_is_not_a_name_is_refused(tmp_path, name, key, strict):
    """A weights file with a key that is not a string (pickle-legal; the record refreshed):
    sample.py's non-strict load raised AttributeError ('int' object has no attribute
    'endswith', the outside attacker's round 13). Refused in one line, nothing loaded."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)
    corrupt_state(root, name, set_key(key, torch.zeros(1)))
    G2, D2, E2 = tiny_models(config, seed=9)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    # An int is a key some checkpoint files have (an optimizer's parameter numbers), so
    # it is the state dict's layout that refuses it; any other type no file has.
    why = ('holds a dict, not a state dict of tensors by name' if isinstance(key, int)
           else f'holds a dict keyed by a {type(key).__name__}')
    with pytest.raises(checkpoints.CheckpointError, match=f'{name}.pth {why}') as e:
        checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2,
                                 strict=strict)
    assert '\n' not in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in G2.state_dict().items())


def in_first_entry(key, value):
    """change(obj): obj['state']'s first entry gets key = value."""
    def change(obj):
        next(iter(obj['state'].values()))[key] = value
    return change


def in_group(key, value):
    def change(obj):
        obj['param_groups'][0][key] = value
    return change


def in_config(key, value):
    def change(obj):
        obj['config'][key] = value
    return change


# (file, change, the refusal's words). The outside attacker's round 13 found each route: an
# int, tuple, bytes or None key was an AttributeError or TypeError traceback (sample.py,
# --resume), an optimizer's state as a list, tuple or str a ValueError or AttributeError in
# its checks, and an int key in a param group, the training state or its config was taken.
ODD_LAYOUTS = [
    ('D', set_key(('x',), torch.zeros(1)), 'dict keyed by a tuple'),
    ('G_ema', set_key(b'linear.weight', torch.zeros(1)), 'dict keyed by a bytes'),
    ('G_optim', set_key(7, 1), "not an optimizer's state dict"),
    ('G_optim', lambda obj: obj.update(state=list(obj['state'].items())),
     "not an optimizer's state dict"),
    ('D_optim', lambda obj: obj.update(state=tuple(obj['state'].values())),
     "not an optimizer's state dict"),
    ('G_optim', set_key('state', 'ab'), "not an optimizer's state dict"),
    ('G_optim', in_group(3, 0.5), "not an optimizer's state dict"),
    ('G_optim', in_first_entry(2, torch.zeros(1)), "not an optimizer's state dict"),
    ('G_optim', lambda obj: obj['param_groups'][0].update(params=None),
     "not an optimizer's state dict"),
    ('G_optim', lambda obj: obj['param_groups'][0]['params'].append('a'),
     "not an optimizer's state dict"),
    ('G_optim', lambda obj: obj['state'].update({2.5: {}}), 'dict keyed by a float'),
    ('state_dict', set_key(5, 1), 'not a training state'),
    ('state_dict', in_config(5, 1), 'not a training state'),
    ('state_dict', in_config(None, 1), 'dict keyed by a NoneType'),
    ('state_dict', in_config(1.5, 1), 'dict keyed by a float'),
]


@pytest.mark.parametrize('name,change,why', ODD_LAYOUTS,
                         ids=[f'{n}-{i}' for i, (n, _, _) in enumerate(ODD_LAYOUTS)])
def test_a_file_laid_out_as_no_checkpoint_is_refused(tmp_path, name, change, why):
    """A set file whose keys or containers are of types no checkpoint is saved with (the
    record refreshed, so the checks behind it see it): one line naming the file, nothing
    loaded, on both routes (a resume's strict load and sample.py's)."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = stepped_models(config)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)
    corrupt_state(root, name, change)
    for strict, load_optim in [(True, True), (False, False)]:
        if not load_optim and name.endswith('_optim'):
            continue
        G2, D2, E2 = tiny_models(config, seed=9)
        before = {k: v.clone() for k, v in G2.state_dict().items()}
        with pytest.raises(checkpoints.CheckpointError, match=why) as e:
            checkpoints.load_weights(G2, D2, state(-1, config), root, 'exp', None, E2,
                                     strict=strict, load_optim=load_optim)
        assert '\n' not in str(e.value) and f'{name}.pth' in str(e.value)
        assert all(torch.equal(v, before[k]) for k, v in G2.state_dict().items())


def test_a_quantized_tensor_is_refused_without_torchs_warnings(tmp_path):
    """A qint8 tensor in G_ema.pth (the record refreshed): refused, but torch's loader first
    printed two deprecation warnings (storages, quantized tensors) of two lines each, and the
    refusal called it 'a torch.strided cpu tensor' (the outside attacker's round 13). Now the
    one line alone, which says quantized."""
    import warnings
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)

    def change(obj):
        key = next(k for k, v in obj.items() if v.is_floating_point() and v.dim() == 2)
        obj[key] = torch.quantize_per_tensor(obj[key].float(), 0.1, 0, torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch warns as it builds the file too
        corrupt_state(root, 'G_ema', change)
    G2, D2, E2 = tiny_models(config, seed=9)
    with warnings.catch_warnings(record=True) as shown, \
            pytest.raises(checkpoints.CheckpointError, match='holds a quantized tensor') as e:
        warnings.simplefilter('always')
        checkpoints.load_weights(None, None, state(-1, config), root, 'exp', None, E2,
                                 strict=False, load_optim=False)
    assert shown == [], [str(w.message) for w in shown]
    assert '\n' not in str(e.value)



def flip_tensor_byte(path, offset=100):
    """Flip one byte inside the first tensor entry of a zip checkpoint, leaving its CRC-32 as
    it was (the damage a disk or a copy can do)."""
    raw = bytearray(open(path, 'rb').read())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if '/data/' in i.filename
                    and i.file_size > offset)
    start = info.header_offset + 30 + int.from_bytes(
        raw[info.header_offset + 26:info.header_offset + 28], 'little') + int.from_bytes(
        raw[info.header_offset + 28:info.header_offset + 30], 'little')
    raw[start + offset] ^= 0x10
    with open(path, 'wb') as f:
        f.write(raw)


@pytest.mark.parametrize('damage', ['flipped byte', 'complex tensor'])
def test_a_damaged_or_complex_weights_file_is_refused_though_its_record_vouches(tmp_path,
                                                                                 damage):
    """The outside attacker's round 14: a G_ema.pth with one byte of a weight flipped (torch's
    zip reader skips the CRC-32s) and the set's record refreshed was loaded and sampled, and a
    complex tensor was cast to real with torch's warning. Now each is one line, no warning."""
    import warnings
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)
    path = f'{root}/exp/G_ema.pth'
    if damage == 'flipped byte':
        flip_tensor_byte(path)
        saved = torch.load(f'{root}/exp/state_dict.pth', weights_only=True)
        saved['files']['G_ema.pth'] = files.file_digest(path)
        torch.save(saved, f'{root}/exp/state_dict.pth')
        why = 'Bad CRC-32'
    else:
        def change(obj):
            key = next(k for k, v in obj.items() if v.is_floating_point() and v.dim() == 2)
            obj[key] = obj[key].to(torch.complex64)
        corrupt_state(root, 'G_ema', change)
        why = 'holds a complex tensor'
    G2, D2, E2 = tiny_models(config, seed=9)
    with warnings.catch_warnings(record=True) as shown, \
            pytest.raises(checkpoints.CheckpointError, match=why) as e:
        warnings.simplefilter('always')
        checkpoints.load_weights(None, None, state(-1, config), root, 'exp', None, E2,
                                 strict=False, load_optim=False)
    assert shown == [], [str(w.message) for w in shown]
    assert '\n' not in str(e.value) and path in str(e.value)


def test_a_checkpoint_that_is_no_regular_file_is_named_so(tmp_path):
    """A G.pth that is a FIFO was 'no such file'; now named for what it is."""
    os.mkfifo(tmp_path / 'G.pth')
    with pytest.raises(checkpoints.CheckpointError, match='is not a regular file'):
        checkpoints.torch_load(str(tmp_path / 'G.pth'))
    (tmp_path / 'Z.pth').symlink_to('/dev/zero')
    with pytest.raises(checkpoints.CheckpointError, match='is not a regular file'):
        checkpoints.torch_load(str(tmp_path / 'Z.pth'))

@pytest.mark.parametrize('value', [np.int64(1), np.int32(1), np.int16(1), np.uint8(1)])
def test_numpy_scalars_in_a_zip_training_state_load(tmp_path, value):
    """A zip-format state_dict.pth whose itr is a numpy integer (as another tool may save it):
    refused as 'truncated, damaged or not a checkpoint' while the same value loaded from a
    legacy file (the outside attacker's round 13). numpy's scalars and the dtypes they are
    pickled with load in both formats; the state keeps a plain number."""
    root, config = str(tmp_path), tiny_config()
    G, D, G_ema = tiny_models(config, seed=1)
    checkpoints.save_weights(G, D, state(1, config), root, 'exp', None, G_ema)
    corrupt_state(root, 'state_dict', set_key('itr', value))
    out, _ = load(root, config)
    assert out['itr'] == 1 and type(out['itr']) is int
