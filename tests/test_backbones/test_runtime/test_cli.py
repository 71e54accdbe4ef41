"""backbones/runtime/cli.py: the tools' common arguments, one error line, and the task of a config."""
import argparse
import subprocess
import sys

import pytest
from mmengine.config import Config

from backbones.errors import CheckpointError, DatasetError, DatasetNotFoundError, UsageError
from backbones.runtime import cli

TOOL = '''
import sys
from backbones.errors import {error}
from backbones.runtime.cli import run_tool

def main():
    print('started')
    raise {error}('what is wrong; what to do.')

run_tool(main)
'''


@pytest.mark.parametrize('error', ['CheckpointError', 'CheckpointNotFoundError', 'DatasetError',
                                   'DatasetNotFoundError', 'UsageError'])
def test_a_project_error_is_one_line_and_exit_code_1(error: str) -> None:
    result = subprocess.run([sys.executable, '-c', TOOL.format(error=error)], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (1, 'started\n', 'error: what is wrong; what to do.\n')


def test_other_errors_are_not_hidden() -> None:
    def main() -> None:
        raise KeyError('a bug of ours')

    with pytest.raises(KeyError):
        cli.run_tool(main)


@pytest.mark.parametrize('config, task', [
    ('configs/demo/mask_rcnn_convnext_demo.py', 'detection'),
    ('configs/det/cascade_convnext_t.py', 'detection'),
    ('configs/seg/upernet_convnext_t.py', 'segmentation'),
    ('configs/pretrain/fcmae_convnextv2_atto.py', 'pretraining'),
])
def test_the_task_comes_from_the_config(config: str, task: str) -> None:
    assert cli.task_of(Config.fromfile(config)) == task


def test_a_config_of_another_task_is_a_usage_error(tmp_path) -> None:
    (tmp_path / 'cls.py').write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    cfg = Config.fromfile(tmp_path / 'cls.py')
    with pytest.raises(UsageError, match=r"^.*/cls\.py is not a detection, segmentation or FCMAE config "
                                         r"\(default_scope 'mmpretrain'\)\.$"):
        cli.task_of(cfg)


def test_common_arguments_have_one_definition_each() -> None:
    parser = argparse.ArgumentParser()
    cli.add_precision(parser, default='fp32', default_help='fp32')
    cli.add_inference_options(parser)
    cli.add_data_root(parser)
    cli.add_config_options(parser)
    cli.add_launcher(parser)
    cli.add_device(parser)
    args = parser.parse_args(['--precision', 'bf16', '--channels-last', '--data-root', 'd/', '--cfg-options',
                              'a.b=1', '--launcher', 'pytorch', '--local_rank', '3', '--device', 'cpu'])
    assert (args.precision, args.channels_last, args.compile, args.data_root, args.cfg_options, args.launcher,
            args.local_rank, args.device) == ('bf16', True, False, 'd/', {'a.b': 1}, 'pytorch', 3, 'cpu')
    with pytest.raises(SystemExit):  # argparse's own usage error for a precision it does not know
        parser.parse_args(['--precision', 'fp8'])


def test_project_errors_are_the_ones_run_tool_reports() -> None:
    assert set(cli.PROJECT_ERRORS) == {CheckpointError, DatasetError, DatasetNotFoundError, UsageError}


def test_argument_errors_are_one_line_and_exit_status_1(capsys) -> None:
    """argparse prints its usage and exits with 2; the tools' parser says what is wrong in one line, status 1."""
    parser = cli.ArgumentParser('a tool')
    parser.prog = 'tool.py'
    parser.add_argument('--batch-size', type=cli.at_least(1), default=1)
    parser.add_argument('--size', type=cli.at_least(32, 1024), default=128)
    parser.add_argument('--score-thr', type=cli.in_range(0, 1, 'scores are probabilities'), default=0.3)
    assert vars(parser.parse_args(['--batch-size', '3', '--score-thr', '1'])) == dict(batch_size=3, size=128,
                                                                                   score_thr=1.0)
    for argv, message in [
        (['--batch-size', '0'], '--batch-size: must be at least 1, got 0'),
        (['--batch-size', 'x'], "--batch-size: 'x' is not a whole number"),
        (['--size', '4096'], '--size: must be between 32 and 1024, got 4096'),
        (['--score-thr', '2'], '--score-thr: must be between 0 and 1 (scores are probabilities), got 2'),
        (['--score-thr', 'nan'], '--score-thr: must be between 0 and 1 (scores are probabilities), got nan'),
        (['--nope'], 'unrecognized arguments: --nope'),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        # SystemExit with a string: Python prints it alone on stderr and exits with status 1.
        assert exit_info.value.code == f'error: {message}. See tool.py --help for the options.'
    assert capsys.readouterr().err == ''  # no usage block
