"""The command-line layer of the tools: their common arguments, one line for every project error, and the
task a config is for.

Each common argument is defined here once, with its choices and help; a tool states only its default
where the tools differ on purpose (``--precision``: training follows the config's recipe, evaluation
defaults to the exact fp32 scores, inference and benchmarks to the fastest precision of the machine).
"""
import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import torch.distributed as dist
from mmengine.config import Config, DictAction

from ..errors import CheckpointError, DatasetError, DatasetNotFoundError, UsageError
from .device import default_device
from .precision import PRECISIONS

# What the tools report as one line and a non-zero exit code, never as a traceback.
PROJECT_ERRORS = (CheckpointError, DatasetError, DatasetNotFoundError, UsageError)
TASKS = {'mmdet': 'detection', 'mmseg': 'segmentation'}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the tools' rule for errors: one line ``error: <argument>: <problem>`` on stderr
    and exit code 1, as for every other error of the tools (argparse itself prints its usage and exits with 2).

    The tool's module docstring is its description, shown as written by ``--help``.
    """

    def __init__(self, description: str | None = None, **kwargs: object) -> None:
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """End the tool with one line naming the argument and the problem, and where the options are listed."""
        message = message.removeprefix('argument ')
        raise SystemExit(f'error: {message}. See {self.prog} --help for the options.')


def at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (and at most ``maximum`` if given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f'at least {minimum}' if maximum is None else f'between {minimum} and {maximum}'
            raise argparse.ArgumentTypeError(f'must be {bounds}, got {value}')
        return value
    parse.__name__ = f'at least {minimum}'
    return parse


def in_range(low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse ``type``: a number from ``low`` to ``high``; ``what`` says why in the error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f'must be between {low:g} and {high:g} ({what}), got {value:g}')
        return value
    parse.__name__ = f'number in [{low:g}, {high:g}]'
    return parse


def run_tool(main: Callable[[], None]) -> None:
    """Run a tool's ``main``; a project error ends it with ``error: <message>`` on stderr and exit code 1.

    A distributed run (``--launcher``) that succeeded ends with :func:`end_distributed_process`.
    """
    try:
        main()
    except PROJECT_ERRORS as error:
        raise SystemExit(f'error: {error}') from None
    if dist.is_available() and dist.is_initialized():
        end_distributed_process()


def end_distributed_process() -> NoReturn:
    """End a rank whose work is done: destroy the process group, flush the logs and streams, and exit with 0
    without finalising the interpreter.

    gloo destroys a finished collective's work on its own worker thread, which needs the GIL to release the
    tensors' Python objects. When the last collective of a run (mmengine broadcasts the metrics after each
    evaluation) ends just before the process does, that thread can still be waiting for the GIL when the
    interpreter finalises; Python then ends the thread inside a C++ destructor and the process aborts (SIGABRT,
    "terminate called without an active exception"), failing the launch after the work was saved. Measured:
    about one two-process CPU run in ten (gdb showed that thread), with or without ``destroy_process_group``
    first. Everything the run writes is written by then (checkpoints synchronously, the visualizer closed by
    mmengine's ``after_run``); only interpreter finalisation is skipped. Only on success: a rank that failed
    raises instead, and must not wait in a collective for the others.
    """
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def task_of(cfg: Config) -> str:
    """``detection``, ``segmentation`` (by the config's ``default_scope``) or ``pretraining`` (an FCMAE model).

    Raises:
        UsageError: A config of none of these.
    """
    if cfg.get('default_scope') in TASKS:
        return TASKS[cfg.default_scope]
    if cfg.get('model', {}).get('type') == 'FCMAE':
        return 'pretraining'
    raise UsageError(f'{cfg.filename} is not a detection, segmentation or FCMAE config '
                     f"(default_scope {cfg.get('default_scope')!r}).")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options KEY=VALUE ...``."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: key=value')


def add_data_root(parser: argparse.ArgumentParser) -> None:
    """``--data-root DIR``."""
    parser.add_argument('--data-root', help="dataset folder instead of the config's (data/coco/, data/ade/...)")


def add_launcher(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and the ``--local-rank`` that torch's launchers pass."""
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)


def add_precision(parser: argparse.ArgumentParser, default: str | None, default_help: str) -> None:
    """``--precision {auto,fp32,bf16,fp16}``; ``default_help`` says what the default is and why."""
    parser.add_argument('--precision', choices=PRECISIONS, default=default,
                        help=f'autocast to bf16/fp16, or fp32; auto is fp16 on CUDA, bf16 on a CPU that computes it '
                             f'natively (AVX512-BF16 or AMX), fp32 on other CPUs (default: {default_help})')


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """``--channels-last`` and ``--compile`` (see :func:`backbones.runtime.inference.prepare_inference`)."""
    parser.add_argument('--channels-last', action='store_true', help='convolutions in channels_last (NHWC)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the backbone (the first image of each size compiles: for many images)')


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: cuda where available, else cpu)."""
    parser.add_argument('--device', default=default_device(), help='cpu or cuda[:N] (default: cuda where available)')
