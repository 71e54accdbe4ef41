"""The tools' config chain: one function that prepares a config for a tool from its arguments, in one order.

:func:`prepare_config` is what ``tools/train.py``, ``test.py``, ``infer.py``, ``export.py`` and
``check_dataset.py`` do between parsing their arguments and running. The order, and why:

1. **Read** the config file with ``--cfg-options``, ``--launcher`` and ``--work-dir`` (:func:`.config.load_config`);
   infer and export take detection and segmentation configs only.
2. **What the run starts from.** train: ``--precision`` (the config's AMP recipe by default), ``--load-from`` /
   ``--resume``, and then no pre-trained initialisation (the checkpoint replaces those weights,
   :func:`.config.skip_pretrained_init`). test, infer, export: the checkpoint (or, with ``--backend
   onnxruntime``, the exported file) is read once here and its classes go to the config; the run gets that read.
3. **What the run writes and how it predicts.** test: ``--out`` and ``--show-dir``; test, infer: ``--tta``
   (after the classes, which reach the heads inside the TTA model either way).
4. **The data.** ``--data-root`` before anything reads the data; then the classes from the data (train, test,
   check_dataset), which must agree with a checkpoint's.
5. **Checks before work starts**, each one line: the splits' files exist; train: the hooks' options, the work
   dir (it must be writable before ``--skip-bad`` writes its lists there), the dataset check and ``--skip-bad``;
   test: the work dir, then the test split's images and label maps (existence and header, pixels capped:
   :func:`.dataset_check.check_before_testing`).
6. **The device and the model**: a GPU recipe made runnable on CPUs (train, test); with ``--backend
   onnxruntime`` (test, infer), the exported file's ONNX Runtime model in place of the config's, once the
   classes are final (it is verified against the config's model when built).

Each step names the tools it applies to; a tool never applies one of these edits itself.
"""
import argparse
import os.path as osp
from dataclasses import dataclass, field

from mmengine.config import Config

from ..checkpoints.loading import Checkpoint, open_checkpoint
from ..datasets.checks import forget_json
from ..deploy.onnx_file import ExportedFile, read_exported
from ..errors import UsageError
from .cli import task_of
from .config import (
    check_datasets,
    check_hook_options,
    check_work_dir,
    enable_tta,
    load_config,
    set_data_root,
    skip_pretrained_init,
)
from .dataset_check import check_before_testing, check_before_training, skip_unreadable_images
from .device import adapt_to_cpu, default_device
from .onnx_backend import apply_onnx_classes, use_onnx_model
from .own_data import apply_checkpoint_classes, classes_from_data
from .precision import resolve_precision, set_training_precision

TOOLS = ('train', 'test', 'infer', 'export', 'check_dataset')
SPLITS = {'train': ['train', 'val'], 'test': ['test']}


@dataclass
class PreparedRun:
    """A config ready for a tool, what the run starts from, and the lines the run's log begins with.

    Attributes:
        cfg: The config.
        checkpoint: test, infer, export: the checkpoint (or exported file) read once; None otherwise.
        log_lines: Lines for the run's log (the classes and where they came from, what was skipped).
    """
    cfg: Config
    checkpoint: Checkpoint | ExportedFile | None = None
    log_lines: list[str] = field(default_factory=list)


def _enable_outputs(cfg: Config, out: str | None, show_dir: str | None) -> None:
    """test: raw-result dumping and visualisation, in the way each framework names them."""
    is_det = task_of(cfg) == 'detection'
    if out and is_det:
        if not out.endswith(('.pkl', '.pickle')):
            raise UsageError(f'--out for detection must be a .pkl file, got {out}.')
        cfg.test_evaluator = [*(cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]),
                              dict(type='DumpDetResults', out_file_path=out)]
    elif out:
        cfg.test_evaluator.update(output_dir=out, keep_results=True)
    if show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        if is_det:
            hook.test_out_dir = osp.abspath(show_dir)
        else:
            hook.interval = 1
            cfg.visualizer.save_dir = show_dir


def prepare_config(args: argparse.Namespace, tool: str) -> PreparedRun:
    """Prepare the config ``args.config`` for ``tool`` from its arguments, in the order of the module docstring.

    Args:
        args: The tool's parsed arguments (those a tool does not have count as not given).
        tool: One of :data:`TOOLS`.

    Raises:
        UsageError, CheckpointError, DatasetError, DatasetNotFoundError: Anything that stops the run before it
            starts, in one line.
    """
    given = vars(args).get
    run = PreparedRun(load_config(args.config, given('cfg_options'), given('launcher') or 'none', given('work_dir')))
    cfg = run.cfg
    if tool in ('infer', 'export') and task_of(cfg) not in ('detection', 'segmentation'):
        raise UsageError(f'{args.config} is not a Mask R-CNN, Cascade Mask R-CNN or UperNet model: tools/{tool}.py '
                         'takes their configs.')

    if tool == 'train':
        precision = given('precision') or ('auto' if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' else 'fp32')
        set_training_precision(cfg, resolve_precision(precision, default_device()))
        if given('load_from'):
            cfg.load_from = args.load_from
        if given('resume'):  # the runner finds what to resume from in the work dir (ConvNeXtDenseRunner)
            cfg.resume, cfg.load_from = True, None if args.resume == 'auto' else args.resume
        run.log_lines.append(skip_pretrained_init(cfg))
    elif tool in ('test', 'infer', 'export'):
        cfg.load_from = None  # the tool loads the checkpoint itself, strictly and in any supported layout
        if given('backend') == 'onnxruntime':
            run.checkpoint = read_exported(args.checkpoint)
            run.log_lines.append(apply_onnx_classes(cfg, run.checkpoint))
        else:
            run.checkpoint = open_checkpoint(args.checkpoint)
            run.log_lines.append(apply_checkpoint_classes(cfg, run.checkpoint))

    if tool == 'test':
        _enable_outputs(cfg, given('out'), given('show_dir'))
    if given('tta'):
        enable_tta(cfg)

    if given('data_root'):
        set_data_root(cfg, args.data_root)
    if tool == 'check_dataset':
        run.log_lines.append(classes_from_data(cfg))
    elif tool in ('train', 'test'):
        from_checkpoint = tool == 'test' and run.log_lines[-1]
        run.log_lines.append(classes_from_data(cfg, SPLITS[tool][0], f'the checkpoint {args.checkpoint}'
                                               if from_checkpoint else 'the config'))
        forget_json()  # the annotation files parsed for the classes: mmdet and mmseg read them themselves

    if tool in ('train', 'test'):
        check_datasets(cfg, SPLITS[tool])
    elif tool == 'check_dataset':
        check_datasets(cfg, args.splits)
    if tool == 'train':
        check_hook_options(cfg)
    if tool in ('train', 'test'):
        check_work_dir(cfg.work_dir)
    if tool == 'test':
        check_before_testing(cfg)
    if tool == 'train':
        run.log_lines += check_before_training(cfg, args.skip_bad)
        skip_unreadable_images(cfg)
        adapt_to_cpu(cfg)
    elif tool == 'test':
        adapt_to_cpu(cfg)
    if isinstance(run.checkpoint, ExportedFile) and tool in ('test', 'infer'):
        use_onnx_model(cfg, run.checkpoint)
    run.log_lines = [line for line in run.log_lines if line]
    return run
