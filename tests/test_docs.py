"""The documentation cannot drift from the code.

- Every relative link in README.md and docs/*.md names a file that exists and, with an #anchor,
  a heading of that file (GitHub's slugs).
- Every command in their fenced code blocks that runs an entry point (`python X.py ...`,
  `torchrun ... train.py ...`, `bash scripts/...`) parses with that script's own parser:
  `prepare_parser()` of the entry points, the parser a tool's `main()` builds, train.py's and
  sample.py's for the flags a launch script hands on; a bash-parsed script must know each
  option given. Commands with placeholders are skipped, each with its reason.
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
