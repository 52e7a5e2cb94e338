"""scripts/launch_own_data.sh end to end on generated folders: the histogram, the HDF5 file,
training for a tiny iteration budget and sample sheets; a folder without class subfolders as one
class; refusals through the data path's own checks, in one line, before anything is written."""
import os
import shlex
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from PIL import Image

import datasets
from helpers import ROOT

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

SCRIPT = os.path.join(ROOT, 'scripts', 'launch_own_data.sh')
# Three classes of different sizes; one stored grayscale, one as a palette image.
CLASSES = {'circles': ('RGB', 5), 'gray': ('L', 6), 'palette': ('P', 7)}


def make_folder(root, classes):
    """root/<class>/<i>.png in each class's PIL mode; returns the RGB pixels by class."""
    rng = np.random.default_rng(0)
    pixels = {}
    for name, (mode, count) in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        pixels[name] = []
        for i in range(count):
            img = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).convert(mode)
            img.save(folder / f'{i}.png')
            pixels[name].append(np.asarray(img.convert('RGB')))
    return pixels


def launch(tmp_path, folder, *flags, **env):
    """Run the script with every root under tmp_path and the Inception weights absent."""
    env = {**os.environ, 'PYTHON': sys.executable, 'TOTAL_ITRS': '2', 'SAVE_EVERY': '2',
           'DATA_ROOT': str(tmp_path / 'data'), 'WEIGHTS_ROOT': str(tmp_path / 'weights'),
           'LOGS_ROOT': str(tmp_path / 'logs'), 'SAMPLES_ROOT': str(tmp_path / 'samples'),
           'INCEPTION_WEIGHTS': str(tmp_path / 'no_inception.pth'), **env}
    return subprocess.run(['bash', SCRIPT, str(folder), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_folder_to_sample_sheets(tmp_path):
    """Histogram first, metrics off in one line, an RGB HDF5 file of the centre-cropped images,
    a checkpoint at the tiny budget and a class sheet with one row per class. The folder sits
    under a parent named with a tab, which no path handed between the script's steps splits."""
    folder = tmp_path / 'tab\there' / 'my_images'
    pixels = make_folder(folder, CLASSES)
    # 18 images, fewer than one step of the demo's batch 32 takes: a smaller batch, as a user
    # with a folder this small would give.
    run = launch(tmp_path, folder, '--seed', '3', '--batch_size', '8')
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:4] == ['3 classes, 18 images:', '  circles  5', '  gray     6',
                         '  palette  7']
    off = [line for line in lines if line.startswith('metrics are off')]
    assert len(off) == 1 and str(tmp_path / 'no_inception.pth') in off[0]
    assert 'INCEPTION_WEIGHTS=PATH' in off[0]

    with h5py.File(tmp_path / 'data' / 'my_images32.hdf5', 'r') as f:
        imgs, labels = f['imgs'][:], f['labels'][:]
    assert imgs.shape == (18, 3, 32, 32) and imgs.dtype == np.uint8
    assert labels.tolist() == [0] * 5 + [1] * 6 + [2] * 7
    # The gray class is stored as three equal channels; the palette one as its RGB colours.
    assert (imgs[5:11, 0] == imgs[5:11, 1]).all() and (imgs[5:11, 1] == imgs[5:11, 2]).all()
    crop = Image.fromarray(pixels['palette'][0][:, 8:32]).resize((32, 32), Image.BILINEAR)
    assert np.array_equal(imgs[11].transpose(1, 2, 0), np.asarray(crop))

    state = tmp_path / 'weights' / 'my_images'
    assert {'G.pth', 'G_ema.pth', 'D.pth', 'state_dict.pth'} <= set(os.listdir(state))
    import torch
    saved = torch.load(state / 'state_dict.pth', weights_only=True)
    assert saved['itr'] == 2 and saved['config']['seed'] == 3
    assert saved['config']['n_classes'] == 3 and saved['config']['resolution'] == 32
    sheet = Image.open(tmp_path / 'samples' / 'my_images' / '-1' / 'samples0.jpg')
    assert sheet.mode == 'RGB' and sheet.size[1] == 3 * 32 + 4 * 2  # 3 rows, padding 2


def test_flat_folder_is_one_class_and_a_bad_image_stops_it(tmp_path):
    """A folder without class subfolders is one class here (train.py refuses it); an unreadable
    image then stops make_hdf5.py with one line naming it, before any training."""
    flat = tmp_path / 'flat'
    make_folder(flat, {'': ('L', 4)})
    (flat / 'broken.jpg').write_bytes(b'not an image')
    with pytest.raises(datasets.DatasetError, match='no class subfolders'):
        datasets.ImageFolder(str(flat))
    run = launch(tmp_path, flat)
    assert run.returncode == 2
    assert run.stdout.splitlines()[0] == '1 class: 5 images'
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 1 and 'broken.jpg' in errors[0] and errors[0].startswith('error:')
    # Its advice is this script's (make_hdf5.py's --skip_bad is not among the flags it passes).
    assert errors[0].endswith('or run this script with SKIP_BAD=1')
    assert not (tmp_path / 'weights').exists()
    assert not (tmp_path / 'data' / 'flat32.hdf5').exists()
    # Following it: the image is skipped and the HDF5 file holds the other four (a flag
    # only train.py reads, and refuses, ends the run there: test_folder_to_sample_sheets trains).
    skipped = launch(tmp_path, flat, '--G_lr', '-1', SKIP_BAD='1')
    assert skipped.returncode == 2 and '--G_lr' in skipped.stderr, skipped.stderr[-2000:]
    with h5py.File(tmp_path / 'data' / 'flat32.hdf5', 'r') as f:
        assert len(f['labels']) == 4, skipped.stderr[-2000:]


def test_two_flat_folders_of_one_name_are_each_their_own(tmp_path):
    """A/imgs, then B/imgs (flat, same name, same DATA_ROOT): the second run listed and
    converted A's images, through the view the first left (the outside attacker's round 9).
    The view A's run left is made by hand; a broken image stops B's run after its listing."""
    for folder, count in (('A', 2), ('B', 4)):
        make_folder(tmp_path / folder / 'imgs', {'': ('RGB', count)})
    (tmp_path / 'B' / 'imgs' / 'broken.jpg').write_bytes(b'not an image')
    (tmp_path / 'data' / 'imgs_1class').mkdir(parents=True)
    (tmp_path / 'data' / 'imgs_1class' / 'imgs').symlink_to(tmp_path / 'A' / 'imgs')
    run = launch(tmp_path, tmp_path / 'B' / 'imgs')
    assert (run.returncode, run.stdout.splitlines()[0]) == (2, '1 class: 5 images')
    assert 'broken.jpg' in run.stderr



def test_a_flat_folders_view_is_not_made_through_a_planted_link(tmp_path):
    """DATA_ROOT/<name>_1class planted as a symlink to a folder outside the roots: the view's
    link and the image index were written there (the outside attacker's round 14). Now one
    line naming the link, before anything is written; the folder outside stays empty."""
    make_folder(tmp_path / 'flat', {'': ('RGB', 2)})
    outside = tmp_path / 'outside'
    outside.mkdir()
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'flat_1class').symlink_to(outside)
    run = launch(tmp_path, tmp_path / 'flat')
    errors = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(errors) == 1 and 'is a symbolic link' in errors[0], errors
    assert os.listdir(outside) == [] and sorted(os.listdir(tmp_path / 'flat')) == ['0.png', '1.png']

def test_one_class_folder_is_counted_as_one_class(tmp_path):
    """The histogram said '1 classes' (this session's own-data run); an unreadable image
    ends the run after the listing, at make_hdf5.py."""
    make_folder(tmp_path / 'one', {'only': ('RGB', 3)})
    (tmp_path / 'one' / 'only' / 'broken.png').write_bytes(b'not an image')
    run = launch(tmp_path, tmp_path / 'one')
    assert run.stdout.splitlines()[:2] == ['1 class, 4 images:', '  only  4']
    assert run.returncode == 2 and 'broken.png' in run.stderr


def test_a_file_as_the_folder_is_named_as_a_file(tmp_path):
    (tmp_path / 'afile.png').write_bytes(b'x')
    run = launch(tmp_path, tmp_path / 'afile.png')
    assert run.returncode == 2 and run.stderr.strip() == (
        f"error: image folder {tmp_path / 'afile.png'} is a file, not a folder; give the folder "
        f'of class folders')


# (extra flags, where the commands then write the sheets, relative to tmp_path/elsewhere): the
# closing ls looked in samples/s32_demo whatever the flags said, and failed with exit 2.
WHERE_SHEETS_GO = [
    (['--samples_root', '{out}'], 's32_demo'),
    (['--experiment_name', 'L3', '--samples_root={out}'], 'L3'),
    # Under a --base_root, whose subfolders the commands use (round 9).
    (['--base_root', '{out}/br'], 'br/samples/s32_demo'),
    # Abbreviated, as argparse takes them.
    (['--experiment_n', 'L4', '--samples_ro', '{out}'], 'L4')]


@pytest.mark.parametrize('flags,where', WHERE_SHEETS_GO, ids=[w for _, w in WHERE_SHEETS_GO])
def test_the_demo_names_its_last_sheet_under_the_samples_root_given(tmp_path, flags, where):
    """launch_demo.sh with roots or a name among its extra flags: the samples land where the
    commands take them, and its last line names them there. A stand-in python plays train.py
    and sample.py."""
    stub = stand_in(tmp_path)
    out = tmp_path / 'elsewhere'
    run = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'launch_demo.sh'),
                          *(f.format(out=out) for f in flags)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, 'PYTHON': str(stub)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == (
        f"last class sheet: {out}/{where}/10/samples0.jpg (sample.py's: "
        f"{out}/{where}/-1/samples0.jpg)")


def stand_in(folder, train_seconds=0):
    """A python that plays train.py (a checkpoint after train_seconds) and sample.py (sheet
    folders), reading the flags as argparse does."""
    stub = folder / 'python'
    stub.write_text('#!' + sys.executable + '\n'
                    'import argparse, os, sys, time\n'
                    'p = argparse.ArgumentParser()\n'
                    'for f in ("--samples_root", "--weights_root", "--experiment_name",\n'
                    '          "--base_root"):\n'
                    '    p.add_argument(f)\n'
                    'a, _ = p.parse_known_args(sys.argv[2:])\n'
                    'if a.base_root:\n'
                    '    a.samples_root = os.path.join(a.base_root, "samples")\n'
                    '    a.weights_root = os.path.join(a.base_root, "weights")\n'
                    'if sys.argv[1] == "train.py":\n'
                    f'    time.sleep({train_seconds})\n'
                    '    run = os.path.join(a.weights_root, a.experiment_name)\n'
                    '    os.makedirs(run, exist_ok=True)\n'
                    '    open(os.path.join(run, "state_dict.pth"), "w").close()\n'
                    'for itr in ("2", "10", "-1"):\n'
                    '    os.makedirs(os.path.join(a.samples_root, a.experiment_name, itr),\n'
                    '                exist_ok=True)\n')
    stub.chmod(0o755)
    return stub


def test_a_signal_to_the_script_reaches_the_training(tmp_path):
    """SIGTERM to launch_demo.sh ended the script and left train.py (under timeout) training
    on for up to TRAIN_SECONDS, holding the experiment's lock (the outside attacker's round 8).
    Now the training gets it (train.py saves and stops) and the script ends as by SIGTERM."""
    stub = tmp_path / 'python'
    stub.write_text('#!' + sys.executable + '\n'
                    'import signal, sys, time\n'
                    'def stop(*_):\n'
                    '    open("train_got_term", "w").close()\n'
                    '    sys.exit(0)\n'
                    'signal.signal(signal.SIGTERM, stop)\n'
                    'open("train_started", "w").close()\n'
                    'time.sleep(60)\n')
    stub.chmod(0o755)
    script = subprocess.Popen(['bash', os.path.join(ROOT, 'scripts', 'launch_demo.sh')],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, 'PYTHON': str(stub)})
    for _ in range(300):
        if (tmp_path / 'train_started').exists():
            break
        time.sleep(0.1)
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=30) == 143
    assert (tmp_path / 'train_got_term').exists()


def test_the_cap_before_the_first_checkpoint_stops_the_demo_in_one_line(tmp_path):
    """TRAIN_SECONDS up before train.py's first checkpoint (SIGINT in its start-up): the
    script said 'training took 6s (stopped by the TRAIN_SECONDS cap)' and ran sample.py on a
    run that was not there (the outside attacker's round 7). Now one line, exit 2, no
    sampling."""
    stub = stand_in(tmp_path, train_seconds=30)
    run = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'launch_demo.sh')],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, 'PYTHON': str(stub), 'TRAIN_SECONDS': '1'})
    # The stub's own traceback comes first.
    assert (run.returncode, run.stderr.strip().splitlines()[-1]) == (2, (
        'error: train.py left no checkpoint in weights/s32_demo: the TRAIN_SECONDS cap (1 s) '
        'came first; raise TRAIN_SECONDS'))
    assert not (tmp_path / 'samples').exists()


@pytest.mark.parametrize('var, name', [('NAME', '../escape'), ('NAME', 'a\tb'),
                                       ('NAME', '--resume'), ('DATA_ROOT', '--x'),
                                       ('LOGS_ROOT', '-l')])
def test_a_name_that_is_no_plain_name_is_refused(tmp_path, var, name):
    """NAME (or the folder's own name, its default) goes through files.check_name before the
    script creates anything ('../escape' wrote a view and a symlink beside DATA_ROOT), and
    neither it nor a root may start with '-' (the commands the script runs read it as a flag:
    argparse's usage text instead of one line)."""
    make_folder(tmp_path / 'flat', {'': ('RGB', 2)})
    run = launch(tmp_path, tmp_path / 'flat', **{var: name})
    assert run.returncode == 2 and run.stdout == ''
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 1 and (errors[0].startswith(f'error: NAME {name!r}') or errors[0]
                                 .startswith(f"error: {var} '{name}' starts with '-'")), errors
    assert sorted(os.listdir(tmp_path)) == ['flat']


@pytest.mark.parametrize('b_images', [0, 1])
def test_refused_in_one_line_by_check_layout(tmp_path, b_images):
    """A folder that cannot train (a class folder with no image or one) is refused by
    datasets.check_layout's own line, exit 2, and nothing is written."""
    make_folder(tmp_path / 'bad', {'a': ('RGB', 2), 'b': ('RGB', b_images)})
    with pytest.raises(datasets.DatasetError) as refused:
        datasets.ImageFolder(str(tmp_path / 'bad'), index_filename='bad_imgs.npz')
    assert str(refused.value).startswith(f"class folder {tmp_path / 'bad' / 'b'} holds "
                                         f'{b_images} image')
    run = launch(tmp_path, tmp_path / 'bad')
    assert run.returncode == 2 and run.stdout == ''
    assert run.stderr.strip().splitlines() == [f'error: {refused.value}']
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'weights').exists()


def script_flags(path, array):
    """{flag: value or None} of a bash array `NAME=( ... )` in the script at path."""
    with open(path) as f:
        text = f.read()
    body = text[text.index(f'{array}=(\n') + len(array) + 2:]
    tokens = shlex.split(body[:body.index('\n)')], comments=True)
    found = {}
    for i, token in enumerate(tokens):
        if token.startswith('--'):
            following = tokens[i + 1] if i + 1 < len(tokens) else '--'
            found[token] = None if following.startswith(('--', '"${')) else following
    return found


def test_starts_from_the_demos_settings():
    """The model and training flags are launch_demo.sh's, but for the data, the names and the
    epoch count (a small folder needs many epochs for the demo's iterations)."""
    demo = os.path.join(ROOT, 'scripts', 'launch_demo.sh')
    own = {**script_flags(SCRIPT, 'MODEL_FLAGS'), **script_flags(SCRIPT, 'TRAIN_FLAGS')}
    theirs = {**script_flags(demo, 'MODEL_FLAGS'), **script_flags(demo, 'TRAIN_FLAGS')}
    for differ in ('--dataset', '--experiment_name', '--data_root', '--weights_root',
                   '--logs_root', '--samples_root', '--num_epochs'):
        own.pop(differ, None)
        theirs.pop(differ, None)
    assert own == theirs


# (variable, value, its unit as the refusal names it): SAVE_EVERY=0 saved nothing, so the
# sheets had no checkpoint to come from (exit 2 after the training was spent); a 20-digit
# SAVE_EVERY was bash's 'integer expression expected' and then a run; TRAIN_SECONDS=abc was
# three lines of `timeout` and status 125 (the outside attacker's round 7).
SAVES = 'iterations (the sheets are drawn from the last checkpoint)'
BAD_COUNTS = [('SAVE_EVERY', '0', SAVES), ('SAVE_EVERY', '99999999999999999999', SAVES),
              ('SAVE_EVERY', '-3', SAVES), ('TRAIN_SECONDS', 'abc', 'seconds'),
              ('TRAIN_SECONDS', '1e3', 'seconds'), ('TOTAL_ITRS', '0', 'iterations'),
              ('TOTAL_ITRS', ' 5', 'iterations')]


@pytest.mark.parametrize('script', ['launch_own_data.sh', 'launch_demo.sh'])
@pytest.mark.parametrize('var,value,unit', BAD_COUNTS + [('METRIC_IMAGES', 'x', 'images')],
                         ids=[f'{v}={x}' for v, x, _ in BAD_COUNTS] + ['METRIC_IMAGES=x'])
def test_a_count_from_the_environment_is_checked_up_front(tmp_path, script, var, value, unit):
    """Each count the scripts take from the environment is a positive whole number, or one
    line and exit 2 before anything runs (PYTHON=false: nothing may be started)."""
    if var == 'METRIC_IMAGES' and script == 'launch_demo.sh':
        pytest.skip('the demo computes no metrics')
    run = subprocess.run(['bash', os.path.join(ROOT, 'scripts', script), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, var: value, 'PYTHON': 'false'})
    assert (run.returncode, run.stderr.strip().splitlines()) == (2, [
        f"error: {var} '{value}' must be a positive whole number of {unit}, at most 999999999"])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('script', ['launch_own_data.sh', 'launch_demo.sh'])
@pytest.mark.parametrize('env,line', [
    ({'TOTAL_ITRS': '5\n6'}, "error: TOTAL_ITRS $'5\\n6' must be a positive whole number of "
                             'iterations, at most 999999999'),
    ({'PYTHON': '/nothere/python'}, 'error: PYTHON /nothere/python is not a program: set '
                                    'PYTHON to the interpreter the requirements are installed '
                                    'in (e.g. PYTHON=.venv/bin/python)'),
    # A shell builtin or keyword is a command but no program `timeout` can run (round 14).
    *[({'PYTHON': name}, f'error: PYTHON {name} is not a program: set PYTHON to the '
                         'interpreter the requirements are installed in (e.g. '
                         'PYTHON=.venv/bin/python)') for name in ('exit', 'if', 'cd')]])
def test_an_odd_environment_is_one_line(tmp_path, script, env, line):
    """A count holding a newline was a refusal over two lines; a PYTHON that is no command
    was `timeout`'s two lines and status 127 (the outside attacker's round 13)."""
    run = subprocess.run(['bash', os.path.join(ROOT, 'scripts', script), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, 'PYTHON': 'false', **env})
    assert (run.returncode, run.stderr.splitlines()) == (2, [line])
    assert os.listdir(tmp_path) == []


def test_a_resolution_without_an_architecture_is_refused_before_the_hdf5(tmp_path):
    """RESOLUTION=48: train.py refused it only after make_hdf5.py had written the file."""
    run = subprocess.run(['bash', SCRIPT, str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, 'RESOLUTION': '48',
                                                     'PYTHON': 'false'})
    assert run.returncode == 2 and run.stderr.strip() == (
        "error: RESOLUTION '48' has no architecture: use 32, 64, 128, 256 or 512")
    assert os.listdir(tmp_path) == []
