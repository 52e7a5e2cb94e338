"""--resume with changed learning rates, betas or eps: flags that differ from the launch win."""
import shutil

import pytest
import torch

import train
import utils
from checkpoints import file_digest
from helpers import run_flags

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

NAME = 'exp'


class Loaded(Exception):
    """Raised where train.run loads its data, right after resuming."""


def train_run(data_root, out, *extra):
    """train.run in-process with the tiny S32 flags, saving every 2 iterations."""
    flags = run_flags(data_root, str(out), NAME, '--save_every', '2', '--G_lr', '5e-05',
                      '--D_lr', '2e-04', *extra)
    return train.run(vars(utils.prepare_parser().parse_args(flags)))


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture
def run3(tiny_run):
    """The session's 3-iteration run, saved at 3, launched at the rates train_run gives (the
    flags' defaults, 5e-05 and 2e-04)."""
    return tiny_run


def resumed_optims(data_root, out, monkeypatch, *extra):
    """Resume with extra flags and stop right after loading; returns the loaded G, D."""
    seen = {}
    real = train.build_models

    def build(config, device):
        models = real(config, device)
        seen['G'], seen['D'] = models[1], models[2]
        return models

    monkeypatch.setattr(train, 'build_models', build)

    def stop(**kwargs):
        raise Loaded

    monkeypatch.setattr(train, 'get_data_loaders', stop)
    with pytest.raises(Loaded):
        train_run(data_root, out, '--total_itrs', '4', '--resume', *extra)
    return seen['G'].optim, seen['D'].optim


def copy_run(run3, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(run3, out)
    return out


def test_changed_rates_override(run3, data_root, tmp_path, monkeypatch, capsys):
    """--G_lr/--D_lr unlike the launch's set the param groups; Adam moments stay bit for bit."""
    out = copy_run(run3, tmp_path)
    folder = out / 'weights' / NAME
    saved_G, saved_D = load(folder / 'G_optim.pth'), load(folder / 'D_optim.pth')
    G_opt, D_opt = resumed_optims(data_root, out, monkeypatch, '--G_lr', '1e-5', '--D_lr', '3e-5')
    assert [g['lr'] for g in G_opt.param_groups] == [1e-5] * len(G_opt.param_groups)
    assert [g['lr'] for g in D_opt.param_groups] == [3e-5] * len(D_opt.param_groups)
    for opt, saved in [(G_opt, saved_G), (D_opt, saved_D)]:
        state = opt.state_dict()['state']
        assert state.keys() == saved['state'].keys() and state
        for k in state:
            assert torch.equal(state[k]['exp_avg'], saved['state'][k]['exp_avg'])
            assert torch.equal(state[k]['exp_avg_sq'], saved['state'][k]['exp_avg_sq'])
        assert opt.param_groups[0]['betas'] == saved['param_groups'][0]['betas']
    text = capsys.readouterr().out
    assert "--G_lr 1e-05 overrides the checkpoint's 5e-05" in text
    assert "--D_lr 3e-05 overrides the checkpoint's 0.0002" in text


def test_saved_state_records_launched_and_effective(run3, data_root, tmp_path):
    """After an overriding resume, config holds the new launch values and optim_settings the
    optimizers' effective ones; the release keys are all still there."""
    out = copy_run(run3, tmp_path)
    train_run(data_root, out, '--total_itrs', '4', '--resume', '--G_lr', '1e-5')
    saved = load(out / 'weights' / NAME / 'state_dict.pth')
    for key in ['itr', 'epoch', 'save_num', 'save_best_num', 'best_IS', 'best_FID', 'config']:
        assert key in saved
    assert saved['itr'] == 4 and saved['config']['G_lr'] == 1e-5
    assert saved['config']['D_lr'] == 2e-4
    assert saved['optim_settings']['G'] == {'lr': 1e-5, 'betas': (0.0, 0.999), 'eps': 1e-8}
    assert saved['optim_settings']['D'] == {'lr': 2e-4, 'betas': (0.0, 0.999), 'eps': 1e-8}


def test_launch_values_keep_lowered_rate(run3, data_root, tmp_path, monkeypatch, capsys):
    """Relaunching with the launch values keeps a lr lowered in the checkpoint since."""
    out = copy_run(run3, tmp_path)
    folder = out / 'weights' / NAME
    optim = load(folder / 'G_optim.pth')
    for group in optim['param_groups']:
        group['lr'] = 7e-6
    torch.save(optim, folder / 'G_optim.pth')
    # Keep the set's own records true (its files' digests, its optimizers' settings), as a
    # save with the lowered rate would.
    state = load(folder / 'state_dict.pth')
    state['files']['G_optim.pth'] = file_digest(folder / 'G_optim.pth')
    state['optim_settings']['G']['lr'] = 7e-6
    torch.save(state, folder / 'state_dict.pth')
    G_opt, D_opt = resumed_optims(data_root, out, monkeypatch)
    assert [g['lr'] for g in G_opt.param_groups] == [7e-6] * len(G_opt.param_groups)
    assert D_opt.param_groups[0]['lr'] == 2e-4
    assert 'overrides' not in capsys.readouterr().out


def test_betas_and_eps_override(run3, data_root, tmp_path, monkeypatch, capsys):
    """--G_B1, --D_B2 and --adam_eps unlike the launch's change only those settings."""
    out = copy_run(run3, tmp_path)
    G_opt, D_opt = resumed_optims(data_root, out, monkeypatch, '--G_B1', '0.5', '--D_B2',
                                  '0.99', '--adam_eps', '1e-6')
    assert G_opt.param_groups[0]['betas'] == (0.5, 0.999)
    assert D_opt.param_groups[0]['betas'] == (0.0, 0.99)
    assert G_opt.param_groups[0]['eps'] == D_opt.param_groups[0]['eps'] == 1e-6
    assert G_opt.param_groups[0]['lr'] == 5e-5 and D_opt.param_groups[0]['lr'] == 2e-4
    text = capsys.readouterr().out
    assert "--G_B1 0.5 overrides the checkpoint's 0.0" in text
    assert "--D_B2 0.99 overrides the checkpoint's 0.999" in text
    assert "--adam_eps 1e-06 overrides the checkpoint's 1e-08" in text


LATER = ['--total_itrs', '6']  # past the resumed run's 4


def test_a_later_resume_without_the_flag_keeps_a_resumed_rate(run3, data_root, tmp_path,
                                                               monkeypatch, capsys):
    """Round 9's F: a rate set at one resume was undone by the next resume that left the flag
    out (each resume recorded its own flags as the launch values). Every value a launch of the
    run gave is recorded (launch_optim), and none of them undoes a change made since."""
    out = copy_run(run3, tmp_path)
    train_run(data_root, out, '--total_itrs', '4', '--resume', '--G_lr', '1e-5')
    saved = load(out / 'weights' / NAME / 'state_dict.pth')
    assert saved['launch_optim']['G_lr'] == [5e-5, 1e-5]
    assert saved['launch_optim']['D_lr'] == [2e-4]
    capsys.readouterr()
    # Relaunching the original command (its 5e-05) and the first resume's (1e-05) keep 1e-05.
    G_opt, _ = resumed_optims(data_root, out, monkeypatch, *LATER)
    assert {g['lr'] for g in G_opt.param_groups} == {1e-5}
    text = capsys.readouterr().out
    assert "note: --G_lr 5e-05 was given at an earlier launch of this run; the checkpoint's " \
           "1e-05, set since, is kept" in text and 'overrides' not in text
    G_opt, _ = resumed_optims(data_root, out, monkeypatch, *LATER, '--G_lr', '1e-5')
    assert {g['lr'] for g in G_opt.param_groups} == {1e-5}
    assert capsys.readouterr().out.count('--G_lr') == 0
    # A value no launch gave still overrides.
    G_opt, _ = resumed_optims(data_root, out, monkeypatch, *LATER, '--G_lr', '3e-5')
    assert {g['lr'] for g in G_opt.param_groups} == {3e-5}
    assert "--G_lr 3e-05 overrides the checkpoint's 1e-05" in capsys.readouterr().out


def test_a_set_saved_without_launch_optim_compares_with_its_config(run3, data_root, tmp_path,
                                                                   monkeypatch, capsys):
    """A set without launch_optim (the release's, older ones): its config's values are the
    launch values, as before."""
    out = copy_run(run3, tmp_path)
    folder = out / 'weights' / NAME
    state = load(folder / 'state_dict.pth')
    del state['launch_optim']
    torch.save(state, folder / 'state_dict.pth')
    G_opt, D_opt = resumed_optims(data_root, out, monkeypatch, '--D_lr', '3e-5')
    assert G_opt.param_groups[0]['lr'] == 5e-5 and D_opt.param_groups[0]['lr'] == 3e-5
    assert "--D_lr 3e-05 overrides the checkpoint's 0.0002" in capsys.readouterr().out
