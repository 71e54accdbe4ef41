"""Config preparation for the tools: read a config, point it at a dataset, check the dataset, TTA.

* :func:`load_config`: read a config, apply ``--cfg-options`` (to the test keys too where the config
  copies them from the val keys) and set the launcher and work dir; :func:`config_scope`: its
  ``default_scope``, one of :data:`SCOPES` (nothing else is ever imported as a scope).
* :func:`set_data_root`: point every dataloader and evaluator at another dataset folder.
* :func:`check_datasets`: a one-line error naming the missing file and the docs section.
* :func:`check_hook_options`, :func:`check_work_dir`: one line before training for a misspelt hook
  option or a work dir that cannot be written.
* :func:`skip_pretrained_init`: no pre-trained initialisation (no download) when a checkpoint replaces it.
* :func:`enable_tta`: ``--tta``, the config's test-time augmentation model and pipeline.
"""
import ast
import importlib
import inspect
import os
import os.path as osp
from collections.abc import Iterator, Sequence

from mmengine.config import Config, ConfigDict
from mmengine.hooks import CheckpointHook

from ..errors import DatasetNotFoundError, UsageError

# Where the docs say how to prepare each dataset, for the one-line error of a missing one.
SPLITS = ('train', 'val', 'test')
DATASET_DOCS = {'CocoDataset': 'docs/datasets.md#coco', 'ADE20KDataset': 'docs/datasets.md#ade20k',
                'ImageFolderDataset': 'docs/pretraining.md'}
# The packages whose registries the project's configs run in (the FCMAE configs name none: mmengine's).
SCOPES = ('mmdet', 'mmseg', 'mmengine')


def load_config(path: str, cfg_options: dict | None = None, launcher: str = 'none',
                work_dir: str | None = None) -> Config:
    """Read a config for a run of the tools.

    Args:
        path: The config file.
        cfg_options: ``--cfg-options key=value`` pairs, merged into the config.
        launcher: The job launcher (``none``, ``pytorch``, ``slurm`` or ``mpi``).
        work_dir: Folder for checkpoints and logs; by default the config's own ``work_dir``, else
            ``work_dirs/<config name>``.

    ``--cfg-options`` inside ``val_dataloader`` or ``val_evaluator`` (``val_evaluator.ann_file=...``) also
    reach their ``test_`` copies (``test_evaluator = val_evaluator`` in a config is copied when it is
    read), unless the options set test keys too.

    A config that names no runner gets :class:`backbones.engine.runner.ConvNeXtDenseRunner`, so
    that ``--resume`` reads checkpoints through its schema, whatever config a user writes.

    Raises:
        UsageError: The config file does not exist or cannot be read (see :func:`read_config`), or its
            ``default_scope`` is not one of :data:`SCOPES` (see :func:`config_scope`).
    """
    if not osp.isfile(path):
        raise UsageError(f'Config not found: {path}. Give the path of a config file, '
                         'e.g. configs/demo/mask_rcnn_convnext_demo.py.')
    cfg = read_config(path)
    cfg.setdefault('runner_type', 'ConvNeXtDenseRunner')
    if cfg_options:
        # ``test_x = val_x`` in a config is a copy made when it is read: overrides inside val_x reach test_x too.
        linked = {part for part in ('dataloader', 'evaluator') if f'val_{part}' in cfg
                  and cfg.get(f'test_{part}') == cfg.get(f'val_{part}') and not any(
                      key.startswith(f'test_{part}') for key in cfg_options)}
        cfg.merge_from_dict({**cfg_options, **{f'test_{key[4:]}': value for key, value in cfg_options.items()
                                               if key.startswith('val_') and key[4:].split('.')[0] in linked
                                               and '.' in key}})
    config_scope(cfg)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join('work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def config_scope(cfg: Config) -> str:
    """The package whose registries ``cfg`` runs in: its ``default_scope``, or ``mmengine`` for none.

    Checked before anything imports ``<scope>.registry``, so that ``--cfg-options default_scope=<module>``
    cannot make the tools import any module.

    Raises:
        UsageError: A ``default_scope`` that is not one of :data:`SCOPES`.
    """
    scope = cfg.get('default_scope') or 'mmengine'
    if scope not in SCOPES:
        raise UsageError(f'default_scope={str(scope)[:100]!r}: the configs run in {", ".join(SCOPES)} only. Fix the '
                         'config or --cfg-options.')
    return scope


def own_syntax_error(path: str) -> tuple[str, int | None, str] | None:
    """``(path, line, message)`` of the syntax error in the Python file ``path`` itself, None if it parses."""
    with open(path, encoding='utf-8', errors='replace') as file:
        source = file.read()
    try:
        ast.parse(source)
    except SyntaxError as error:
        return path, error.lineno, error.msg
    return None


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``, with a config that cannot be read as one line.

    Raises:
        UsageError: A syntax error (with the file and line), a missing base file, or another error the
            config's own code raises.
    """
    try:
        return Config.fromfile(path)
    except SyntaxError as error:
        where, line, message = own_syntax_error(path) or (f'a _base_ file of {path}', error.lineno, error.msg)
        raise UsageError(f'Syntax error in {where}, line {line}: {message}. Fix the config.') from None
    except Exception as error:  # the config's own code may raise anything: a NameError, a ZeroDivisionError...
        raise UsageError(f'Cannot read the config {path}: {type(error).__name__}: {error}. Fix the config or the '
                         'files it names in _base_.') from None


def _leaf_datasets(dataset: ConfigDict) -> list[ConfigDict]:
    """The leaf dataset configs inside wrappers such as RepeatDataset and ConcatDataset."""
    if 'datasets' in dataset:
        return [leaf for child in dataset.datasets for leaf in _leaf_datasets(child)]
    if 'dataset' in dataset:
        return _leaf_datasets(dataset.dataset)
    return [dataset]


def split_datasets(cfg: Config, splits: Sequence[str] = SPLITS) -> Iterator[tuple[str, ConfigDict]]:
    """The ``(split, leaf dataset config)`` pairs of the ``splits`` dataloaders (inside wrappers such as
    RepeatDataset and ConcatDataset)."""
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        for dataset in _leaf_datasets(loader.dataset) if loader else []:
            yield split, dataset


def _evaluator_cfgs(cfg: Config) -> list[ConfigDict]:
    evaluators = []
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        evaluators += evaluator if isinstance(evaluator, list) else [evaluator] if evaluator else []
    return evaluators


def set_data_root(cfg: Config, data_root: str) -> None:
    """Use ``data_root`` for every dataset and for evaluator annotation files under the old roots."""
    old_roots = set()
    for _, dataset in split_datasets(cfg):
        old_roots.add(dataset.get('data_root', ''))
        dataset.data_root = data_root
    rewritten = set()
    for evaluator in _evaluator_cfgs(cfg):
        ann_file = str(evaluator.get('ann_file', ''))
        old_root = next((root for root in old_roots if root and ann_file.startswith(root)), None)
        if old_root and id(evaluator) not in rewritten:
            evaluator.ann_file = osp.join(data_root, ann_file[len(old_root):].lstrip('/'))
            rewritten.add(id(evaluator))
    cfg.data_root = data_root


def check_datasets(cfg: Config, splits: Sequence[str]) -> None:
    """Check that the files and folders of the ``splits`` dataloaders exist.

    Raises:
        DatasetNotFoundError: The first missing path, the dataset and the README section to read.
    """
    for split, dataset in split_datasets(cfg, splits):
        root = dataset.get('data_root', '')
        paths = [dataset.get('ann_file') or None, *dict(dataset.get('data_prefix', {})).values()]
        for path in (p for p in paths if p is not None):  # a prefix '' is the data root itself
            full = osp.join(root, path)
            if full and not osp.exists(full):
                docs = DATASET_DOCS.get(dataset.get('type'), 'docs/datasets.md')
                raise DatasetNotFoundError(
                    f"{dataset.get('type', 'Dataset')} {split} split not found: {full} does not exist. Prepare "
                    f'the data as {docs} describes, or point --data-root at it.')
    for evaluator in _evaluator_cfgs(cfg):
        if evaluator.get('ann_file') and not osp.exists(evaluator.ann_file):
            raise DatasetNotFoundError(f"Annotation file of the {evaluator.type} evaluator not found: "
                                       f'{evaluator.ann_file}. Prepare the data as docs/datasets.md describes, '
                                       'or point --data-root at it.')


def _accepted_options(hook_class: type) -> set[str] | None:
    """The keyword arguments a hook class takes (None: any). ``CheckpointHook`` hands its extra keyword
    arguments to ``Runner.save_checkpoint``, which takes none beyond those the hook passes itself."""
    names: set[str] = set()
    for klass in hook_class.__mro__:
        if '__init__' not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {'self'}
        if klass is CheckpointHook or not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


def check_hook_options(cfg: Config) -> None:
    """Check every hook's options against what its class takes, before training (a misspelt checkpoint-hook
    option would otherwise fail at the first save).

    Raises:
        UsageError: An unknown hook type or option, naming the hook and the options it takes, or a
            ``default_scope`` that is not one of :data:`SCOPES`.
    """
    scope = config_scope(cfg)
    registry = importlib.import_module(f'{scope}.registry').HOOKS
    if scope != 'mmengine':
        importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    hooks = [(f'default_hooks.{name}', hook) for name, hook in (cfg.get('default_hooks') or {}).items()]
    hooks += [(f'custom_hooks.{index}', hook) for index, hook in enumerate(cfg.get('custom_hooks') or [])]
    for where, hook in hooks:
        if not isinstance(hook, dict) or not isinstance(hook.get('type'), str):
            continue
        hook_class = registry.get(hook['type'])
        if hook_class is None:
            raise UsageError(f"{where}: no hook named {hook['type']!r} in {scope}. Check the spelling of its type.")
        accepted = _accepted_options(hook_class)
        # The runner takes a hook's priority itself.
        unknown = sorted(set(hook) - {'type', '_scope_', 'priority'} - (accepted or set(hook)))
        if unknown:
            raise UsageError(f"{where} ({hook['type']}) has no option {unknown[0]!r}; it takes "
                             f"{', '.join(sorted(accepted))}. Fix the config or --cfg-options.")


def check_work_dir(work_dir: str) -> None:
    """Create ``work_dir`` if needed and check that it can be written to.

    Raises:
        UsageError: It cannot be created or written to.
    """
    try:
        os.makedirs(work_dir, exist_ok=True)
    except OSError as error:
        raise UsageError(f'Cannot create the work dir {work_dir}: {error.strerror}. Give another --work-dir.') from None
    if not os.access(work_dir, os.W_OK | os.X_OK):
        raise UsageError(f'Cannot write to the work dir {work_dir}: permission denied. Give another --work-dir.')


def drop_pretrained_init(model: ConfigDict) -> list[str]:
    """Remove every ``Pretrained`` entry of the ``init_cfg`` fields in a model config.

    Returns:
        What was removed: ``model.backbone.init_cfg (<checkpoint>)`` for each.
    """
    skipped: list[str] = []
    _drop_pretrained(model, 'model', skipped)
    return skipped


def _drop_pretrained(node: object, where: str, skipped: list[str]) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _drop_pretrained(item, f'{where}.{index}', skipped)
    if not isinstance(node, dict):
        return
    init = node.get('init_cfg')
    entries = init if isinstance(init, list) else [init]
    kept = [e for e in entries if not (isinstance(e, dict) and e.get('type') == 'Pretrained')]
    if len(kept) < len(entries):
        skipped += [f"{where}.init_cfg ({e.get('checkpoint')})" for e in entries if e not in kept]
        node['init_cfg'] = kept if isinstance(init, list) else None
    for key, value in node.items():
        if key != 'init_cfg':
            _drop_pretrained(value, f'{where}.{key}', skipped)


def skip_pretrained_init(cfg: Config) -> str | None:
    """With ``load_from`` or ``resume`` set, drop the model's ``Pretrained`` initialisations.

    mmengine initialises the model (downloading or reading the pre-training file) before ``load_from`` or
    the resumed checkpoint replaces every weight, so that file would be needed for nothing, and on a new
    machine its absence would stop the run.

    Returns:
        The log line naming what was skipped and why, or None when nothing was.
    """
    if not (cfg.get('load_from') or cfg.get('resume')):
        return None
    skipped = drop_pretrained_init(cfg.model)
    if not skipped:
        return None
    return (f"Skipped the pre-trained initialisation of {', '.join(skipped)}: the checkpoint of "
            f"{'--resume' if cfg.get('resume') else '--load-from'} replaces those weights.")


def enable_tta(cfg: Config) -> None:
    """Swap in the config's test-time augmentation: ``tta_model`` around ``model``, ``tta_pipeline`` as the
    test pipeline (segmentation: scales 0.5 to 1.75 with flip).

    Raises:
        UsageError: The config has no ``tta_model`` or no ``tta_pipeline``.
    """
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise UsageError(f'--tta needs tta_model and tta_pipeline in the config; {cfg.filename} has none.')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


