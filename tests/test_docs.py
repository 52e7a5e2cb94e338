"""The documentation cannot drift from the code.

- Every relative link in README.md and docs/*.md names a file that exists and, with an #anchor,
  a heading of that file (GitHub's slugs).
- Every command in their fenced code blocks that runs an entry point (`python X.py ...`,
  `torchrun ... train.py ...`, `bash scripts/...`) parses with that script's own parser:
  `prepare_parser()` of the entry points, the parser a tool's `main()` builds, train.py's and
  sample.py's for the flags a launch script hands on; a bash-parsed script must know each
  option given. Commands with placeholders are skipped, each with its reason.
- Every such command also runs (test_documented_commands_run), page by page, with the
  overrides that make it short and its placeholders filled in, as the table RUNS lists them
  with the skips and their reasons; each must exit 0 and write the outputs RUNS names.
"""
import argparse
import contextlib
import glob
import importlib
import io
import os
import re
import shlex

import pytest

import flags
from helpers import ROOT

PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
# Entry points whose parser builder is importable, by script path.
PARSERS = {
    'train.py': flags.prepare_parser,
    'sample.py': lambda: flags.add_sample_parser(flags.prepare_parser()),
}
# Launch scripts that hand the flags after their own arguments to train.py and sample.py, with
# how many positional arguments come first.
FORWARDING = {'scripts/launch_demo.sh': 0, 'scripts/launch_own_data.sh': 1}


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


# ----------------------------------------------------------------------------
# Links.

def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = heading.strip().lower().replace('`', '')
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(markdown):
    """Every heading's anchor, with GitHub's -1, -2 suffixes for repeated headings."""
    seen, found = {}, set()
    for line in FENCE.sub('', markdown).splitlines():
        m = re.match(r'#{1,6} (.+)', line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f'{base}-{n}')
    return found


def broken_links(path):
    """(target, why) for each relative link of the page at path that does not resolve."""
    text = read(path)
    prose = re.sub(r'`[^`\n]*`', '', FENCE.sub('', text))
    bad = []
    for target in LINK.findall(prose):
        if re.match(r'[a-z]+:', target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition('#')
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            bad.append((target, 'no such file'))
        elif anchor and anchor not in anchors(read(dest)):
            bad.append((target, f'no heading #{anchor} in {os.path.relpath(dest, ROOT)}'))
    return bad


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve(page):
    assert broken_links(page) == []


def test_slugs_are_githubs():
    """GitHub's anchors for headings like ours (punctuation, code, repeats)."""
    assert slug('Reading HDF5 files') == 'reading-hdf5-files'
    assert slug('`--cross_replica`: synchronized batch norm') == (
        '--cross_replica-synchronized-batch-norm')
    assert slug('The training step: `tools/benchmark.py`') == 'the-training-step-toolsbenchmarkpy'
    assert slug("Where this differs from the forks, and why") == (
        'where-this-differs-from-the-forks-and-why')
    assert anchors('# A\n## A\n```\n# not a heading\n```\n## A\n') == {'a', 'a-1', 'a-2'}


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / 'page.md'
    (tmp_path / 'other.md').write_text('# Other page\n')
    page.write_text('# Top\n[ok](other.md#other-page) [self](#top) [gone](missing.md) '
                    '[bad anchor](other.md#nope) `[code](missing.md)` [web](https://x.org)\n')
    assert broken_links(str(page)) == [('missing.md', 'no such file'),
                                       ('other.md#nope', 'no heading #nope in '
                                        + os.path.relpath(str(tmp_path / 'other.md'), ROOT))]


# ----------------------------------------------------------------------------
# Commands.

def shell_commands(block):
    """The simple commands of a shell code block: continuations joined, comments dropped,
    split at &&, ||, ; and |."""
    commands = []
    for line in block.replace('\\\n', ' ').splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=';&|')
        lexer.whitespace_split = True
        lexer.commenters = '#'
        command = []
        for token in lexer:
            if token in (';', '&&', '||', '|', '&'):
                commands.append(command)
                command = []
            else:
                command.append(token)
        commands.append(command)
    return [c for c in commands if c]


def documented_commands():
    """(page, command tokens) for every command of every fenced shell block."""
    found = []
    for page in PAGES:
        for lang, block in FENCE.findall(read(page)):
            if lang in ('bash', 'sh', 'shell', ''):
                found += [(os.path.relpath(page, ROOT), c) for c in shell_commands(block)]
    return found


def entry_point(tokens):
    """('python' or 'bash', script, its arguments, environment names) for a command that runs
    one of the project's scripts, else None."""
    env = []
    while tokens and re.match(r'[A-Za-z_]\w*=', tokens[0]):
        env.append(tokens[0].split('=', 1)[0])
        tokens = tokens[1:]
    if not tokens:
        return None
    program = os.path.basename(tokens[0])
    if program.startswith('python') and len(tokens) > 1 and tokens[1].endswith('.py'):
        return 'python', tokens[1], tokens[2:], env
    if program == 'torchrun':
        for i, token in enumerate(tokens):
            if token.endswith('.py'):
                return 'python', token, tokens[i + 1:], env
    if program == 'bash' and len(tokens) > 1 and tokens[1].endswith('.sh'):
        return 'bash', tokens[1], tokens[2:], env
    return None


class _Parsed(Exception):
    """Raised in place of parse_args to hand back the parser a tool's main() built."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def tool_parser(script, monkeypatch):
    """The ArgumentParser that a script's main() builds (it is stopped at parse_args)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, os.path.dirname(script)))
    module = importlib.import_module(os.path.basename(script)[:-3])

    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', capture)
    with pytest.raises(_Parsed) as parsed:
        module.main()
    monkeypatch.undo()
    return parsed.value.parser


def parser_for(script, monkeypatch):
    if script in PARSERS:
        return PARSERS[script]()
    if os.path.dirname(script) == '':
        return importlib.import_module(script[:-3]).prepare_parser()
    return tool_parser(script, monkeypatch)


def check_parses(parser, args, what):
    """Parse args with parser; an unknown flag or a bad value fails with argparse's message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f'{what}: {err.getvalue().strip().splitlines()[-1]}')


def placeholder(args):
    """Why the arguments cannot be parsed as written, or None."""
    for arg in args:
        if arg in ('...',) or re.search(r'<\w[^>]*>|^\[|\]$|^[A-Z]+$', arg):
            return f'placeholder {arg!r} (a usage line, not a command)'
    return None


COMMANDS = [(page, entry_point(c)) for page, c in documented_commands() if entry_point(c)]


@pytest.mark.parametrize('page,command', COMMANDS,
                         ids=[f'{p}:{c[1]}:{i}' for i, (p, c) in enumerate(COMMANDS)])
def test_command_parses(page, command, monkeypatch):
    kind, script, args, env = command
    what = f'{page}: {kind} {script} {" ".join(args)}'
    assert os.path.isfile(os.path.join(ROOT, script)), f'{what}: no such script'
    reason = placeholder(args)
    if reason:
        pytest.skip(reason)
    if kind == 'python':
        check_parses(parser_for(script, monkeypatch), args, what)
        return
    text = read(os.path.join(ROOT, script))
    for name in env:
        assert re.search(rf'\${{{name}\b', text), f'{what}: {script} does not read ${name}'
    if script in FORWARDING:
        flag_args = args[FORWARDING[script]:]
        check_parses(PARSERS['train.py'](), flag_args, f'{what} (train.py)')
        check_parses(PARSERS['sample.py'](), flag_args, f'{what} (sample.py)')
    elif '"$@"' in text:
        # The data_efficient scripts: the flags go to train.py after the script's own.
        check_parses(PARSERS['train.py'](), args, f'{what} (train.py)')
    elif 'case' in text:
        # Parsed in bash: each option given must be one the script handles.
        for arg in args:
            if arg.startswith('-'):
                assert arg.split('=')[0] in text, f'{what}: {script} has no option {arg}'
    else:
        assert not args, f'{what}: {script} takes no arguments'


def test_commands_are_found():
    """The extraction sees the README's own commands (so an empty list cannot pass)."""
    scripts = {c[1] for p, c in COMMANDS if p == 'README.md'}
    assert {'scripts/launch_demo.sh', 'scripts/launch_own_data.sh', 'make_hdf5.py',
            'calculate_inception_moments.py', 'train.py', 'sample.py', 'plot_logs.py'} <= scripts


def test_a_bad_flag_fails(monkeypatch):
    """An unknown flag fails the parse, for an entry point, a tool and a launch script."""
    for script in ('train.py', 'make_hdf5.py', 'tools/benchmark.py'):
        with pytest.raises(pytest.fail.Exception, match='unrecognized arguments'):
            check_parses(parser_for(script, monkeypatch), ['--no_such_flag'], script)
    tokens = shell_commands('X=1 bash scripts/launch_demo.sh --G_ch 8 && echo done')
    assert tokens == [['X=1', 'bash', 'scripts/launch_demo.sh', '--G_ch', '8'], ['echo', 'done']]
    assert entry_point(tokens[0]) == ('bash', 'scripts/launch_demo.sh', ['--G_ch', '8'], ['X'])


def test_no_command_hides_in_an_indented_block():
    """Commands live in fenced blocks, where the parse check sees them."""
    for page in PAGES:
        for line in FENCE.sub('', read(page)).splitlines():
            assert not re.match(r'( {4}|\t)\s*(python|bash|torchrun) ', line), (page, line)


def test_pages_are_in_the_readme_map():
    """Every docs page is listed in the README's map of docs/."""
    readme = read(PAGES[0])
    for page in PAGES[1:]:
        assert f'(docs/{os.path.basename(page)})' in readme, page


def test_readme_size():
    assert os.path.getsize(PAGES[0]) <= 16000


# ----------------------------------------------------------------------------
# Running them: every documented command runs, page by page in the order of the page, in a
# folder of its own (the repository's entry points and scripts linked in, the data generated)
# through a fork server (tests/forkserver.py: `python` there is a shim whose commands are
# forked from one process that imported torch once). Each command runs with the overrides of
# RUNS, which also lists the outputs each must leave, and every skip with its reason.

# Defaults that make a run short, used by the rows below. The own-data script computes
# Inception moments and metrics when the weights are there (seconds each on this CPU): one run
# does, the others point INCEPTION_WEIGHTS at no file and print that metrics are off.
SHORT = {'TOTAL_ITRS': '2'}
METRICS_OFF = {'INCEPTION_WEIGHTS': 'no_inception_weights.pth'}
TINY_RUN = ['--G_ch', '4', '--D_ch', '4', '--batch_size', '4', '--G_attn', '0', '--D_attn', '0',
            '--dim_z', '8', '--G_shared', '--shared_dim', '8', '--hier', '--num_workers', '0',
            '--total_itrs', '2', '--test_every', '0', '--ema', '--use_ema']
COLLAPSE_RUN = ['--dataset', 'S32', '--experiment_name', 'exp'] + TINY_RUN
SCALING = ('BigGAN on I128_hdf5: even at width 8, batch 2 and one iteration, the run ends by '
           "drawing sample sheets of ImageNet's 1,000 classes at 128 px, over 5 minutes here "
           '(flags parsed above)')
DEMO_OUT = ['samples/s32_demo/2/samples0.jpg', 'samples/s32_demo/fixed_samples2.jpg',
            'weights/s32_demo/G_ema.pth', 'logs/s32_demo/G_loss.log']
OWN_OUT = ['data/my_images32.hdf5', 'data/my_images_inception_moments.npz',
           'weights/my_images/G_ema.pth', 'samples/my_images/-1/samples0.jpg']
GPU_SCRIPT = ("the release's 8-GPU recipe, arguments written into the script: BigGAN at 128 px, "
              'batch 256 x 8 accumulations, hours per iteration on this CPU (flags parsed above)')
BENCH = ('a timing benchmark: each mode in a process of its own that builds the model, warms up '
         'and times; over 5 minutes here even at one rep of three modes')
CIFAR = ('CIFAR-10: no network here to --download it, and its files are checked against their '
         'MD5 sums, so none can be generated')
# (page, n: the page's n-th command) -> how it runs: env and flag values replaced or added
# ({flag: value}, value None for a switch), tokens substituted (placeholders), the files it
# must write (globs) and the text its output must hold; or a skip with its reason.
RUNS = {
    ('README.md', 0): {'env': SHORT, 'out': DEMO_OUT},
    ('README.md', 1): {'env': {**SHORT, 'METRIC_IMAGES': '10'}, 'out': OWN_OUT,
                       'stdout': ['5 classes, 40 images:', 'FID']},
    ('README.md', 2): {'env': {**SHORT, **METRICS_OFF}, 'out': ['data/my_images64.hdf5'],
                       'stdout': ['metrics are off']},
    ('README.md', 3): {'out': ['data/my_images32.hdf5']},
    ('README.md', 4): {'out': ['data/my_images_inception_moments.npz']},
    ('README.md', 5): {'flags': {'--total_itrs': '2'}, 'out': ['weights/my_images/G_ema.pth']},
    ('README.md', 6): {'out': ['samples/my_images/-1/samples0.jpg']},
    ('README.md', 7): {'flags': {'--sample_num_npz': '20'},
                       'out': ['samples/my_images/samples.npz']},
    ('README.md', 8): {'flags': {'--num_inception_images': '10'}, 'stdout': ['FID']},
    ('README.md', 9): {'flags': {'--kid_subset_size': '10'}, 'stdout': ['FID']},
    ('README.md', 10): {'env': {'TOTAL_ITRS': '4', **METRICS_OFF}},
    ('README.md', 11): {'env': {'TOTAL_ITRS': '6', **METRICS_OFF}},
    ('README.md', 12): {'out': ['logs/my_images/*.png']},
    ('README.md', 13): {'env': SHORT, 'out': ['logs/s32_demo/**/events.out.tfevents.*']},
    ('README.md', 14): {'env': SHORT},
    ('README.md', 15): {'out': ['weights/my_images_b/G_ema.pth', 'logs/my_images_b']},
    ('README.md', 16): {'skip': "ImageNet's 1,000 classes (2,000 images at least), whose "
                                'Inception moments at 299 px take minutes here; its two '
                                'commands run in docs/data.md and docs/metrics.md'},
    ('README.md', 17): {'skip': GPU_SCRIPT},
    ('README.md', 18): {'skip': GPU_SCRIPT},
    ('docs/benchmarks.md', 0): {'skip': BENCH},
    ('docs/benchmarks.md', 1): {'skip': 'BigGAN at 128 px, batch 32, and torch.compile: minutes '
                                        'per mode on this CPU; tools/gpu_check.sh runs it'},
    ('docs/benchmarks.md', 2): {'skip': BENCH},
    ('docs/benchmarks.md', 3): {'skip': BENCH},
    ('docs/benchmarks.md', 4): {'skip': 'needs a CUDA GPU'},
    ('docs/benchmarks.md', 5): {'skip': "runs the suite's tests/test_cuda.py in a pytest of its "
                                        'own, inside this one'},
    ('docs/benchmarks.md', 6): {'flags': {'--n_images': '64', '--seconds': '0.1'}},
    ('docs/benchmarks.md', 7): {'flags': {'--n_images': '64', '--seconds': '0.1'}},
    ('docs/benchmarks.md', 8): {'skip': "a timing benchmark of the demo's training, 80 "
                                        'iterations x 3 reps x 2 modes; below 12 iterations '
                                        '(10 are warm-up) it fails with an IndexError'},
    ('docs/benchmarks.md', 9): {'skip': 'trains a classifier on real S32 and draws 1,000 samples '
                                        'per class: minutes here'},
    ('docs/benchmarks.md', 10): {'env': SHORT, 'out': ['weights/ttur/G_ema.pth']},
    ('docs/benchmarks.md', 11): {'skip': 'trains a classifier on real S32 (as command 9): '
                                         'minutes here'},
    ('docs/collapse.md', 0): {'subst': {'...': COLLAPSE_RUN}, 'out': ['weights/exp/G_ema.pth']},
    ('docs/collapse.md', 1): {'subst': {'...': COLLAPSE_RUN}},
    ('docs/collapse.md', 2): {'subst': {'...': COLLAPSE_RUN}},
    ('docs/collapse.md', 3): {'subst': {'NAME': ['exp']}, 'out': ['logs/exp/*.png']},
    ('docs/data.md', 0): {'out': ['data/ILSVRC128.hdf5']},
    ('docs/data.md', 1): {'out': ['data/pets64.hdf5']},
    ('docs/data.md', 2): {'flags': {'--total_itrs': '1', '--G_ch': '8', '--D_ch': '8',
                                    '--num_workers': '0'}, 'out': ['weights/*/G.pth']},
    ('docs/data.md', 3): {'skip': 'the same command as README.md 1, run there'},
    ('docs/data.md', 4): {'env': {**SHORT, **METRICS_OFF},
                          'out': ['data/pets64.hdf5', 'samples/pets/-1/samples0.jpg']},
    ('docs/little_data.md', 0): {'skip': CIFAR},
    ('docs/little_data.md', 1): {'skip': CIFAR},
    ('docs/metrics.md', 0): {'out': ['data/I128_inception_moments.npz']},
    ('docs/metrics.md', 1): {'flags': {'--num_inception_images': '10', '--kid_subset_size': '5'},
                             'stdout': ['FID']},
    ('docs/metrics.md', 2): {'flags': {'--sample_num_npz': '20'},
                             'out': ['samples/BigGAN_I128/samples.npz']},
    ('docs/metrics.md', 3): {'out': ['I128_train_stats.npz']},
    ('docs/metrics.md', 4): {'subst': {'samples/NAME/samples.npz':
                                       ['samples/BigGAN_I128/samples.npz']},
                             'flags': {'--kid_subset_size': '5'}, 'stdout': ['FID']},
    ('docs/metrics.md', 5): {'subst': {'NAME': ['BigGAN_I128'], 'pt_inception-...pth':
                                       ['pt_inception-2015-12-05-6726825d.pth']},
                             'flags': {'--num_inception_images': '10'}, 'stdout': ['FID']},
    ('docs/pretrained.md', 0): {'out': ['weights/deep128_t0.4/G.pth']},
    ('docs/pretrained.md', 1): {'out': ['samples/deep128_t0.4/-1/samples0.jpg']},
    ('docs/pretrained.md', 2): {'out': ['weights/biggan128/G.pth']},
    ('docs/pretrained.md', 3): {'out': ['samples/biggan128/-1/samples0.jpg']},
    ('docs/scaling.md', 0): {'skip': SCALING},
    ('docs/scaling.md', 1): {'skip': SCALING},
    ('docs/scaling.md', 2): {'skip': SCALING},
    ('docs/training.md', 0): {'flags': {'--total_itrs': '2'}, 'out': ['weights/s32_run/G.pth']},
    ('docs/training.md', 1): {'flags': {'--total_itrs': '4'}},
    ('docs/training.md', 2): {'out': ['logs/s32_run/*.png']},
    ('docs/training.md', 3): {'out': ['logs/s32_demo/*.png']},
    ('docs/training.md', 4): {'subst': {'my_run': ['s32_run'], 'BigGAN_I128*': ['s32_*']},
                              'out': ['logs/s32_run/losses.png']},
    ('docs/training.md', 5): {'skip': 'a usage line (SOURCE TARGET [...]); README.md 15 runs '
                                      'the script'},
}


def page_commands(page):
    """The entry-point commands of one page (relative path), as documented_commands finds them,
    with their tokens."""
    return [tokens for p, tokens in documented_commands() if p == page and entry_point(tokens)]


def with_overrides(tokens, row):
    """The command's tokens with the row's environment, flags and substitutions applied."""
    env = dict(t.split('=', 1) for t in tokens if re.match(r'[A-Za-z_]\w*=', t))
    args = tokens[len(env):]
    env.update(row.get('env', {}))
    subst = row.get('subst', {})
    args = [new for t in args for new in subst.get(t, [t])]
    for flag, value in row.get('flags', {}).items():
        if flag in args and value is not None:
            args[args.index(flag) + 1] = value
        elif flag not in args:
            args += [flag] + ([] if value is None else [value])
    return [f'{k}={v}' for k, v in env.items()] + args


def test_every_command_has_a_run():
    """Each documented command has its row in RUNS, and each row its command."""
    pages = {os.path.relpath(p, ROOT) for p in PAGES}
    wanted = {(page, n) for page in pages for n in range(len(page_commands(page)))}
    assert sorted(wanted - set(RUNS)) == [], 'commands without a row in RUNS'
    assert sorted(set(RUNS) - wanted) == [], 'rows of RUNS without their command'
    assert with_overrides(['X=1', 'python', 'a.py', '--n', '5', '...'],
                          {'env': {'Y': '2'}, 'flags': {'--n': '2', '--s': None},
                           'subst': {'...': ['--m', '3']}}) == [
        'X=1', 'Y=2', 'python', 'a.py', '--n', '2', '--m', '3', '--s']


# What the fork server imports once (the entry points' heavy imports).
PRELOAD = ['helpers', 'numpy', 'torch', 'torchvision', 'h5py', 'PIL.Image', 'scipy.linalg',
           'matplotlib', 'train', 'sample', 'make_hdf5', 'calculate_inception_moments',
           'evaluate', 'plot_logs', 'convert_pretrained', 'inception_utils']


@pytest.fixture(scope='module')
def forkserver(tmp_path_factory):
    """(socket, shim): a fork server for this module's commands and its `python`."""
    import subprocess
    import sys

    import forkserver as fs
    folder = tmp_path_factory.mktemp('forkserver')
    sock, shim = str(folder / 'sock'), str(folder / 'bin' / 'python')
    fs.write_shim(shim, sock)
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'forkserver.py'),
                               sock] + PRELOAD, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == 'ready\n'
        yield sock, shim
    finally:
        server.terminate()
        server.wait(60)


@pytest.fixture(scope='module')
def inception_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds both backends' Inception files, untrained weights,
    where inception_utils looks for them."""
    import torch

    import inception_utils
    home = tmp_path_factory.mktemp('torch_home')
    folder = home / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    for backend, name in inception_utils.WEIGHT_FILES.items():
        torch.save(inception_utils.build_inception_net(backend).state_dict(), folder / name)
    return home


def image_folder(root, n_classes, per_class, size=(20, 14), names=None):
    """root/<class>/<i>.png with random pixels; names default to class0, class1, ..."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        folder = root / (names[c] if names else f'class{c}')
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                folder / f'{i}.png')


def hdf5_file(path, n, res, n_classes):
    """make_hdf5.py's layout: uint8 imgs N x 3 x res x res, int64 labels."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=rng.integers(0, 256, (n, 3, res, res), dtype=np.uint8))
        f.create_dataset('labels', data=np.arange(n, dtype=np.int64) % n_classes)


# Each page's data, made in its folder before its commands run.
def readme_data(folder, data_root, inception_home):
    image_folder(folder / 'my_images', 5, 8)  # 40 images: the script's batch is 32
    (folder / 'data').mkdir()
    os.symlink(os.path.join(data_root, 'S32'), folder / 'data' / 'S32')


def s32_data(folder, data_root, inception_home):
    (folder / 'data').mkdir()
    os.symlink(os.path.join(data_root, 'S32'), folder / 'data' / 'S32')


def data_data(folder, data_root, inception_home):
    image_folder(folder / 'data' / 'ImageNet', 1000, 2, size=(6, 5))
    image_folder(folder / 'pets', 37, 2)
    image_folder(folder / 'my_images', 5, 8)


def metrics_data(folder, data_root, inception_home):
    """A small ILSVRC128.hdf5 and a folder of images; the tiny run BigGAN_I128 on the file."""
    hdf5_file(folder / 'data' / 'ILSVRC128.hdf5', 10, 128, 10)
    image_folder(folder / 'data' / 'ImageNet' / 'train', 2, 5)
    import inception_utils
    name = inception_utils.WEIGHT_FILES['tf_fid']
    os.symlink(os.path.join(inception_home, 'hub', 'checkpoints', name), folder / name)


def pretrained_data(folder, data_root, inception_home):
    from test_tfhub import module

    from helpers import hf_standin, save_hf
    save_hf(*hf_standin(resolution=128), str(folder / 'biggan-deep-128'))
    module(str(folder / 'biggan-128'), 128)


PAGE_DATA = {'README.md': readme_data, 'docs/collapse.md': s32_data, 'docs/data.md': data_data,
             'docs/benchmarks.md': s32_data, 'docs/metrics.md': metrics_data,
             'docs/pretrained.md': pretrained_data,
             'docs/training.md': s32_data}
# Commands run before a page's own, for what the page takes as given.
PAGE_SETUP = {
    'docs/metrics.md': ['python', 'train.py', '--dataset', 'I128_hdf5', '--data_root', 'data',
                        '--n_classes', '10', '--experiment_name', 'BigGAN_I128'] + TINY_RUN,
    'docs/training.md': ['TOTAL_ITRS=2', 'bash', 'scripts/launch_demo.sh'],
}


def page_folder(root, page, shim, data_root, inception_home):
    """A folder to run a page's commands in: links to the entry points, scripts and tools,
    the shim as .venv/bin/python, the page's data."""
    folder = root / page.replace('/', '_')
    folder.mkdir()
    for name in os.listdir(ROOT):
        if name.endswith('.py') or name in ('scripts', 'tools'):
            os.symlink(os.path.join(ROOT, name), folder / name)
    (folder / '.venv' / 'bin').mkdir(parents=True)
    os.symlink(shim, folder / '.venv' / 'bin' / 'python')
    PAGE_DATA.get(page, lambda *a: None)(folder, data_root, str(inception_home))
    return folder


def run_command(folder, tokens, env):
    """Run a command line in folder with bash, as a reader would; (status, stdout, stderr)."""
    import subprocess
    done = subprocess.run(['bash', '-c', shlex.join(tokens)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get('DOCS_RUN') != '1',
                    reason='set DOCS_RUN=1 to run the documented commands (minutes of CPU)')
@pytest.mark.parametrize('page', sorted({page for page, _ in RUNS}))
def test_documented_commands_run(page, forkserver, inception_home, data_root, tmp_path):
    """Each command of the page, in order, with its row's overrides: exit status 0 and the
    outputs the row names. An identical command run before on the page is not run again.
    Opt-in (DOCS_RUN=1): all pages take minutes of CPU, beyond the suite's budget."""
    sock, shim = forkserver
    folder = page_folder(tmp_path, page, shim, data_root, inception_home)
    env = {**os.environ, 'PATH': f"{folder / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           'TORCH_HOME': str(inception_home), 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}
    if page in PAGE_SETUP:
        status, out, err = run_command(folder, PAGE_SETUP[page], env)
        assert status == 0, f'{page} setup: exit status {status}\n{err[-3000:]}'
    done = set()
    for n, tokens in enumerate(page_commands(page)):
        row = RUNS[(page, n)]
        if 'skip' in row:
            continue
        command = with_overrides(tokens, row)
        if tuple(command) in done:
            continue
        done.add(tuple(command))
        status, out, err = run_command(folder, command, env)
        what = f'{page} command {n}: {shlex.join(command)}'
        assert status == 0, f'{what}: exit status {status}\n{out[-2000:]}\n{err[-3000:]}'
        for pattern in row.get('out', []):
            assert glob.glob(str(folder / pattern), recursive=True), f'{what}: no {pattern}'
        for text in row.get('stdout', []):
            assert text in out, f'{what}: {text!r} not in its output\n{out[-2000:]}'
