"""Config preparation for the tools: read a config, point it at a dataset, check the dataset, TTA.

* :func:`load_config`: read a config, apply ``--cfg-options`` and set the launcher and work dir.
* :func:`set_data_root`: point every dataloader and evaluator at another dataset folder.
* :func:`check_datasets`: a one-line error naming the missing file and the docs section.
* :func:`enable_tta`: ``--tta``, the config's test-time augmentation model and pipeline.
"""
import os.path as osp

from mmengine.config import Config, ConfigDict

from ..errors import DatasetNotFoundError, UsageError

# Where the docs say how to prepare each dataset, for the one-line error of a missing one.
DATASET_DOCS = {'CocoDataset': 'docs/datasets.md#coco', 'ADE20KDataset': 'docs/datasets.md#ade20k',
                'ImageFolderDataset': 'docs/pretraining.md'}


def load_config(path: str, cfg_options: dict | None = None, launcher: str = 'none',
                work_dir: str | None = None) -> Config:
    """Read a config for a run of the tools.

    Args:
        path: The config file.
        cfg_options: ``--cfg-options key=value`` pairs, merged into the config.
        launcher: The job launcher (``none``, ``pytorch``, ``slurm`` or ``mpi``).
        work_dir: Folder for checkpoints and logs; by default the config's own ``work_dir``, else
            ``work_dirs/<config name>``.

    A config that names no runner gets :class:`backbones.checkpoints.training.ConvNeXtDenseRunner`, so
    that ``--resume`` reads checkpoints through its schema, whatever config a user writes.

    Raises:
        UsageError: The config file does not exist or cannot be read.
    """
    if not osp.isfile(path):
        raise UsageError(f'Config not found: {path}. Give the path of a config file, '
                         'e.g. configs/demo/mask_rcnn_convnext_demo.py.')
    cfg = Config.fromfile(path)
    cfg.setdefault('runner_type', 'ConvNeXtDenseRunner')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join('work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def _dataset_cfgs(dataset: ConfigDict) -> list[ConfigDict]:
    """The leaf dataset configs inside wrappers such as RepeatDataset and ConcatDataset."""
    if 'datasets' in dataset:
        return [leaf for child in dataset.datasets for leaf in _dataset_cfgs(child)]
    if 'dataset' in dataset:
        return _dataset_cfgs(dataset.dataset)
    return [dataset]


def _evaluator_cfgs(cfg: Config) -> list[ConfigDict]:
    evaluators = []
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        evaluators += evaluator if isinstance(evaluator, list) else [evaluator] if evaluator else []
    return evaluators


def set_data_root(cfg: Config, data_root: str) -> None:
    """Use ``data_root`` for every dataset and for evaluator annotation files under the old roots."""
    old_roots = set()
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        for dataset in _dataset_cfgs(loader.dataset) if loader else []:
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


def check_datasets(cfg: Config, splits: list[str]) -> None:
    """Check that the files and folders of the ``splits`` dataloaders exist.

    Raises:
        DatasetNotFoundError: The first missing path, the dataset and the README section to read.
    """
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        for dataset in _dataset_cfgs(loader.dataset) if loader else []:
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


