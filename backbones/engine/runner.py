"""The Runner and the checkpoint hook every config names: checkpoints written as plain data, read back on
``--resume`` through a schema.

mmengine's Runner pickles its message hub as ``HistoryBuffer`` objects, and its ``resume`` uses what
the file holds as it is: ``Config.fromstring(meta['config'])`` executes Python from the file, the
message hub's ``best_ckpt`` and ``keep_ckpt_ids`` tell ``CheckpointHook`` which paths to delete, and
with nothing to resume it falls back to whatever ``work_dir/last_checkpoint`` names (a URL, a FIFO, a
link to ``/dev/zero``). The two classes here, named in every config of the project, replace that:

* :class:`ConvNeXtDenseCheckpointHook` (``default_hooks.checkpoint.type``): mmengine's
  ``CheckpointHook`` whose checkpoints hold data only (the message hub's buffers as tensors and ints;
  numpy values as tensors and numbers), so that ``torch.load(weights_only=True)`` reads them with no
  allow-list at all, written atomically (:mod:`backbones.checkpoints.writing`).
* :class:`ConvNeXtDenseRunner` (``runner_type``): mmengine's ``Runner`` whose ``--resume`` reads the
  file with :func:`~backbones.checkpoints.reader.read_checkpoint_file` and takes from it only what a
  schema allows (:func:`parse_resume_state`): ``meta.epoch``/``iter`` as non-negative ints, the seed,
  the weights, optimizer and scheduler states as plain data and tensors, and the message hub's
  numbers. Paths are never taken from the file: ``last_ckpt``, ``best_ckpt*`` and ``keep_ckpt_ids``
  come from the work dir's own files; config text is never executed; without ``--resume CKPT`` the
  checkpoint is the one :func:`find_resume_checkpoint` finds in the work dir, and with none there the
  run stops with one line instead of training from scratch. The random state is validated by its
  owner, :class:`backbones.engine.randomness.RandomStateHook`.
"""
import glob
import math
import os
import os.path as osp
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS, RUNNERS
from mmengine.runner import IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from torch.utils._pytree import keystr, tree_map_with_path

from ..checkpoints.loading import load_model_weights
from ..checkpoints.pickle_data import Record
from ..checkpoints.reader import read_checkpoint_file
from ..checkpoints.writing import ATOMIC_BACKEND
from ..errors import CheckpointError
from .randomness import RandomStateHook, parse_random_state

HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
MAX_HISTORY = 100_000_000
NUMBERED_CHECKPOINT = re.compile(r'(epoch|iter)_(\d+)\.pth')


def _not_plain_container(value: Any) -> bool:
    """Where a walk of plain data stops: at anything but a ``dict``, ``list`` or ``tuple`` of exactly that type
    (pytree would rebuild an ``OrderedDict`` as one, and its containers are ours to check)."""
    return type(value) not in (dict, list, tuple)


def plain_data(value: Any, where: str = 'checkpoint') -> Any:
    """``value`` with what a checkpoint of ours may not hold made plain: numpy arrays become tensors, numpy
    scalars numbers, ordered dicts (and other dict, list and tuple subclasses) their base type, ``HistoryBuffer``
    objects ``{'log_history', 'count_history', 'max_length'}``.

    Raises:
        TypeError: An object of another type, naming where it is (``where`` and its key path), or containers
            nested deeper than Python's recursion limit.
    """
    def plain(path: tuple, item: Any) -> Any:
        if isinstance(item, np.generic):  # before float: numpy.float64 is a float
            return item.item()
        if item is None or isinstance(item, (bool, int, float, str, bytes, torch.Tensor)):
            return item
        if isinstance(item, np.ndarray) and item.dtype.kind in 'biufc':
            return torch.from_numpy(item.copy())
        if isinstance(item, HistoryBuffer):
            logs, counts = item.data
            return {'log_history': torch.from_numpy(np.asarray(logs, np.float64).copy()),
                    'count_history': torch.from_numpy(np.asarray(counts, np.int64).copy()),
                    'max_length': item.max_length}
        if isinstance(item, dict):
            return plain_data(dict(item), where + keystr(path))
        if isinstance(item, (list, tuple)):
            return type(item)(plain_data(list(item), where + keystr(path)))
        raise TypeError(f'{where}{keystr(path)} is a {type(item).__name__}, which a checkpoint of plain data cannot '
                        'hold')

    try:
        return tree_map_with_path(plain, value, is_leaf=_not_plain_container)
    except RecursionError:
        raise TypeError(f'{where} nests containers deeper than Python\'s recursion limit, which a checkpoint of '
                        'plain data cannot hold') from None


@HOOKS.register_module()
class ConvNeXtDenseCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` with checkpoints of plain data, written atomically (see the module doc).

    Args:
        **kwargs: As for ``CheckpointHook``. Without ``backend_args`` (or ``file_client_args``), checkpoints
            go through the ``convnext_dense_atomic`` backend.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get('backend_args') is None and kwargs.get('file_client_args') is None:
            kwargs['backend_args'] = {'backend': ATOMIC_BACKEND}
        super().__init__(**kwargs)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Make the meta and message hub plain data (the rest is tensors and plain data already)."""
        for key in ('meta', 'message_hub', 'optimizer', 'param_schedulers'):
            if key in checkpoint:
                checkpoint[key] = plain_data(checkpoint[key], key)


def _fail(path: str, problem: str) -> CheckpointError:
    return CheckpointError(f'Cannot resume from {path}: {problem}. Resume from another checkpoint, or train '
                           'without --resume.')


def check_plain(value: Any, where: str, path: str) -> None:
    """Refuse ``value`` unless it is plain data and tensors (no record of an object, no numpy array).

    Each container is looked at once, however many places share it, and at any depth.

    Raises:
        CheckpointError: Naming the first place found that holds something else.
    """
    # Not torch's pytree: it walks a shared container once per place (a small file can share one under up to the
    # reader's max_tree_size places, and pytree keeps every leaf's key path: minutes and gigabytes), and recurses.
    pending, seen = [(value, where)], set()
    while pending:
        item, place = pending.pop()
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:  # all of value is alive, so an id is one object's
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            pending.extend((child, f'{place}[{key!r}]') for key, child in item.items())
        elif isinstance(item, (list, tuple)):
            pending.extend((child, f'{place}[{index}]') for index, child in enumerate(item))
        elif not (item is None or isinstance(item, (bool, int, float, str, bytes, torch.Tensor))):
            raise _fail(path, f'{place} is a {item.name if isinstance(item, Record) else type(item).__name__}, '
                              'not plain data')


def _field(container: Any, key: str, kind: type | tuple[type, ...], path: str, where: str) -> Any:
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(path, f"{where}['{key}'] is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _numbers(value: Any, kind: Callable, path: str, where: str) -> list:
    """A 1-D sequence of numbers (a tensor, a numpy array or a list) as a list of ``kind``."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 1 and len(value) <= MAX_HISTORY:
        return [kind(item) for item in value.tolist()]
    if isinstance(value, list) and len(value) <= MAX_HISTORY and all(
            isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
        return [kind(item) for item in value]
    raise _fail(path, f'{where} is not a list of numbers')


def history_buffer(value: Any, path: str, where: str) -> HistoryBuffer:
    """A ``HistoryBuffer`` of the numbers stored for one logged scalar: ours (plain data) or mmengine's
    (a record of its attributes)."""
    if isinstance(value, Record) and value.name == HISTORY_BUFFER and isinstance(value.get_state(), dict):
        state = value.get_state()
        fields = {'log_history': state.get('_log_history'), 'count_history': state.get('_count_history'),
                  'max_length': state.get('max_length')}
    elif isinstance(value, dict):
        fields = value
    else:
        raise _fail(path, f'{where} is not a logged history')
    max_length = _field(fields, 'max_length', int, path, where)
    logs = _numbers(fields.get('log_history'), float, path, f'{where} log history')
    counts = _numbers(fields.get('count_history'), int, path, f'{where} count history')
    if not 0 < max_length <= MAX_HISTORY or len(logs) != len(counts) or len(logs) > max_length:
        raise _fail(path, f'{where} has {len(logs)} values, {len(counts)} counts and max_length {max_length}')
    return HistoryBuffer(logs, counts, max_length)


def _work_dir_file(work_dir: str, name: str) -> str | None:
    """``work_dir/name`` if that is a regular file whose real path is inside ``work_dir``."""
    path = osp.join(work_dir, name)
    real_dir = osp.realpath(work_dir)
    if osp.isfile(path) and not osp.islink(path) and osp.dirname(osp.realpath(path)) == real_dir:
        return path
    return None


def numbered_checkpoints(work_dir: str) -> list[tuple[int, str]]:
    """The ``epoch_N.pth`` / ``iter_N.pth`` regular files in ``work_dir``, by N."""
    found = []
    for path in glob.glob(osp.join(glob.escape(work_dir), '*.pth')):
        match = NUMBERED_CHECKPOINT.fullmatch(osp.basename(path))
        if match and _work_dir_file(work_dir, osp.basename(path)):
            found.append((int(match[2]), path))
    return sorted(found)


def find_resume_checkpoint(work_dir: str) -> str | None:
    """The checkpoint ``--resume`` continues from: the file ``work_dir/last_checkpoint`` names, if that is a
    regular file in ``work_dir`` itself, else the newest ``epoch_N.pth`` / ``iter_N.pth`` there; None when
    there is none. A URL, a link, a device or a path outside the work dir in the record is never used.
    """
    record = _work_dir_file(work_dir, 'last_checkpoint')
    if record and os.path.getsize(record) < 4096:
        with open(record, encoding='utf-8', errors='replace') as file:
            named = osp.basename(file.read().strip())
        if named and (path := _work_dir_file(work_dir, named)):
            return path
    numbered = numbered_checkpoints(work_dir)
    return numbered[-1][1] if numbered else None


def _best_checkpoint(work_dir: str, key: str) -> str | None:
    """The work dir's one ``best_*.pth`` file for runtime-info ``key`` (``best_ckpt`` or ``best_ckpt_<metric>``)."""
    metric = key.removeprefix('best_ckpt').removeprefix('_').replace('/', '_')
    pattern = re.compile(rf'best_{re.escape(metric) + "_" if metric else ""}.*(epoch|iter)_\d+\.pth')
    found = [path for path in glob.glob(osp.join(glob.escape(work_dir), 'best_*.pth'))
             if pattern.fullmatch(osp.basename(path)) and _work_dir_file(work_dir, osp.basename(path))]
    return found[0] if len(found) == 1 else None


def parse_resume_state(checkpoint: Any, path: str, work_dir: str) -> dict:
    """What resuming takes from ``checkpoint`` (read from ``path``), checked.

    Returns:
        ``epoch``, ``iter``, ``seed`` (int or None), ``dataset_meta``, ``state_dict``, ``optimizer`` and
        ``param_schedulers`` (None when absent), and ``message_hub``: ``log_scalars`` (HistoryBuffers),
        ``runtime_info`` (the stored numbers, and paths found in ``work_dir``) and ``resumed_keys``.

    Raises:
        CheckpointError: The first entry that does not fit the schema, in one line.
    """
    if not isinstance(checkpoint, dict):
        raise _fail(path, f'it holds a {type(checkpoint).__name__}, not a training checkpoint')
    meta = checkpoint.get('meta')
    if not isinstance(meta, dict) or ('epoch' not in meta and 'iter' not in meta):
        raise _fail(path, 'it has no meta record: it is a weights file, not a training checkpoint (use it as '
                          'load_from or init_cfg instead)')
    state = {key: _field(meta, key, int, path, 'meta') for key in ('epoch', 'iter')}
    if state['epoch'] < 0 or state['iter'] < 0:
        raise _fail(path, f"meta epoch {state['epoch']} and iter {state['iter']} are not both non-negative")
    seed = meta.get('seed')
    if not (seed is None or (type(seed) is int and 0 <= seed < 2**32)):
        raise _fail(path, "meta['seed'] is not an int in [0, 2**32)")
    state['seed'] = seed
    state['dataset_meta'] = meta.get('dataset_meta')
    check_plain(state['dataset_meta'], "meta['dataset_meta']", path)
    state_dict = _field(checkpoint, 'state_dict', dict, path, 'checkpoint')
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()):
        raise _fail(path, 'its state_dict is not a dict of tensors')
    state['state_dict'] = state_dict
    for key in ('optimizer', 'param_schedulers'):
        state[key] = checkpoint.get(key)
        check_plain(state[key], key, path)
    state['message_hub'] = _message_hub(checkpoint.get('message_hub'), path, work_dir, path)
    return state


def _message_hub(hub: Any, path: str, work_dir: str, resumed: str) -> dict:
    if hub is None:
        hub = {}
    if not isinstance(hub, dict):
        raise _fail(path, 'its message_hub is not a dict')
    scalars = hub.get('log_scalars', {})
    info = hub.get('runtime_info', {})
    resumed_keys = hub.get('resumed_keys', {})
    if not (isinstance(scalars, dict) and isinstance(info, dict) and isinstance(resumed_keys, dict)
            and all(isinstance(k, str) and type(v) is bool for k, v in resumed_keys.items())):
        raise _fail(path, 'its message_hub is not log scalars, runtime info and resumed keys')
    log_scalars = {}
    for key, value in scalars.items():
        if not isinstance(key, str):
            raise _fail(path, 'its message_hub has a log scalar without a name')
        log_scalars[key] = history_buffer(value, path, f'log scalar {key!r}')
    # Numbers (e.g. best_score) are kept; paths are found in the work dir; the rest the run's hooks set anew.
    runtime_info = {key: float(value) if isinstance(value, (float, np.floating)) else value
                    for key, value in info.items()
                    if isinstance(key, str) and isinstance(value, (int, float, np.integer, np.floating))
                    and not key.startswith('best_ckpt') and key != 'keep_ckpt_ids'}
    runtime_info = {key: int(value) if isinstance(value, np.integer) else value for key, value in runtime_info.items()}
    for key in [key for key in info if isinstance(key, str) and key.startswith('best_ckpt')]:
        if best := _best_checkpoint(work_dir, key):
            runtime_info[key] = best
    if 'keep_ckpt_ids' in info:
        runtime_info['keep_ckpt_ids'] = [step for step, _ in numbered_checkpoints(work_dir)]
    runtime_info['last_ckpt'] = resumed
    return {'log_scalars': log_scalars, 'runtime_info': runtime_info, 'resumed_keys': resumed_keys}


@RUNNERS.register_module()
class ConvNeXtDenseRunner(Runner):
    """mmengine's ``Runner`` whose resume reads a schema, not an object (see the module docstring)."""

    def load_or_resume(self) -> None:
        """Resume (from ``load_from``, or what :func:`find_resume_checkpoint` finds), or load weights."""
        if self._has_loaded:
            return
        if self._resume:
            path = self._load_from or find_resume_checkpoint(self.work_dir)
            if path is None:
                raise CheckpointError(f'Nothing to resume in {self.work_dir}: it has no epoch_N.pth or iter_N.pth '
                                      'checkpoint. Train without --resume, or pass --resume CKPT.')
            self.logger.info(f'Resuming from {path}.')
            self.resume(path)
        elif self._load_from is not None:  # any format; only layers of another class count may differ
            model = self.model.module if is_model_wrapper(self.model) else self.model
            load_model_weights(model, self._load_from, self.logger, new_classes=True)
        self._has_loaded = True

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Any = 'default') -> None:
        """Continue training from the local checkpoint ``filename``, as mmengine's ``resume`` does, from the
        entries :func:`parse_resume_state` checked.

        Args:
            filename: A local checkpoint file.
            resume_optimizer: Load the optimizer state.
            resume_param_scheduler: Load the parameter schedulers' states.
            map_location: Ignored: states are read onto the CPU and moved where the model and optimizer are.

        Raises:
            CheckpointError: A URL, an unreadable file, or one whose content does not fit the schema.
        """
        if '://' in filename:
            raise CheckpointError(f'Cannot resume from {filename}: resume reads local files only; download it and '
                                  'pass its path.')
        checkpoint = read_checkpoint_file(filename, 'cpu')
        state = parse_resume_state(checkpoint, filename, self.work_dir)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        _check_schedule_position(state, self.train_loop, filename)
        _check_weights(state['state_dict'], model, filename)
        if any(isinstance(hook, RandomStateHook) for hook in self.hooks):
            parse_random_state(checkpoint.get('random_state'), filename)  # its owner's check, before anything is loaded
        resume_optimizer = resume_optimizer and state['optimizer'] is not None
        if resume_optimizer:
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
            state['optimizer'] = checked_optimizer_state(state['optimizer'], self.optim_wrapper, filename)
        scheduler_states = []
        if resume_param_scheduler and state['param_schedulers'] is not None and self.param_schedulers is not None:
            self.param_schedulers = self.build_param_scheduler(self.param_schedulers)
            scheduler_states = self._scheduler_states(state['param_schedulers'], filename)

        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        _load_checkpoint_to_model(model, {'state_dict': state['state_dict']}, strict=False)

        self.train_loop._epoch, self.train_loop._iter = state['epoch'], state['iter']
        if state['seed'] is not None and state['seed'] != self._randomness_cfg.get('seed'):
            if self._randomness_cfg.get('seed') is not None:
                self.logger.warning(f"The random seed in the checkpoint ({state['seed']}) differs from the config's "
                                    f"({self._randomness_cfg.get('seed')}); the checkpoint's is used.")
            self._randomness_cfg.update(seed=state['seed'])
            self.set_randomness(**self._randomness_cfg)
        if not same_data(state['dataset_meta'], getattr(self.train_dataloader.dataset, 'metainfo', None)):
            self.logger.warning('The dataset metainfo of the checkpoint differs from the training dataset\'s: check '
                                'that the checkpoint belongs to this dataset.')
        hub = state['message_hub']
        self.message_hub._log_scalars.update(hub['log_scalars'])
        for key, value in hub['runtime_info'].items():
            self.message_hub.update_info(key, value)
        self.message_hub._resumed_keys.update(hub['resumed_keys'])

        if resume_optimizer:
            self.optim_wrapper.load_state_dict(state['optimizer'])
        for scheduler, scheduler_state in scheduler_states:
            scheduler.load_state_dict(scheduler_state)
        self._has_loaded = True
        self.logger.info(f'resumed epoch: {self.epoch}, iter: {self.iter}')

    def _scheduler_states(self, stored: Any, path: str) -> list[tuple[Any, dict]]:
        """Each of the run's parameter schedulers with the state ``stored`` holds for it, checked (see
        :func:`scheduler_state_problem`) and with the scheduler's own container types (a Counter of milestones).

        Raises:
            CheckpointError: Other schedulers than the config's, or a state one of them cannot take.
        """
        schedulers = self.param_schedulers
        if isinstance(schedulers, dict):
            if not (isinstance(stored, dict) and set(stored) == set(schedulers)):
                raise _fail(path, 'its parameter schedulers are not those of the config')
            pairs = [(scheduler, state) for name in schedulers for scheduler, state in
                     zip(schedulers[name], stored[name] if isinstance(stored[name], list) else [])]
            count = sum(len(group) for group in schedulers.values())
        else:
            pairs = list(zip(schedulers, stored if isinstance(stored, list) else []))
            count = len(schedulers)
        if len(pairs) != count:
            raise _fail(path, 'its parameter schedulers are not those of the config')
        checked = []
        for scheduler, state in pairs:
            # A scheduler loads by updating its attributes: only its own, with values of their kinds.
            own = scheduler.state_dict()
            if problem := scheduler_state_problem(state, own):
                raise _fail(path, f'the state of its {type(scheduler).__name__} {problem}')
            checked.append((scheduler, {
                key: type(own[key])(value)
                if isinstance(own[key], (dict, list, tuple)) and type(value) is not type(own[key]) else value
                for key, value in state.items()}))
        return checked


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool), ints within int64's range."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, str)) or _is_number(value)


def misfit(stored: Any, own: Any, where: str) -> str | None:
    """What keeps ``stored`` (a value read from a checkpoint) from replacing ``own`` (the value the run's
    optimizer, scheduler or loss scaler has), or None: a finite number for a number, a bool for a bool, a
    string for a string, a plain scalar for None, a tensor of ``own``'s shape and dtype without NaN or
    infinity, a list or tuple of ``own``'s length whose items fit, a dict whose values fit ``own``'s of the
    same key (a plain scalar for a key ``own`` lacks)."""
    if isinstance(own, torch.Tensor):
        if not (isinstance(stored, torch.Tensor) and stored.shape == own.shape and stored.dtype == own.dtype):
            return f'{where} is not a {own.dtype} tensor of shape {tuple(own.shape)}'
        if stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            return f'{where} holds NaN or infinity'
        return None
    if isinstance(own, (list, tuple)):
        if not (isinstance(stored, (list, tuple)) and len(stored) == len(own)):
            return f'{where} is not a sequence of {len(own)}'
        return next((problem for index, (item, own_item) in enumerate(zip(stored, own))
                     if (problem := misfit(item, own_item, f'{where}[{index}]'))), None)
    if isinstance(own, dict):
        if not (isinstance(stored, dict) and all(isinstance(key, (str, int)) for key in stored)):
            return f'{where} is not a dict'
        return next((problem for key, item in stored.items() if (problem := (
            misfit(item, own[key], f'{where}[{str(key)[:50]!r}]') if key in own
            else None if _is_scalar(item) else f'{where}[{str(key)[:50]!r}] is not a plain value'))), None)
    if isinstance(own, bool) or own is None or isinstance(own, str):
        fits = isinstance(stored, bool) if isinstance(own, bool) else isinstance(stored, str) if isinstance(
            own, str) else _is_scalar(stored)
        return None if fits else f'{where} is not {"a plain value" if own is None else "a " + type(own).__name__}'
    if isinstance(own, (int, float)):  # a finite number, or the run's own infinity (an initial best value)
        fits = _is_number(stored) or type(stored) is float and stored == own
        return None if fits else f'{where} is not a finite number'
    return f'{where} cannot be restored from plain data'


def scheduler_state_problem(state: Any, own: dict) -> str | None:
    """What keeps a parameter scheduler whose state is ``own`` from taking ``state``, or None: the same
    attributes, each fitting its own (:func:`misfit`), and a schedule of positive length where the scheduler has
    one: ``begin < end``, ``total_iters`` as far from ``end - begin`` as the run's is, ``T_max > 0``."""
    if not (isinstance(state, dict) and set(state) == set(own)):
        return 'does not have the attributes of the config\'s'
    if problem := next((problem for key in own if (problem := misfit(state[key], own[key], repr(key)))), None):
        return problem
    if 'begin' in own and 'end' in own and (not state['begin'] < state['end'] or 'total_iters' in own and (
            state['total_iters'] - state['end'] + state['begin'] != own['total_iters'] - own['end'] + own['begin'])
            or 'T_max' in own and not state['T_max'] > 0):
        return 'is a schedule of no length, or its length does not agree with its begin and end'
    return None


def _check_schedule_position(state: dict, loop: Any, path: str) -> None:
    """Refuse an ``epoch``/``iter`` beyond the config's schedule (an iteration-based loop would replay the
    dataloader that many times)."""
    is_iter_based = isinstance(loop, IterBasedTrainLoop)
    max_epochs = loop.max_iters if is_iter_based else loop.max_epochs  # an iteration loop counts no epochs
    if state['iter'] > loop.max_iters or state['epoch'] > max_epochs:
        raise _fail(path, f"its epoch {state['epoch']} and iter {state['iter']} are beyond the config's schedule "
                          f'({loop.max_epochs} epochs, {loop.max_iters} iterations)'
                    if not is_iter_based else
                    f"its iter {state['iter']} is beyond the config's schedule of {loop.max_iters} iterations")


def _check_weights(state_dict: dict, model: torch.nn.Module, path: str) -> None:
    """Refuse weights whose names (after the ``module.`` prefix mmengine's loader removes) or shapes are not the
    model's (an empty state dict included)."""
    own = model.state_dict()
    state_dict = {key.removeprefix('module.'): value for key, value in state_dict.items()}
    missing = [key for key in own if key not in state_dict]
    extra = [key for key in state_dict if key not in own]
    if missing:
        raise _fail(path, f'its state_dict lacks {len(missing)} of the model\'s {len(own)} weights, e.g. '
                          f'{missing[0]!r}')
    if extra:
        raise _fail(path, f'its state_dict has {len(extra)} weights the model does not have, e.g. {extra[0][:100]!r}')
    for key, value in own.items():
        if state_dict[key].shape != value.shape:
            raise _fail(path, f'its weight {key!r} has shape {tuple(state_dict[key].shape)}, the model\'s '
                              f'{tuple(value.shape)}')


def _is_step(value: Any) -> bool:
    """An optimizer's step count: a non-negative number, or a tensor holding one."""
    if isinstance(value, torch.Tensor):
        if value.ndim or value.dtype == torch.bool or value.is_complex():
            return False
        value = value.item()
    return _is_number(value) and value >= 0


def _group_problem(group: Any, own: dict, where: str) -> str | None:
    """What keeps a parameter group (or mmengine's ``base_param_settings``) read from a checkpoint from
    replacing ``own``, the run's, or None: each of ``own``'s settings fits (:func:`misfit`; a flag the optimizer
    defaults may be absent), and the settings ``own`` lacks are plain values. ``params`` is checked by the caller."""
    if not (isinstance(group, dict) and all(isinstance(key, str) for key in group)):
        return f'{where} is not a dict of settings'
    for key, own_value in own.items():
        if key == 'params':
            continue
        if key in group:
            if problem := misfit(group[key], own_value, f'{where} {key!r}'):
                return problem
        elif _is_number(own_value) or isinstance(own_value, (list, tuple)):
            return f'{where} has no {key!r}'
    return next((f'{where} {key[:50]!r} is not a plain value' for key in group.keys() - own.keys()
                 if key != 'params' and not _is_scalar(group[key]) and not (
                     isinstance(group[key], (list, tuple)) and all(_is_scalar(item) for item in group[key]))), None)


def _checked_wrapper_state(state: Any, wrapper: Any, path: str) -> dict:
    """The state of one optimizer wrapper, checked against the run's ``wrapper`` (see
    :func:`checked_optimizer_state`)."""
    own = wrapper.state_dict()
    if not (isinstance(state, dict) and isinstance(state.get('state'), dict)
            and isinstance(state.get('param_groups'), list)):
        raise _fail(path, 'its optimizer state has no state and param_groups')
    unknown = [key for key in state if key not in own and key != 'loss_scaler']
    if unknown:
        raise _fail(path, f'its optimizer state has an entry {str(unknown[0])[:50]!r} the config\'s optimizer has not')
    groups, own_groups = state['param_groups'], own['param_groups']
    if len(groups) != len(own_groups):
        raise _fail(path, f'its optimizer has {len(groups)} parameter groups, the config\'s {len(own_groups)}')
    for index, (group, own_group) in enumerate(zip(groups, own_groups)):
        params = group.get('params') if isinstance(group, dict) else None
        if not (isinstance(params, list) and len(params) == len(own_group['params'])
                and all(type(item) is int for item in params) and params == own_group['params']):
            raise _fail(path, f'its optimizer parameter group {index} does not hold the {len(own_group["params"])} '
                              'parameters of the config\'s')
        if problem := _group_problem(group, own_group, f'parameter group {index}'):
            raise _fail(path, f'its optimizer {problem}')
    if 'base_param_settings' in state:
        settings = state['base_param_settings']
        problem = _group_problem(settings, own['base_param_settings'], 'base_param_settings') or misfit(
            settings.get('params'), own['base_param_settings']['params'], "base_param_settings 'params'")
        if problem:
            raise _fail(path, f'its optimizer {problem}')
    params = [param for group in wrapper.optimizer.param_groups for param in group['params']]
    for index, entry in state['state'].items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise _fail(path, f'its optimizer state has an entry {str(index)[:50]!r} for no parameter')
        param = params[index]
        for key, value in entry.items():
            where = f'its optimizer state {str(key)[:50]!r} of parameter {index}'
            if key == 'step':
                if not _is_step(value):
                    raise _fail(path, f'{where} is not a non-negative number')
            elif isinstance(value, torch.Tensor):
                if value.shape != param.shape or value.dtype != param.dtype:
                    raise _fail(path, f'{where} has shape {tuple(value.shape)} and dtype {value.dtype}, the parameter '
                                      f'{tuple(param.shape)} and {param.dtype}')
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise _fail(path, f'{where} holds NaN or infinity')
            elif not (isinstance(key, str) and _is_scalar(value)):
                raise _fail(path, f'{where} is not a tensor or a number')
    own_scaler, scaler = own.get('loss_scaler'), state.get('loss_scaler')
    if own_scaler and scaler == {}:  # saved where the scaler was disabled (no CUDA): it starts from its initial scale
        return {key: value for key, value in state.items() if key != 'loss_scaler'}
    if own_scaler and scaler is not None:
        problem = misfit(scaler, own_scaler, 'loss scaler')
        if problem or set(scaler) != set(own_scaler) or not all(
                value > 0 or key == '_growth_tracker' and value == 0 for key, value in scaler.items()):
            raise _fail(path, f'its {problem or "loss scaler is not a positive scale, factors and interval"}')
    return state


def checked_optimizer_state(stored: Any, optim_wrapper: Any, path: str) -> Any:
    """``stored``, an optimizer wrapper's state read from a checkpoint, checked against the run's
    ``optim_wrapper`` (an ``OptimWrapper``, ``AmpOptimWrapper`` or ``OptimWrapperDict``) before any of it is
    loaded: the same parameter groups, each holding the config's parameters (numbered as torch numbers them) with
    settings that fit the config's (:func:`misfit`: finite learning rates and momenta, as many betas); per
    parameter, moment tensors of its shape and dtype without NaN or infinity and a non-negative step; a
    loss-scaler state of positive finite numbers (an empty one, saved where the scaler was disabled, is left out).

    Returns:
        The state for ``optim_wrapper.load_state_dict``.

    Raises:
        CheckpointError: The first entry that does not fit, in one line.
    """
    is_dict = hasattr(optim_wrapper, 'optim_wrappers')
    wrappers = optim_wrapper.optim_wrappers if is_dict else {'': optim_wrapper}
    states = stored if is_dict else {'': stored}
    if not isinstance(states, dict) or set(states) != set(wrappers):
        raise _fail(path, 'its optimizer state is not that of the config\'s optimizer')
    checked = {name: _checked_wrapper_state(states[name], wrapper, path) for name, wrapper in wrappers.items()}
    return checked if is_dict else checked['']


def same_data(stored: Any, current: Any) -> bool:
    """Whether ``stored`` (plain data read from a checkpoint) equals ``current`` made plain."""
    try:
        current = plain_data(current)
    except TypeError:
        return False
    # Not torch's pytree: here a list equals a tuple of equal items and dict keys match in any order, where
    # pytree's structures would differ; and the walk goes only where ``current`` goes (no further into a file's
    # shared containers).
    pending = [(stored, current)]
    while pending:
        left, right = pending.pop()
        if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
            if not (isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor) and torch.equal(left, right)):
                return False
        elif isinstance(left, dict) and isinstance(right, dict):
            if set(left) != set(right):
                return False
            pending.extend((left[key], right[key]) for key in left)
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            if len(left) != len(right):
                return False
            pending.extend(zip(left, right))
        elif left != right:
            return False
    return True
