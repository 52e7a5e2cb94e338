"""The command line: the release's flags and scripts parse unchanged; bad input gets one clear
line on stderr, a non-zero exit and untouched checkpoints."""
import argparse
import ast
import csv
import glob
import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys

import pytest
import torch

import flags
import utils
from helpers import FIXTURES, ROOT, TINY_FLAGS, tiny_config, tiny_models

ACTIONS = {'Store': argparse._StoreAction, 'StoreTrue': argparse._StoreTrueAction,
           'StoreFalse': argparse._StoreFalseAction}


def read_tsv(name):
    with open(os.path.join(FIXTURES, name), newline='') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def train_parser():
    return utils.prepare_parser()


def sample_parser():
    return utils.add_sample_parser(utils.prepare_parser())


def entry_parser(entry):
    """The parser of an entry point, by script file name."""
    if entry == 'train.py':
        return train_parser()
    if entry == 'sample.py':
        return sample_parser()
    if entry.startswith('tools/'):  # a tool a script runs, e.g. tools/compare_s32.py
        spec = importlib.util.spec_from_file_location(entry[6:-3], os.path.join(ROOT, entry))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.prepare_parser()
    module = __import__(entry[:-3])  # make_hdf5.py, calculate_inception_moments.py
    return module.prepare_parser()


@pytest.mark.parametrize('row', read_tsv('flags.tsv'), ids=lambda r: r['flag'])
def test_release_flag(row):
    """Each release flag exists with the same dest, action kind, type and default."""
    train_actions = train_parser()._option_string_actions
    actions = sample_parser()._option_string_actions
    action = actions[row['flag']]
    assert action.dest == row['dest']
    assert type(action) is ACTIONS[row['action']]
    assert action.default == ast.literal_eval(row['default'])
    if row['type'] != '-':
        assert action.type.__name__ == row['type']
    assert (row['flag'] in train_actions) == (row['parser'] == 'train+sample')


def test_surprising_flags():
    """--no_pin_memory and --D_thin store False; --no_toggle_grads switches toggling off."""
    p = train_parser()
    default = p.parse_args([])
    assert default.pin_memory is True and default.D_wide is True
    assert default.toggle_grads is True and default.device == ''
    args = p.parse_args(['--no_pin_memory', '--D_thin', '--no_toggle_grads'])
    assert args.pin_memory is False and args.D_wide is False and args.toggle_grads is False
    assert p.parse_args(['--toggle_grads']).toggle_grads is True


def split_commands(entries, args):
    """The release_scripts.tsv row as [(entry, [args])]."""
    return [(e.strip(), shlex.split(a)) for e, a in zip(entries.split(';'), args.split(';'))]


@pytest.mark.parametrize('which', ['train+sample', 'sample'])
def test_release_abbreviations_keep_their_meaning(which):
    """Every prefix the release's parser read as one of its flags still means that flag."""
    parser = train_parser() if which == 'train+sample' else sample_parser()
    names = [r['flag'] for r in read_tsv('flags.tsv') if which == 'sample' or r['parser'] == which]
    release = names + ['--help']
    assert not flags.ADDED_FLAGS & set(release)
    checked = 0
    for flag in names:
        value = [] if parser._option_string_actions[flag].nargs == 0 else ['7']
        full = vars(parser.parse_args([flag] + value))
        for end in range(3, len(flag)):
            prefix = flag[:end]
            if [f for f in release if f.startswith(prefix)] == [flag]:
                assert vars(parser.parse_args([prefix] + value)) == full, prefix
                checked += 1
    assert checked > 100
    # --res was --resume for the release; unique prefixes of added flags still work.
    assert parser.parse_args(['--res']).resume is True
    assert parser.parse_args(['--total', '5']).total_itrs == 5


@pytest.mark.parametrize('entry', ['train.py', 'sample.py', 'calculate_inception_moments.py'])
def test_entry_points_that_read_cifar_take_download(entry):
    """The missing-CIFAR error says "pass --download": every entry point that reads it can."""
    parser = entry_parser(entry)
    assert parser.parse_args([]).download is False
    assert parser.parse_args(['--download']).download is True


def test_make_hdf5_abbreviation_keeps_its_meaning():
    """--compr was the release's --compression; --compression_filter is new."""
    args = entry_parser('make_hdf5.py').parse_args(['--compr'])
    assert args.compression is True and args.compression_filter == 'lzf'


@pytest.mark.parametrize('row', read_tsv('release_scripts.tsv'), ids=lambda r: r['script'])
def test_release_script_args_parse(row):
    """Every release script's arguments parse with its entry point's parser."""
    for entry, args in split_commands(row['entry'], row['args']):
        entry_parser(entry).parse_args(args)


STUB = r"""#!/bin/bash
# Stands in for python: records its arguments (and CUDA_VISIBLE_DEVICES), runs nothing.
# One write per record: a script's background jobs append at the same time.
record=$(printf '%s\x1f' "${CUDA_VISIBLE_DEVICES+CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES}" "$@")
printf '%s\x1e' "$record" >> "$STUB_LOG"
prev=""
for a in "$@"; do  # a demo looks for the sheets a run leaves: pretend there are some
  if [ "$prev" = --experiment_name ]; then
    mkdir -p "samples/$a/1" "weights/$a" && : > "weights/$a/state_dict.pth"
  fi
  prev=$a
done
"""


def script_commands(path, tmp_path):
    """[(env, entry, args)] for each python command a shell script runs, found by running it
    with a stub `python` first on PATH (so bash itself expands variables and arrays)."""
    stub_dir, work = tmp_path / 'bin', tmp_path / 'work'
    stub_dir.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    for name in ['python', 'python3']:
        (stub_dir / name).write_text(STUB)
        (stub_dir / name).chmod(0o755)
    (work / 'sample.py').write_text('')
    log = tmp_path / 'calls.log'
    log.write_text('')
    env = {k: v for k, v in os.environ.items()
           if k not in ('CUDA_VISIBLE_DEVICES', 'PYTHON')}
    env.update(PATH=f"{stub_dir}:{env['PATH']}", STUB_LOG=str(log))
    proc = subprocess.run(['bash', path], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = []
    for record in log.read_text().split('\x1e')[:-1]:
        env_var, entry, *args = record.split('\x1f')[:-1]
        commands.append((env_var, entry, args))
    return commands


# Shell-only helpers run no python (test_watch.py tests duplicate.sh, test_own_data.py the
# launch scripts' launch_common.sh); launch_own_data.sh computes its flags with python, so a
# stub cannot stand in for it (test_own_data.py runs it for real).
SHELL_ONLY = {os.path.join('utils', 'duplicate.sh'), os.path.join('utils', 'launch_common.sh'),
              'launch_own_data.sh'}
SCRIPTS = sorted(p for p in glob.glob(os.path.join(ROOT, 'scripts', '**', '*.sh'), recursive=True)
                 if os.path.relpath(p, os.path.join(ROOT, 'scripts')) not in SHELL_ONLY)


@pytest.mark.slow
@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_file_parses(path, tmp_path):
    """Every python command a scripts/*.sh runs parses with its entry point's parser."""
    commands = script_commands(path, tmp_path)
    assert commands, 'no python command found'
    for _, entry, args in commands:
        entry_parser(entry).parse_args(args)


@pytest.mark.slow
@pytest.mark.parametrize('row', read_tsv('release_scripts.tsv'), ids=lambda r: r['script'])
def test_release_script_present_unchanged(row, tmp_path):
    """scripts/ holds every release script with the release's environment and arguments."""
    path = os.path.join(ROOT, 'scripts', row['script'])
    assert os.path.exists(path), row['script']
    commands = script_commands(path, tmp_path)
    expected = split_commands(row['entry'], row['args'])
    assert [(e, a) for _, e, a in commands] == expected
    assert all(env == row['env'] for env, _, _ in commands)


# ----------------------------------------------------------------------------
# Bad input.

def run_train(*args):
    """python train.py args in a subprocess: (exit code, stderr lines)."""
    proc = subprocess.run([sys.executable, 'train.py', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def roots(tmp_path):
    return ['--weights_root', str(tmp_path / 'weights'), '--logs_root', str(tmp_path / 'logs'),
            '--samples_root', str(tmp_path / 'samples'), '--data_root', str(tmp_path / 'data'),
            '--experiment_name', 'exp', '--test_every', '0']


def digest(folder):
    """{file: sha256} of every file under folder."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(base, name), 'rb') as f:
                out[os.path.relpath(os.path.join(base, name), folder)] = hashlib.sha256(
                    f.read()).hexdigest()
    return out


@pytest.mark.slow
def test_unknown_dataset(tmp_path):
    """An unknown dataset exits non-zero with one stderr line naming it."""
    code, err = run_train('--dataset', 'NOPE32', '--device', 'cpu', *roots(tmp_path))
    assert code != 0
    assert len(err) == 1 and 'NOPE32' in err[0], err


@pytest.mark.parametrize('key', ['G_init', 'D_init'])
def test_unknown_init_refused_unless_skipped(key):
    """An init style the models do not know is a config error, unless init is skipped."""
    with pytest.raises(utils.ConfigError, match=f'--{key} .default.'):
        tiny_config('--' + key, 'default')
    assert tiny_config('--' + key, 'default', '--skip_init')[key] == 'default'


@pytest.mark.slow
def test_resume_without_checkpoint(tmp_path):
    """--resume with nothing to resume exits non-zero with one line, writing no weights."""
    code, err = run_train(*TINY_FLAGS, *roots(tmp_path), '--resume')
    assert code != 0
    assert len(err) == 1 and 'checkpoint' in err[0] and 'exp' in err[0], err
    assert not glob.glob(str(tmp_path / 'weights' / '**' / '*.pth'), recursive=True)


@pytest.mark.slow
def test_mismatched_checkpoint(tmp_path):
    """A checkpoint of another shape exits non-zero naming the first bad key; files unchanged."""
    config = tiny_config('--ema')
    G, D, G_ema = tiny_models(config, seed=0)
    state = {'itr': 2, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    utils.save_weights(G, D, state, str(tmp_path / 'weights'), 'exp', None, G_ema)
    before = digest(tmp_path / 'weights')

    # The first key, in the new G's order, whose shape differs from the file's.
    import BigGAN
    wide = BigGAN.Generator(**tiny_config('--G_ch', '8', '--ema', '--skip_init'))
    saved = torch.load(tmp_path / 'weights' / 'exp' / 'G.pth', weights_only=True)
    first = next(k for k, v in wide.state_dict().items() if saved[k].shape != v.shape)

    code, err = run_train(*TINY_FLAGS, *roots(tmp_path), '--ema', '--G_ch', '8', '--resume')
    assert code != 0
    assert len(err) == 1 and first in err[0], err
    assert digest(tmp_path / 'weights') == before


def _option(parser, name):
    """The parser's action for the option string name."""
    return next(a for a in parser._actions if name in a.option_strings)


def test_every_domain_names_a_flag_of_the_table():
    # DOMAINS bounds flags defined once in flags.FLAGS, the tools' own included.
    assert {k for k in flags.DOMAINS if f'--{k}' not in flags.FLAGS} == set()
    import calculate_inception_moments
    import make_hdf5
    moments = _option(calculate_inception_moments.prepare_parser(), '--kid_feats')
    assert (moments.default, moments.type) == (10000, int)
    chunk = _option(make_hdf5.prepare_parser(), '--chunk_size')
    assert (chunk.default, chunk.type) == (None, int) and '500' in chunk.help
    assert make_hdf5.default_chunk(False, 128) == 500


def test_convert_pretrained_shares_train_flags():
    import convert_pretrained
    parser = convert_pretrained.prepare_parser()
    for name in ('--weights_root', '--experiment_name'):
        action, shared = _option(parser, name), flags.FLAGS[name]
        assert (action.default, action.type, action.help) == (
            shared['default'], shared['type'], shared['help'])
    # The documented differences: truncation unset by default, fixed choices.
    assert _option(parser, '--truncation').default is None
    assert _option(parser, '--truncation').type is float
    assert _option(parser, '-r').choices == [128, 256, 512]
    assert _option(parser, '--G_param').choices == ['SN', 'plain']
    config = vars(parser.parse_args(['--tfhub_dir', 'x', '-r', '256']))
    assert (config['resolution'], config['truncation'], config['G_param'],
            config['weights_root']) == (256, None, 'SN', 'weights')
