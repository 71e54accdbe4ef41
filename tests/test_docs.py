"""The documentation against the code: README.md, docs/*.md and checkpoints/README.md.

Commands, in every fenced ``bash`` block (``\\`` continuations joined, ``&&``/``;``/``|`` split, ``VAR=value``
prefixes dropped):

* ``python tools/X.py ARGS``: the tool exists and ARGS parse with its ``build_parser()`` (placeholders such as
  CONFIG or path/to/photos/ are fine where a positional is a string);
* ``tools/X.sh ARGS``: the script exists and is executable, and the arguments it hands to the Python tool it
  wraps (read from the script: its ``NAME=$k``, ``shift N`` and ``.../X.py ... "$@"`` lines) parse with that
  tool's parser;
* every repository path a command names (configs/, tools/, checkpoints/, scripts/, tests/, docs/, backbones/,
  requirements/; also the value of a ``key=value`` argument) exists, or an earlier command on the page makes
  it (``wget -P DIR URL``, ``wget -O FILE``, a tool's ``--out``/``--work-dir``/``--show-dir``/``--json`` or
  ``tools/convert_checkpoint.py``'s OUT, ``mkdir``/``cp``/``mv``/``ln``). Other paths (work_dirs/, data/,
  results/, deploy/, path/to/...) are the reader's to make;
* ``make TARGET``: the Makefile has the target;
* a ``python tools/...`` or ``tools/*.sh`` line in a block that is not ``bash`` is itself a problem (it would
  escape these checks).

Weights: every ``https://dl.fbaipublicfiles.com/...`` address in these pages is a file of
``checkpoints/manifest.json`` (so no filename pattern implies files the official release does not have).

Measurements: a section (a heading to the next heading of any level) that states a measurement must name a date
(YYYY-MM-DD) and a machine (``N-core``, EPYC, Xeon, H100, H200, A100 or CI). A measurement is a duration
(``12 s``, ``8 min``, ``658 ms``, ``107s``), a throughput (``images/s``, ``GFLOP/s``, FPS), a speed-up
(``1.30x``, ``1.4 times faster``), a peak memory (``MB``/``GB`` on a line that says ``peak``), a metric of
ours (AP or mIoU followed by ``0.xyz`` or ``xy.zw``), or a table with a ``ms``/``s``/``min``/``images/s``/
``MB`` column. A number right after ``default``, ``timeout``, ``at most``, ``at least``, ``up to``,
``within``, ``above``, ``below`` or ``under`` is a setting or a test bar, not a measurement. The README's
"Model zoo" section is the papers' numbers and exempt.

The licence: LICENSE at the root is the Apache License 2.0, and the README names it.

Each rule is shown failing on a small broken page at the end of this file.
"""
import argparse
import contextlib
import functools
import glob
import importlib.util
import io
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(['README.md', 'checkpoints/README.md', *(str(p.relative_to(REPO)) for p in REPO.glob('docs/*.md'))])
SHELL = {'bash', 'sh', 'shell', 'console'}
NOT_SHELL = {'python', 'py', 'json', 'yaml', 'toml', 'text'}
REPO_PREFIXES = ('configs/', 'tools/', 'checkpoints/', 'scripts/', 'tests/', 'docs/', 'backbones/', 'requirements/')
REPO_DIRS = {prefix.rstrip('/') for prefix in REPO_PREFIXES}
OUTPUT_OPTIONS = ('out', 'work_dir', 'show_dir', 'json', 'output')  # argparse dests of the files a tool writes
CONTROL = {'&&', '||', ';', '|'}
PYTHON = re.compile(r'(?:\S*/)?python(?:3(?:\.\d+)?)?')
TOOL_CALL = re.compile(r'(?:^|\s)(?:python\S*\s+)?(?:\./)?tools/\S+\.(?:py|sh)\b')
WEIGHT_URL = re.compile(r'https://dl\.fbaipublicfiles\.com/[^\s)`\'"<>\]]+')

DATE = re.compile(r'\b20\d\d-\d\d-\d\d\b')
MACHINE = re.compile(r'\b\d+-core\b|\b(?:EPYC|Xeon|H100|H200|A100|CI)\b')
EXEMPT_SECTIONS = {'Model zoo'}
UNRECORDED = re.compile(r'\b(?:date|machine)s? (?:(?:and|or) (?:date|machine) )?(?:was |were )?not recorded\b', re.I)
SETTING = re.compile(r'(?:default|timeout|at most|at least|up to|within|above|below|under)[:=]?\s*$', re.I)
MEASURES = [
    re.compile(r'\b\d+(?:\.\d+)?\s?(?:ms|min)\b|\b\d+(?:\.\d+)?\s(?:s|h)\b|\b(?:\d{1,3}|\d+\.\d+)s\b'),
    re.compile(r'\b\d+(?:\.\d+)?\s?(?:images/s|img/s|it/s|GFLOP/s|FPS)(?!\w)'),
    re.compile(r'\b\d+\.\d+x\b|\b\d+(?:\.\d+)? times (?:faster|slower)\b'),
    re.compile(r'\b\d+(?:\.\d+)?\s?(?:MB|GB|MiB|GiB)\b(?=.*\bpeak\b)|(?<=peak)\D{0,20}\b\d+(?:\.\d+)?\s?(?:MB|GB)\b'),
    re.compile(r'\b(?:AP(?:50|75)?|mIoU)\b[^.;]*?(?<![\d.])(0\.\d{3}|\d{2}\.\d{2})(?!\d)'),
]
UNIT_COLUMN = re.compile(r'(?:^|\s)(?:ms|s|min|images/s|MB|GB)$')


@dataclass
class Block:
    lang: str
    start: int  # line number of the first line inside the fence
    lines: list[str] = field(default_factory=list)


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text (``` or ~~~, indented ones too)."""
    blocks, current, fence = [], None, ''
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if current is None:
            match = re.match(r'(`{3,}|~{3,})\s*([\w+-]*)', stripped)
            if match:
                fence, current = match.group(1), Block(match.group(2).lower(), number + 1)
        elif stripped.startswith(fence) and not stripped[len(fence):].strip():
            blocks.append(current)
            current = None
        else:
            current.lines.append(line)
    return blocks


def command_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, command) for each command of a shell block, continuations joined, comment lines left out."""
    commands, pending, first = [], '', 0
    for offset, line in enumerate(block.lines):
        if not pending:
            first = block.start + offset
            if not line.strip() or line.lstrip().startswith('#'):
                continue
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        commands.append((first, pending + line))
        pending = ''
    if pending:
        commands.append((first, pending))
    return commands


def split_commands(command: str) -> list[list[str]]:
    """The simple commands of a line: words split as the shell does, at ``&&``, ``||``, ``;`` and ``|``."""
    words = shlex.split(command, comments=True)
    argvs, current = [], []
    for word in words:
        if word in CONTROL:
            argvs.append(current)
            current = []
        else:
            current.append(word)
    argvs.append(current)
    return [argv for argv in argvs if argv]


@functools.cache
def tool_parser(tool: str) -> argparse.ArgumentParser:
    """The tool's own parser, from its module-level ``build_parser()``; importing a tool does not run it."""
    name = 'docs_tool_' + re.sub(r'\W', '_', tool)
    spec = importlib.util.spec_from_file_location(name, REPO / tool)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the tool's classes are made
    spec.loader.exec_module(module)
    parser = module.build_parser()
    parser.prog = Path(tool).name  # not the test runner's name, in the errors it reports
    return parser


def parse_tool_args(tool: str, args: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """The namespace the tool's parser makes of ``args``, or the error it reports."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return tool_parser(tool).parse_args(args), None
    except SystemExit as exit:
        message = err.getvalue().strip().splitlines() or [str(exit.code)]
        return None, message[-1]


def script_call(script: str, args: list[str]) -> tuple[str, list[str]]:
    """The Python tool a ``tools/*.sh`` script runs and the arguments it hands it for ``args``.

    Raises:
        ValueError: The script's own lines do not say (or ``args`` are fewer than it shifts away).
    """
    text = (REPO / script).read_text()
    positions = {name: int(k) for name, k in re.findall(r'^(\w+)=\$(\d)$', text, re.M)}
    shift = re.search(r'^shift (\d+)$', text, re.M)
    call = re.search(r'/([\w/]+\.py)"((?:[^\n\\]|\\\n)*)', text)
    if not (shift and call):
        raise ValueError(f'{script}: no "shift N" and ".../tool.py ..." line to read its call from')
    shift_by = int(shift.group(1))
    if len(args) < shift_by:
        raise ValueError(f'{script} takes {shift_by} arguments before the options, got {len(args)}: {args}')
    argv = []
    for word in shlex.split(call.group(2).replace('\\\n', ' ')):
        if word == '$@':
            argv += args[shift_by:]
        elif word.startswith('$'):
            argv.append(args[positions[word[1:]] - 1])
        else:
            argv.append(word)
    return str(Path(script).parent / call.group(1)), argv


def makefile_targets() -> set[str]:
    return set(re.findall(r'^([\w.-]+):', (REPO / 'Makefile').read_text(), re.M))


def is_made(path: str, made: list[str]) -> bool:
    path = path.rstrip('/')
    return any(path == m or path.startswith(m + '/') for m in made)


def repo_path_problem(word: str, made: list[str]) -> str | None:
    """A problem when ``word`` (or the value of ``key=word``) is a repository path that neither exists nor is made."""
    value = word.split('=', 1)[1] if '=' in word and not word.startswith(REPO_PREFIXES) else word
    value = value.removeprefix('./')
    if not (value.startswith(REPO_PREFIXES) or value in REPO_DIRS):
        return None
    if any(c in value for c in '*?['):
        return None if glob.glob(str(REPO / value), recursive=True) else f'{value} matches no file'
    if (REPO / value).exists() or is_made(value, made):
        return None
    return f'{value} does not exist and no earlier command on the page makes it'


def outputs_of(argv: list[str], namespace: argparse.Namespace | None) -> list[str]:
    """The paths a command writes: what later commands on the page may name."""
    made = []
    if namespace is not None:
        made += [getattr(namespace, name) for name in OUTPUT_OPTIONS if isinstance(getattr(namespace, name, None), str)]
    program = argv[0]
    if program == 'wget':
        folder = argv[argv.index('-P') + 1] if '-P' in argv[:-1] else '.'
        if '-O' in argv[:-1]:
            made.append(argv[argv.index('-O') + 1])
        made += [os.path.join(folder, word.rsplit('/', 1)[1]) for word in argv if word.startswith(('http:', 'https:'))]
    elif program == 'mkdir':
        made += [word for word in argv[1:] if not word.startswith('-')]
    elif program in ('cp', 'mv', 'ln'):
        made.append(argv[-1])
    return [os.path.normpath(path).removeprefix('./') for path in made]


def check_command(argv: list[str], made: list[str]) -> list[str]:
    """Problems of one simple command; adds what it writes to ``made``."""
    while argv and re.match(r'[A-Za-z_]\w*=', argv[0]):
        argv = argv[1:]
    if not argv:
        return []
    problems, namespace, tool, args = [], None, None, []
    program = argv[0].removeprefix('./')
    if PYTHON.fullmatch(program) and len(argv) > 1 and argv[1].removeprefix('./').startswith('tools/'):
        tool, args = argv[1].removeprefix('./'), argv[2:]
    elif program.startswith('tools/'):
        if not (REPO / program).is_file():
            return [f'{program} does not exist']
        if not os.access(REPO / program, os.X_OK):
            problems.append(f'{program} is not executable (the docs run it directly, not through bash)')
        try:
            tool, args = script_call(program, argv[1:])
        except (ValueError, KeyError, IndexError) as error:
            return problems + [str(error)]
    elif program == 'make':
        missing = [w for w in argv[1:] if not w.startswith('-') and '=' not in w and w not in makefile_targets()]
        problems += [f'the Makefile has no target {target}' for target in missing]
    if tool is not None:
        if not tool.endswith('.py') or not (REPO / tool).is_file():
            return problems + [f'{tool} does not exist']
        namespace, error = parse_tool_args(tool, args)
        if error:
            problems.append(f'{tool} does not take {shlex.join(args)}: {error}')
    made += outputs_of([program, *argv[1:]], namespace)
    problems += filter(None, (repo_path_problem(word, made) for word in argv))
    return problems


def command_problems(text: str) -> list[str]:
    """Every problem of the commands in a page's fenced blocks, as ``line N: ...``."""
    problems, made = [], []
    for block in fenced_blocks(text):
        if block.lang not in SHELL:
            if block.lang not in NOT_SHELL:
                problems += [f'line {block.start + i}: a tool command in a block not marked bash: {line.strip()}'
                             for i, line in enumerate(block.lines) if TOOL_CALL.search(line)]
            continue
        for number, command in command_lines(block):
            try:
                argvs = split_commands(command)
            except ValueError as error:
                problems.append(f'line {number}: cannot split {command!r}: {error}')
                continue
            for argv in argvs:
                problems += [f'line {number}: {problem}' for problem in check_command(argv, made)]
    return problems


def weight_url_problems(text: str, known: set[str]) -> list[str]:
    urls = (url.rstrip('.,;:') for url in WEIGHT_URL.findall(text))
    return [f'{url} is not a file of checkpoints/manifest.json' for url in urls if url not in known]


def manifest_urls() -> set[str]:
    return {entry['url'] for entry in json.loads((REPO / 'checkpoints/manifest.json').read_text())['weights']}


def sections(text: str) -> list[tuple[str, int, list[str]]]:
    """(heading, first line number, lines) from each heading to the next one; fenced lines are never headings."""
    found, in_fence = [('', 1, [])], False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r'\s*(`{3,}|~{3,})', line):
            in_fence = not in_fence
        if not in_fence and re.match(r'#{1,6} ', line):
            found.append((line.lstrip('#').strip(), number, []))
        found[-1][2].append(line)
    return found


def is_measurement(line: str, previous: str = '') -> bool:
    """Whether ``line`` states a measurement; ``previous`` (the line before) is read for a setting's word."""
    for pattern in MEASURES:
        for match in pattern.finditer(line):
            start = match.start(match.lastindex) if match.lastindex else match.start()
            if not SETTING.search(f'{previous.strip()} {line[:start]}'):
                return True
    return False


def is_measurement_table_header(line: str, previous: str) -> bool:
    if not line.lstrip().startswith('|') or previous.lstrip().startswith('|'):
        return False
    cells = [cell.strip(' *`') for cell in line.strip().strip('|').split('|')]
    return any(UNIT_COLUMN.search(cell) for cell in cells)


def undated_measurement_problems(text: str) -> list[str]:
    """Sections that state a measurement without a date or a machine."""
    problems = []
    for heading, start, lines in sections(text):
        if heading in EXEMPT_SECTIONS:
            continue
        body = '\n'.join(lines)
        measured = [start + i for i, line in enumerate(lines)
                    if is_measurement(line, lines[i - 1] if i else '')
                    or is_measurement_table_header(line, lines[i - 1] if i else '')]
        missing = [what for what, pattern in (('a date (YYYY-MM-DD)', DATE), ('a machine', MACHINE))
                   if not pattern.search(body)]
        if measured and missing:
            problems.append(f'section "{heading or "(top)"}" (line {start}) states measurements (line '
                            f'{", ".join(map(str, measured))}) without {" or ".join(missing)}')
        problems += [f'line {start + i}: a number whose date or machine was "not recorded": date it or remove it'
                     for i, line in enumerate(lines) if UNRECORDED.search(line)]
    return problems


def read(page: str) -> str:
    return (REPO / page).read_text()


def test_pages_are_found() -> None:
    assert {'README.md', 'checkpoints/README.md', 'docs/installation.md', 'docs/training.md'} <= set(PAGES)


@pytest.mark.parametrize('page', PAGES)
def test_documented_commands_run_as_written(page: str) -> None:
    assert command_problems(read(page)) == []


def test_weight_addresses_are_released_files() -> None:
    known = manifest_urls()
    assert {page: weight_url_problems(read(page), known) for page in PAGES} == {page: [] for page in PAGES}


def test_the_licence_is_at_the_root_and_named_in_the_readme() -> None:
    assert read('LICENSE').lstrip().startswith('Apache License\n                           Version 2.0')
    assert '[Apache License 2.0](LICENSE)' in read('README.md')


@pytest.mark.parametrize('page', PAGES)
def test_measurements_carry_date_and_machine(page: str) -> None:
    assert undated_measurement_problems(read(page)) == []


# Each check on a small broken page: the checks can fail.

def bash(*lines: str) -> str:
    return '\n'.join(['```bash', *lines, '```'])


@pytest.mark.parametrize('page, expected', [
    (bash('python tools/no_such_tool.py configs/det/mask_rcnn_convnext_t.py'), 'tools/no_such_tool.py does not exist'),
    (bash('python tools/train.py configs/det/mask_rcnn_convnext_t.py \\', '    --no-such-flag'),
     'tools/train.py does not take'),
    (bash('python tools/infer.py configs/det/mask_rcnn_convnext_t.py CKPT path/to/photos/'), 'does not take'),
    (bash('python tools/analysis/benchmark.py configs/det/mask_rcnn_convnext_t.py deploy/model.onnx \\',
          '    --backend onnxruntime'), 'tools/analysis/benchmark.py does not take'),
    (bash('python tools/test.py configs/det/no_such_config.py CKPT'), 'configs/det/no_such_config.py does not exist'),
    (bash('python tools/test.py configs/det/mask_rcnn_convnext_t.py checkpoints/mask_rcnn_convnext_tiny_1k_3x.pth'),
     'checkpoints/mask_rcnn_convnext_tiny_1k_3x.pth does not exist and no earlier command'),
    (bash('python tools/train.py configs/det/mask_rcnn_convnext_t.py '
          '--cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nothing.pth'), 'checkpoints/nothing.pth'),
    (bash('tools/no_such_script.sh configs/det/cascade_convnext_t.py 8'), 'tools/no_such_script.sh does not exist'),
    (bash('tools/dist_train.sh configs/det/cascade_convnext_t.py 8 --no-such-flag'), 'tools/train.py does not take'),
    (bash('tools/dist_test.sh configs/det/cascade_convnext_t.py 8'), 'takes 3 arguments'),
    (bash('GPUS=16 tools/slurm_train.sh PARTITION JOB configs/det/no_such.py'), 'configs/det/no_such.py'),
    (bash('make no-such-target'), 'the Makefile has no target no-such-target'),
    (bash('python -m pytest tests/no_such_test.py'), 'tests/no_such_test.py does not exist'),
    ('```\npython tools/train.py configs/det/mask_rcnn_convnext_t.py\n```', 'a block not marked bash'),
])
def test_command_check_fails_on_a_broken_page(page: str, expected: str) -> None:
    problems = command_problems(page)
    assert any(expected in problem for problem in problems), problems


def test_command_check_follows_what_earlier_commands_make() -> None:
    url = 'https://dl.fbaipublicfiles.com/convnext/coco/mask_rcnn_convnext_tiny_1k_3x.pth'
    made = bash(f'wget -P checkpoints {url}',
                'python tools/test.py configs/det/mask_rcnn_convnext_t.py '
                'checkpoints/mask_rcnn_convnext_tiny_1k_3x.pth',
                'python tools/convert_checkpoint.py CKPT checkpoints/converted.pth && \\',
                '    python tools/test.py configs/det/mask_rcnn_convnext_t.py checkpoints/converted.pth',
                'python tools/export.py configs/det/mask_rcnn_convnext_t.py CKPT --out checkpoints/onnx/',
                'python tools/test.py configs/det/mask_rcnn_convnext_t.py checkpoints/onnx/model.onnx',
                'GPUS=16 tools/slurm_train.sh PARTITION JOB configs/det/cascade_convnext_b.py --work-dir work_dirs/x')
    assert command_problems(made) == []
    order = bash('python tools/test.py configs/det/mask_rcnn_convnext_t.py checkpoints/converted.pth',
                 'python tools/convert_checkpoint.py CKPT checkpoints/converted.pth')
    assert command_problems(order) != []


def test_weight_address_check_fails_on_a_file_the_release_lacks() -> None:
    text = ('https://dl.fbaipublicfiles.com/convnext/coco/mask_rcnn_convnext_small_1k_3x.pth and '
            '`https://dl.fbaipublicfiles.com/convnext/coco/{mask_rcnn,cascade_mask_rcnn}_convnext_{size}_1k_3x.pth`, '
            'not https://dl.fbaipublicfiles.com/convnext/coco/mask_rcnn_convnext_tiny_1k_3x.pth.')
    problems = weight_url_problems(text, manifest_urls())
    assert len(problems) == 2 and 'small' in problems[0] and '{mask_rcnn' in problems[1], problems


@pytest.mark.parametrize('page', [
    '## Speed\n\nThe backbone took 658 ms.\n',
    '## Speed\n\nMeasured on 2026-12-07: the backbone took 658 ms.\n',  # a date, no machine
    '## Speed\n\nOn the 2-core AMD EPYC, the demo took 11.1 min.\n',  # a machine, no date
    '# Demo\n\nUperNet    107s   0.809\n',
    '## Install\n\nA first install took 8 min 12 s.\n',
    '## Pre-training\n\n14.6 images/s in fp32.\n',
    '## Speed\n\nours is 1.30x faster.\n',
    '## Memory\n\n6577 MB peak without gradient checkpointing.\n',
    '## bf16\n\nMask R-CNN box/mask AP 0.609/0.637, UperNet mIoU 80.90.\n',
    '## Speed\n\n| case | p50 ms |\n|---|---|\n| backbone | 10.5 |\n',
    '## Dated\n\nMeasured 2026-12-07 on the 2-core EPYC.\n\n## Next\n\nThe backbone took 658 ms.\n',
    '## Speed\n\nMeasured 2026-11-23 on the 2-core EPYC; the compile took long (date not recorded).\n',
    '## Speed\n\nOn 2026-11-23 on the 2-core EPYC, 12 to 41 s (machine and date not recorded).\n',
])
def test_measurement_check_fails_without_date_or_machine(page: str) -> None:
    assert undated_measurement_problems(page) != []


@pytest.mark.parametrize('page', [
    '## Speed\n\nMeasured 2026-12-07 on the 2-core AMD EPYC: the backbone took 658 ms.\n',
    '## Reader\n\nA timeout (default 60 s) and a cap of at most 512 MiB.\n',
    '## Reader\n\nA deadline for the whole download (`CONVNEXT_DENSE_DOWNLOAD_DEADLINE`, default\n7200 s).\n',
    '## Tests\n\nThe same AP within 0.002; box AP50 above 0.5.\n',
    '## Model zoo\n\n| config | box AP | mIoU |\n|---|---|---|\n| t | 46.2 | 46.70 |\n',
    '## Glossary\n\nConvNeXt, a ConvNet for the 2020s; AP50 takes IoU 0.50 only; a 3x schedule.\n',
    '```bash\n# a comment with # signs\n```\n\n## Speed\n\nNothing measured.\n',
])
def test_measurement_check_passes_settings_and_dated_sections(page: str) -> None:
    assert undated_measurement_problems(page) == []
