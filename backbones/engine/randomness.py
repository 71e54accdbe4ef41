"""Random state in checkpoints, so that a resumed run continues the random numbers of the original.

mmengine seeds a run once at its start and saves no random state in checkpoints: a run resumed
after a crash draws different random numbers (augmentation, drop path, RoI sampling) from the point
of the checkpoint on, so its loss curve departs from the uninterrupted run's.
:class:`RandomStateHook` closes that gap:

* Every checkpoint of a single-process run stores the state of python's ``random``, numpy's global
  generator, torch's CPU generator and the CUDA generators (``checkpoint['random_state']``).
  mmengine saves checkpoints on the main process only (``Runner.save_checkpoint`` is master-only), so
  the other processes' states cannot be gathered there without a collective every iteration:
  multi-process runs store none and resume as mmengine does.
* Validation does not disturb the training stream: the state is saved when validation starts and
  put back when it ends (validation draws a seed for its dataloader), so that checkpoints taken
  before a validation and runs without it continue alike.
* On resume the stored state is put back just before the first new batch is drawn: at the start of
  the next epoch (epoch-based loops), or after mmengine's iteration-based loop has replayed the
  dataloader up to the checkpoint's iteration.

What a checkpoint holds is checked before it is used (:func:`parse_random_state`): every generator's
state must have its exact types, sizes and positions in range (numpy would read past its key with a
position out of range), finite cached normals, and torch's and CUDA's states must be taken by a new
generator of their device, or resuming stops with one line.

A checkpoint without the entry (another tool's, or a multi-process run's) resumes as mmengine does,
with a warning. So does augmentation in persistent dataloader workers of an epoch-based loop: their
generators run on across epochs inside the worker processes, out of the checkpoint's reach (the
iteration-based loop's replay advances them as the original run did; non-persistent workers are
reseeded alike every epoch).
"""
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from ..errors import CheckpointError

RandomState = dict[str, Any]
MT_WORDS = 624  # the state of a Mersenne Twister (python's random and numpy's MT19937)


def get_random_state() -> RandomState:
    """This process's generator states as plain data (ints, strings and tensors)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        'python': random.getstate(),
        'numpy': {'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                  'pos': numpy_state['state']['pos'], 'has_gauss': numpy_state['has_gauss'],
                  'gauss': numpy_state['gauss']},
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_random_state(state: RandomState) -> None:
    """Put back generator states returned by :func:`get_random_state`, wherever the checkpoint loader
    put their tensors (mmengine's resume loads onto the run's device: a GPU)."""
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state['numpy']
    key = numpy_state['key'].cpu().numpy().astype(np.uint32)
    np.random.set_state({'bit_generator': 'MT19937', 'has_gauss': numpy_state['has_gauss'],
                         'gauss': numpy_state['gauss'], 'state': {'key': key, 'pos': numpy_state['pos']}})
    torch.set_rng_state(state['torch'].cpu())
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state['cuda']])


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value < high


def _accepted(state: torch.Tensor, device: str) -> bool:
    """Whether a generator of ``device`` takes ``state`` (tried on a new generator: the run's are untouched)."""
    try:
        torch.Generator(device=device).set_state(state)
    except RuntimeError:  # e.g. "Invalid mt19937 state": a position out of range
        return False
    return True


def parse_random_state(stored: Any, path: str | None = None) -> RandomState | None:
    """The random state a checkpoint (read from ``path``, when known) stored
    (:meth:`RandomStateHook.before_save_checkpoint`), checked; None when it stored none.

    Raises:
        CheckpointError: A state of other types, sizes or positions than :func:`get_random_state` makes.
    """
    if stored is None:
        return None
    problem = None
    state = stored[0] if isinstance(stored, list) and len(stored) == 1 and isinstance(stored[0], dict) else None
    if state is None or set(state) != {'python', 'numpy', 'torch', 'cuda'}:
        problem = 'it is not one state of python, numpy, torch and CUDA generators'
    else:
        python, numpy_state, torch_state, cuda = state['python'], state['numpy'], state['torch'], state['cuda']
        if not (isinstance(python, (tuple, list)) and len(python) == 3 and python[0] == 3
                and isinstance(python[1], (tuple, list)) and len(python[1]) == MT_WORDS + 1
                and all(_is_int(word, 0, 2**32) for word in python[1][:-1]) and _is_int(python[1][-1], 0, MT_WORDS + 1)
                and (python[2] is None or type(python[2]) is float and math.isfinite(python[2]))):
            problem = "python's state is not a Mersenne Twister's"
        elif not (isinstance(numpy_state, dict) and set(numpy_state) == {'key', 'pos', 'has_gauss', 'gauss'}
                  and isinstance(numpy_state['key'], torch.Tensor) and numpy_state['key'].dtype == torch.int64
                  and tuple(numpy_state['key'].shape) == (MT_WORDS,)
                  and bool(((numpy_state['key'] >= 0) & (numpy_state['key'] < 2**32)).all())
                  and _is_int(numpy_state['pos'], 0, MT_WORDS + 1) and numpy_state['has_gauss'] in (0, 1)
                  and type(numpy_state['gauss']) is float and math.isfinite(numpy_state['gauss'])):
            problem = "numpy's state is not an MT19937 key of 624 words and a position in [0, 624]"
        elif not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8
                  and torch_state.shape == torch.get_rng_state().shape and _accepted(torch_state, 'cpu')):
            problem = "torch's state is not a generator state of its size that its generator accepts"
        elif not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1
                                                 for t in cuda)):
            problem = 'the CUDA states are not generator states'
        elif cuda and torch.cuda.is_available() and (len(cuda) != torch.cuda.device_count() or any(
                t.shape != current.shape or not _accepted(t, f'cuda:{index}')
                for index, (t, current) in enumerate(zip(cuda, torch.cuda.get_rng_state_all())))):
            problem = 'the CUDA states are not those of this machine\'s devices'
    if problem:
        source = f'Cannot resume from {path}: its' if path else 'Cannot resume: the checkpoint\'s'
        raise CheckpointError(f'{source} random_state is broken ({problem}). Resume from another checkpoint.')
    return state


class _RestoreBeforeBatch:
    """Wraps a dataloader iterator: puts back ``state`` just before batch number ``index`` is drawn."""

    def __init__(self, iterator: Iterator, index: int, state: RandomState) -> None:
        self._iterator, self._remaining, self._state = iterator, index, state

    def __iter__(self) -> '_RestoreBeforeBatch':
        return self

    def __next__(self) -> Any:
        if self._remaining == 0:
            set_random_state(self._state)
        self._remaining -= 1
        return next(self._iterator)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Saves the random state in every checkpoint and puts it back on resume (see the module doc)."""

    priority = 'LOWEST'  # act after every other hook of the same stage, just before the data

    def __init__(self) -> None:
        self._stored_states: list[RandomState] | None = None
        self._resumed_state: RandomState | None = None
        self._state_before_val: RandomState | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Store the state (single-process runs); inside validation, the one training continues from."""
        if get_world_size() == 1:
            checkpoint['random_state'] = [self._state_before_val or get_random_state()]

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the stored states, checked; :meth:`before_train` decides whether this run resumes."""
        state = parse_random_state(checkpoint.get('random_state'))
        self._stored_states = [state] if state else None

    def before_train(self, runner) -> None:
        """On resume, pick this process's stored state (a run that only loaded weights starts anew)."""
        states, self._stored_states = self._stored_states, None
        if runner.iter == 0:
            return
        if not states or get_world_size() > 1:
            print_log('No random state to continue from (the checkpoint has none, or this run has several '
                      'processes): the resumed run draws other random numbers than the original would have.',
                      logger='current', level=logging.WARNING)
        else:
            self._resumed_state = states[0]
            loader = runner.train_loop.dataloader
            if not isinstance(runner.train_loop, IterBasedTrainLoop) and loader.num_workers and \
                    loader.persistent_workers:
                print_log('Persistent dataloader workers keep their random state across epochs and the checkpoint '
                          'cannot hold it: augmentation done in the workers is not continued exactly (set '
                          'train_dataloader.persistent_workers=False for an exact resume).', logger='current',
                          level=logging.WARNING)

    def before_train_epoch(self, runner) -> None:
        """Put the resumed state back before the first new batch is drawn."""
        if self._resumed_state is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):  # it replays loop.iter batches after this hook
            loop.dataloader_iterator = _RestoreBeforeBatch(loop.dataloader_iterator, loop.iter, self._resumed_state)
        else:
            set_random_state(self._resumed_state)
        self._resumed_state = None

    def before_val(self, runner) -> None:
        """Remember the training stream's state."""
        self._state_before_val = get_random_state()

    def after_val(self, runner) -> None:
        """Continue training from the state it had before validation."""
        set_random_state(self._state_before_val)
        self._state_before_val = None
