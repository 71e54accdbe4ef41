"""A pickle interpreter that can only build data.

Python's unpickler (and torch's ``weights_only`` unpickler, which allow-lists globals) imports the
classes and functions a file names, calls them, and lets the file's BUILD opcode set attributes of the
objects they return. Every allow-listed name is then attack surface: a file can shadow a container's
methods, forge numpy dtypes whose elements are read as pointers, or release a buffer that a tensor
still uses. This interpreter executes the pickle opcodes itself and has no way to do any of that:

* GLOBAL, STACK_GLOBAL and INST give a :class:`Global`, an inert name. Nothing is imported.
* REDUCE, NEWOBJ, NEWOBJ_EX, OBJ and INST of a name in ``calls`` run *our* builder of that name
  (given the file's arguments as data, it returns data); of any other name they give a
  :class:`Record` holding the name and the arguments. Nothing the file names is ever called.
* BUILD sets the ``state`` of a :class:`Record` (once), finishes a numpy array from its bytes
  (:func:`numpy_calls`), or is dropped for a plain dict made by ``OrderedDict()`` (whose pickled
  state is its attribute dict); it never sets an attribute of any object.
* The values it makes are ``None``, bools, ints, floats, strings, bytes, lists, tuples, plain dicts,
  what the builders make (tensors, numpy arrays of plain numeric dtypes) and the two inert types.
  Sets and other objects stay records; dict keys must be strings, bytes, bools, ``None`` or ints
  below 2**61 - 1, whose hashes cannot be made to collide, so building a dict is linear.
* Limits (:class:`PickleLimits`) are checked before anything is allocated: the length of every
  string, bytes and integer against the bytes left in the pickle, the number of objects made, the
  nesting depth, and at the end the size of the result as a tree (shared containers counted at
  every place they appear), so that code walking the result as a tree cannot blow up. A container
  that contains itself is refused.

Malformed or refused input raises :class:`PickleDataError`, a ``ValueError`` with one line.
"""
import _compat_pickle
import codecs
import itertools
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Opcodes of pickle protocols 0 to 5 (pickletools documents each).
MARK, STOP, POP, POP_MARK, DUP = b'(', b'.', b'0', b'1', b'2'
FLOAT, INT, BININT, BININT1, LONG, BININT2, NONE = b'F', b'I', b'J', b'K', b'L', b'M', b'N'
PERSID, BINPERSID, REDUCE, STRING, BINSTRING, SHORT_BINSTRING = b'P', b'Q', b'R', b'S', b'T', b'U'
UNICODE, BINUNICODE, APPEND, BUILD, GLOBAL, DICT, EMPTY_DICT = b'V', b'X', b'a', b'b', b'c', b'd', b'}'
APPENDS, GET, BINGET, INST, LONG_BINGET, LIST, EMPTY_LIST = b'e', b'g', b'h', b'i', b'j', b'l', b']'
OBJ, PUT, BINPUT, LONG_BINPUT, SETITEM, TUPLE, EMPTY_TUPLE = b'o', b'p', b'q', b'r', b's', b't', b')'
SETITEMS, BINFLOAT = b'u', b'G'
PROTO, NEWOBJ, EXT1, EXT2, EXT4 = b'\x80', b'\x81', b'\x82', b'\x83', b'\x84'
TUPLE1, TUPLE2, TUPLE3, NEWTRUE, NEWFALSE, LONG1, LONG4 = b'\x85', b'\x86', b'\x87', b'\x88', b'\x89', b'\x8a', b'\x8b'
BINBYTES, SHORT_BINBYTES = b'B', b'C'
SHORT_BINUNICODE, BINUNICODE8, BINBYTES8, EMPTY_SET = b'\x8c', b'\x8d', b'\x8e', b'\x8f'
ADDITEMS, FROZENSET, NEWOBJ_EX, STACK_GLOBAL, MEMOIZE, FRAME = b'\x90', b'\x91', b'\x92', b'\x93', b'\x94', b'\x95'
BYTEARRAY8, NEXT_BUFFER, READONLY_BUFFER = b'\x96', b'\x97', b'\x98'

MAX_KEY_INT = 2**61 - 1  # CPython hashes a smaller int to itself (-1 and -2 alike): no collisions to exploit
NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*')
END_OF_LINE = re.compile(b'\n')
MAX_LINE_BYTES = 1 << 20  # a text opcode's argument (protocol 0's INT, STRING, GLOBAL...) up to its newline
UNSET = object()


class PickleDataError(ValueError):
    """A pickle that is malformed, over a limit, or asks for what this interpreter does not do."""


@dataclass(frozen=True)
class PickleLimits:
    """Caps on what one pickle may make.

    Attributes:
        max_objects: Values made (each opcode makes at most one), and memo entries.
        max_depth: Nesting of containers (and of MARKs while reading).
        max_tree_size: Size of the result counted as a tree: a container shared by several others counts
            at each place, so code that walks the result without remembering what it saw stays bounded.
        max_int_bytes: Size of one integer in bytes (LONG1/LONG4, text integers by their digits).
    """
    max_objects: int = 20_000_000
    max_depth: int = 100
    max_tree_size: int = 100_000_000
    max_int_bytes: int = 1024


class Global:
    """A name a pickle refers to (a class or function), never imported."""
    __slots__ = ('name',)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f'Global({self.name})'


class Record:
    """What a pickle asked a name it does not know to build: the name and the arguments, as data.

    Attributes:
        name: The dotted name of the class or function.
        args: The call's arguments (a tuple; for NEWOBJ_EX ``(args, kwargs)``).
        state: What BUILD gave it (the object's attribute dict, usually), or None.
        items: What APPENDS/ADDITEMS (values) and SETITEMS (``(key, value)`` pairs) added, in order.
    """
    __slots__ = ('name', 'args', 'state', 'items')

    def __init__(self, name: str, args: tuple) -> None:
        self.name, self.args, self.state, self.items = name, args, UNSET, []

    def __repr__(self) -> str:
        return f'Record({self.name})'

    def get_state(self) -> Any:
        """The BUILD state, or None when the pickle gave none."""
        return None if self.state is UNSET else self.state


class PendingArray:
    """A numpy array between ``_reconstruct`` and the BUILD that gives its data (used nowhere in between)."""
    __slots__ = ('array',)

    def __init__(self) -> None:
        self.array = None


Builder = Callable[[tuple], Any]


def _plain_dtype(value: Any) -> np.dtype:
    """The numpy dtype a pickled ``numpy.dtype(code, False, True)`` record describes, if plain numbers."""
    if not (isinstance(value, Record) and value.name == 'numpy.dtype' and isinstance(value.args, tuple)
            and len(value.args) == 3 and isinstance(value.args[0], str)):
        raise PickleDataError('a numpy array or scalar whose dtype is not a numpy.dtype of a type code')
    code = value.args[0]
    if not re.fullmatch(r'(b1|[iu][1248]|f[248]|c(8|16))', code):
        raise PickleDataError(f'numpy dtype {code!r} is not plain numbers')
    dtype = np.dtype(code)
    state = value.get_state()
    if state is not None:  # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ('<', '>', '|', '=')
                and state[2:5] == (None, None, None) and state[5:7] == (-1, -1) and state[7] in (0, None)):
            raise PickleDataError(f'numpy dtype {code!r} with a state that is not that of plain numbers')
        if state[1] in '<>':
            dtype = dtype.newbyteorder(state[1])
    if dtype.kind not in 'biufc' or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise PickleDataError(f'numpy dtype {code!r} is not plain numbers')
    return dtype


def describe(value: Any, limit: int = 80) -> str:
    """A short description of ``value`` for an error, made without walking into it.

    A value from a file can nest deeper than Python's recursion limit (TUPLE1 needs no MARK) or hold a
    container shared at 2**64 places, so ``str`` of it raises RecursionError or never ends; here a list,
    tuple or dict shows its first items one level down, each nested container by its type and length.

    Args:
        value: What the file gave.
        limit: The most characters returned.
    """
    def short(item: Any) -> str:
        if type(item) in (list, tuple, dict):
            return f'<{type(item).__name__} of {len(item)}>'
        if type(item) in (str, bytes):
            return repr(item[:limit])
        if item is None or type(item) in (bool, int, float) or isinstance(item, (Global, Record)):
            return repr(item)[:limit]
        return f'<{type(item).__name__}>'
    if type(value) not in (list, tuple, dict):
        return short(value)[:limit]
    if type(value) is dict:
        shown = [f'{short(key)}: {short(item)}' for key, item in itertools.islice(value.items(), 8)]
    else:
        shown = [short(item) for item in value[:8]]
    brackets = {list: '[]', tuple: '()', dict: '{}'}[type(value)]
    text = f'{brackets[0]}{", ".join(shown)}{", ..." if len(value) > 8 else ""}{brackets[1]}'
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and len(shape) <= 32
            and all(type(size) is int and 0 <= size < 2**62 for size in shape)):
        raise PickleDataError(f'a shape that is not a tuple of at most 32 sizes: {describe(shape, 60)}')
    return shape


def _build_array(pending: PendingArray, state: Any) -> np.ndarray:
    """The array that numpy's ``ndarray.__setstate__`` would make, from checked plain data only."""
    if pending.array is not None:
        raise PickleDataError('a numpy array given its data twice (BUILD)')
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[3], bool)
            and isinstance(state[4], bytes)):
        raise PickleDataError('a numpy array whose state is not (1, shape, dtype, fortran, bytes)')
    shape, dtype = _check_shape(state[1]), _plain_dtype(state[2])
    if math.prod(shape) * dtype.itemsize != len(state[4]):
        raise PickleDataError(f'a numpy array of shape {shape} {dtype} with {len(state[4])} bytes of data')
    array = np.frombuffer(state[4], dtype=dtype).reshape(shape, order='F' if state[3] else 'C').copy()
    pending.array = array
    return array


def numpy_calls() -> dict[str, Builder]:
    """Builders for what numpy arrays, scalars and dtypes pickle as (numpy 1 and 2 module names)."""

    def reconstruct(args: tuple) -> PendingArray:
        if not (len(args) == 3 and isinstance(args[0], Global) and args[0].name == 'numpy.ndarray'):
            raise PickleDataError('numpy _reconstruct of something other than a numpy.ndarray')
        return PendingArray()

    def scalar(args: tuple) -> np.generic:
        if len(args) != 2 or not isinstance(args[1], bytes):
            raise PickleDataError('a numpy scalar that is not (dtype, bytes)')
        dtype = _plain_dtype(args[0])
        if len(args[1]) != dtype.itemsize:
            raise PickleDataError(f'a numpy {dtype} scalar of {len(args[1])} bytes')
        return np.frombuffer(args[1], dtype=dtype)[0].copy()

    def encode(args: tuple) -> bytes:  # how protocol 2 pickles bytes: _codecs.encode(text, 'latin1')
        if not (len(args) == 2 and isinstance(args[0], str) and args[1] in ('latin1', 'latin-1')):
            raise PickleDataError('_codecs.encode other than of text to latin1 bytes')
        try:
            return args[0].encode('latin1')
        except UnicodeEncodeError:
            raise PickleDataError('_codecs.encode of text that is not latin1') from None

    calls = {'_codecs.encode': encode}
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        calls[f'{module}._reconstruct'] = reconstruct
        calls[f'{module}.scalar'] = scalar
    return calls


def ordered_dict(args: tuple) -> dict:
    """``collections.OrderedDict()`` (or of a list of pairs) as a plain dict."""
    if args == ():
        return {}
    if len(args) == 1 and isinstance(args[0], list) and all(isinstance(p, (tuple, list)) and len(p) == 2
                                                              for p in args[0]):
        result: dict = {}
        for key, value in args[0]:
            result[_check_key(key)] = value
        return result
    raise PickleDataError('OrderedDict called with arguments other than () or a list of pairs')


def _check_key(key: Any) -> Any:
    if isinstance(key, (str, bytes)) or key is None or type(key) is bool:
        return key
    if type(key) is int and -MAX_KEY_INT < key < MAX_KEY_INT:
        return key
    raise PickleDataError(f'a dict key of type {type(key).__name__} (keys must be strings, bytes, bools, None or '
                          'ints below 2**61)')


class DataUnpickler:
    """Runs one pickle of ``data`` from ``start`` to its STOP (see the module docstring).

    Args:
        data: The bytes holding the pickle.
        calls: Our builders by dotted name: ``builder(args)`` returns the data that name's call stands for.
        persistent_load: Turns a persistent id (BINPERSID, already data) into data; None refuses them.
        limits: The caps.
        start: Where the pickle starts in ``data``.
    """

    def __init__(self, data: bytes | memoryview, calls: dict[str, Builder],
                 persistent_load: Callable[[Any], Any] | None = None, limits: PickleLimits = PickleLimits(),
                 start: int = 0) -> None:
        self.data, self.pos, self.calls, self.persistent_load, self.limits = memoryview(data), start, calls, \
            persistent_load, limits
        self.objects = 0

    # ---- reading the opcode stream ----
    def _read(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise PickleDataError(f'truncated: {size} bytes asked for at byte {self.pos} of {len(self.data)}')
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

    def _line(self) -> str:
        # Searched in place (``re`` reads the buffer without a copy), so a line costs the bytes it spans.
        end = END_OF_LINE.search(self.data, self.pos, min(self.pos + MAX_LINE_BYTES, len(self.data)))
        if end is None:
            raise PickleDataError(f'a text argument without an end of line in 1 MiB at byte {self.pos}')
        text = bytes(self._read(end.start() - self.pos + 1)[:-1])
        try:
            return text.decode('ascii')
        except UnicodeDecodeError:
            raise PickleDataError(f'non-ASCII text argument at byte {self.pos}') from None

    def _made(self, value: Any) -> Any:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise PickleDataError(f'more than {self.limits.max_objects} objects (limit max_objects)')
        return value

    def _int_text(self, text: str) -> int:
        text = text.rstrip('L')
        if len(text) > self.limits.max_int_bytes * 2.5 or not re.fullmatch(r'[+-]?\d+', text):
            raise PickleDataError(f'an integer that is not one or too long: {text[:40]!r}')
        return int(text)

    def _long(self, size: int) -> int:
        if size > self.limits.max_int_bytes:
            raise PickleDataError(f'an integer of {size} bytes (limit max_int_bytes {self.limits.max_int_bytes})')
        return int.from_bytes(self._read(size), 'little', signed=True)

    def _text(self, size: int) -> str:
        try:
            return str(self._read(size), 'utf-8', 'surrogatepass')
        except UnicodeDecodeError:
            raise PickleDataError(f'a string that is not UTF-8 at byte {self.pos}') from None

    def _name(self, module: Any, name: Any) -> Global:
        if not (isinstance(module, str) and isinstance(name, str) and len(module) + len(name) < 256
                and NAME.fullmatch(module) and NAME.fullmatch(name)):
            raise PickleDataError(f'a global that is not a dotted name: {describe(module, 40)} {describe(name, 40)}')
        # Protocols 0-2 write Python 2 names (__builtin__.getattr): use the Python 3 ones, as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return self._made(Global(f'{module}.{name}'))

    # ---- building ----
    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, Global):
            raise PickleDataError(f'a call of a {type(func).__name__}, not of a global name')
        if not isinstance(args, tuple):
            raise PickleDataError(f'a call of {func.name} with {type(args).__name__} arguments, not a tuple')
        builder = self.calls.get(func.name)
        return self._made(builder(args) if builder else Record(func.name, args))

    def _build(self, target: Any, state: Any) -> Any:
        if isinstance(target, PendingArray):
            return _build_array(target, state)
        if isinstance(target, Record):
            if target.state is not UNSET:
                raise PickleDataError(f'a {target.name} record given its state twice (BUILD)')
            target.state = state
            return target
        if isinstance(target, np.ndarray):
            raise PickleDataError('a numpy array given its data twice (BUILD)')
        if type(target) is dict and (state is None or type(state) is dict):
            return target  # an OrderedDict's attribute dict (e.g. a state dict's _metadata): dropped
        raise PickleDataError(f'BUILD of a {type(target).__name__} with {type(state).__name__} state')

    @staticmethod
    def _element(value: Any) -> Any:
        """A value going into a container: a numpy array in the making may not."""
        if isinstance(value, PendingArray):
            if value.array is None:
                raise PickleDataError('a numpy array used before its data was given')
            return value.array
        return value

    def _set_items(self, target: Any, items: list) -> None:
        if len(items) % 2:
            raise PickleDataError('SETITEMS with an odd number of items')
        pairs = [(items[i], self._element(items[i + 1])) for i in range(0, len(items), 2)]
        if type(target) is dict:
            for key, value in pairs:
                target[_check_key(key)] = value
        elif isinstance(target, Record):
            target.items.extend(pairs)
        else:
            raise PickleDataError(f'SETITEM on a {type(target).__name__}')

    def _append(self, target: Any, items: list) -> None:
        items = [self._element(item) for item in items]
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, Record):
            target.items.extend(items)
        else:
            raise PickleDataError(f'APPEND to a {type(target).__name__}')

    def load(self) -> Any:
        """Run the pickle to its STOP and return its value, checked (see :func:`check_tree`)."""
        stack: list = []
        marks: list[list] = []
        memo: dict[int, Any] = {}

        def pop_mark() -> list:
            nonlocal stack
            if not marks:
                raise PickleDataError('an opcode that needs a MARK without one')
            items, stack = stack, marks.pop()
            return items

        def pop() -> Any:
            if not stack:
                raise PickleDataError(f'an opcode at byte {self.pos - 1} with nothing on the stack')
            return stack.pop()

        def top() -> Any:
            if not stack:
                raise PickleDataError(f'an opcode at byte {self.pos - 1} with nothing on the stack')
            return stack[-1]

        def push(value: Any) -> None:
            stack.append(self._made(value))

        def put(index: int) -> None:
            if len(memo) >= self.limits.max_objects:
                raise PickleDataError(f'more than {self.limits.max_objects} memo entries (limit max_objects)')
            memo[index] = top()

        def get(index: int) -> None:
            if index not in memo:
                raise PickleDataError(f'memo entry {index} used before it was set')
            value = memo[index]
            stack.append(value.array if isinstance(value, PendingArray) and value.array is not None else value)

        while True:
            opcode = bytes(self._read(1))
            if opcode == STOP:
                break
            if opcode == PROTO:
                if self._unpack('<B') > 5:
                    raise PickleDataError('pickle protocol above 5')
            elif opcode == FRAME:
                self._unpack('<Q')
            elif opcode == MARK:
                if len(marks) >= self.limits.max_depth:
                    raise PickleDataError(f'MARKs nested deeper than {self.limits.max_depth} (limit max_depth)')
                marks.append(stack)
                stack = []
            elif opcode == POP:
                pop()
            elif opcode == POP_MARK:
                pop_mark()
            elif opcode == DUP:
                stack.append(top())
            elif opcode == NONE:
                stack.append(None)
            elif opcode in (NEWTRUE, NEWFALSE):
                stack.append(opcode == NEWTRUE)
            elif opcode == INT:
                text = self._line()
                push(text == '01' if text in ('00', '01') else self._int_text(text))
            elif opcode == LONG:
                push(self._int_text(self._line()))
            elif opcode == BININT:
                push(self._unpack('<i'))
            elif opcode == BININT1:
                push(self._unpack('<B'))
            elif opcode == BININT2:
                push(self._unpack('<H'))
            elif opcode == LONG1:
                push(self._long(self._unpack('<B')))
            elif opcode == LONG4:
                push(self._long(self._unpack('<i')))
            elif opcode == FLOAT:
                try:
                    push(float(self._line()))
                except ValueError:
                    raise PickleDataError(f'a FLOAT that is not a number at byte {self.pos}') from None
            elif opcode == BINFLOAT:
                push(self._unpack('>d'))
            elif opcode in (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8):
                size = self._unpack({BINUNICODE: '<I', SHORT_BINUNICODE: '<B', BINUNICODE8: '<Q'}[opcode])
                push(self._text(size))
            elif opcode == UNICODE:
                text = self._line()
                try:
                    push(text.encode('latin1').decode('raw-unicode-escape'))
                except UnicodeDecodeError:
                    raise PickleDataError(f'a UNICODE argument that does not decode at byte {self.pos}') from None
            elif opcode in (BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8):
                size = self._unpack({BINBYTES: '<I', SHORT_BINBYTES: '<B', BINBYTES8: '<Q', BYTEARRAY8: '<Q'}[opcode])
                push(bytes(self._read(size)))
            elif opcode in (BINSTRING, SHORT_BINSTRING):
                size = self._unpack('<i' if opcode == BINSTRING else '<B')
                push(bytes(self._read(size)).decode('latin1'))  # a Python 2 str
            elif opcode == STRING:
                text = self._line()
                if len(text) < 2 or text[0] != text[-1] or text[0] not in '"\'':
                    raise PickleDataError(f'a STRING argument that is not quoted at byte {self.pos}')
                try:
                    push(codecs.escape_decode(text[1:-1].encode('ascii'))[0].decode('latin1'))
                except ValueError:
                    raise PickleDataError(f'a STRING argument that does not decode at byte {self.pos}') from None
            elif opcode == EMPTY_LIST:
                push([])
            elif opcode == EMPTY_DICT:
                push({})
            elif opcode == EMPTY_TUPLE:
                push(())
            elif opcode == EMPTY_SET:
                push(Record('builtins.set', ()))
            elif opcode == LIST:
                push([self._element(item) for item in pop_mark()])
            elif opcode == TUPLE:
                push(tuple(self._element(item) for item in pop_mark()))
            elif opcode in (TUPLE1, TUPLE2, TUPLE3):
                count = {TUPLE1: 1, TUPLE2: 2, TUPLE3: 3}[opcode]
                if len(stack) < count:
                    raise PickleDataError(f'TUPLE{count} with {len(stack)} items on the stack')
                items = [self._element(item) for item in stack[-count:]]
                del stack[-count:]
                push(tuple(items))
            elif opcode == DICT:
                target: dict = {}
                self._set_items(target, pop_mark())
                push(target)
            elif opcode == FROZENSET:
                push(Record('builtins.frozenset', (list(map(self._element, pop_mark())),)))
            elif opcode == APPEND:
                value = pop()
                self._append(top(), [value])
            elif opcode in (APPENDS, ADDITEMS):
                items = pop_mark()
                self._append(top(), items)
            elif opcode == SETITEM:
                value = pop()
                key = pop()
                self._set_items(top(), [key, value])
            elif opcode == SETITEMS:
                items = pop_mark()
                self._set_items(top(), items)
            elif opcode == GLOBAL:
                module = self._line()
                stack.append(self._name(module, self._line()))
            elif opcode == STACK_GLOBAL:
                name = pop()
                stack.append(self._name(pop(), name))
            elif opcode == REDUCE:
                args = pop()
                stack.append(self._call(pop(), args))
            elif opcode == NEWOBJ:
                args = pop()
                cls = pop()
                stack.append(self._call(cls, args) if isinstance(cls, Global) and cls.name == 'collections.OrderedDict'
                             else self._record(cls, args))
            elif opcode == NEWOBJ_EX:
                kwargs = pop()
                args = pop()
                stack.append(self._record(pop(), (args, kwargs)))
            elif opcode == OBJ:
                items = pop_mark()
                if not items:
                    raise PickleDataError('OBJ without a class')
                stack.append(self._record(items[0], tuple(items[1:])))
            elif opcode == INST:
                module = self._line()
                cls = self._name(module, self._line())
                args = tuple(pop_mark())
                stack.append(self._record(cls, args))
            elif opcode == BUILD:
                state = self._element(pop())
                stack.append(self._build(pop(), state))
            elif opcode == BINPERSID:
                if self.persistent_load is None:
                    raise PickleDataError('a persistent id in a pickle that may have none')
                stack.append(self.persistent_load(pop()))
            elif opcode == PERSID:
                raise PickleDataError('a text persistent id (PERSID), which torch never writes')
            elif opcode in (PUT, BINPUT, LONG_BINPUT):
                put(self._int_text(self._line()) if opcode == PUT else self._unpack('<B' if opcode == BINPUT else '<I'))
            elif opcode == MEMOIZE:
                put(len(memo))
            elif opcode in (GET, BINGET, LONG_BINGET):
                get(self._int_text(self._line()) if opcode == GET else self._unpack('<B' if opcode == BINGET else '<I'))
            elif opcode in (EXT1, EXT2, EXT4):
                raise PickleDataError('an extension-registry reference (EXT), which names code')
            elif opcode in (NEXT_BUFFER, READONLY_BUFFER):
                raise PickleDataError('an out-of-band buffer (protocol 5), which a file cannot carry')
            else:
                raise PickleDataError(f'unknown opcode {opcode!r} at byte {self.pos - 1}')
        if len(stack) != 1 or marks:
            raise PickleDataError(f'STOP with {len(stack)} values on the stack and {len(marks)} open MARKs')
        result = self._element(stack[0])
        check_tree(result, self.limits)
        return result

    def _record(self, cls: Any, args: Any) -> Record:
        if not isinstance(cls, Global):
            raise PickleDataError(f'an object of a {type(cls).__name__}, not of a global class name')
        return self._made(Record(cls.name, args))


def _children(value: Any) -> list:
    if type(value) in (list, tuple):
        return list(value)
    if type(value) is dict:
        return [*value.keys(), *value.values()]
    if isinstance(value, Record):
        state = value.get_state()
        return [value.args, state, *value.items]
    return []


def check_tree(result: Any, limits: PickleLimits) -> None:
    """Refuse a result that contains itself, nests deeper than ``limits.max_depth``, is larger than
    ``limits.max_tree_size`` as a tree, or holds a numpy array that never got its data.

    Each container is visited once (shared ones too), so this takes time linear in the pickle's size.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (tree size, depth) of finished containers
    on_path: set[int] = set()
    pending = [(result, False)]
    while pending:
        value, children_done = pending.pop()
        if isinstance(value, PendingArray):
            raise PickleDataError('a numpy array that never got its data')
        if not (type(value) in (list, tuple, dict) or isinstance(value, Record)):
            continue
        key = id(value)
        if children_done:
            size, depth = 1, 1
            for child in _children(value):
                child_size, child_depth = sizes.get(id(child), (1, 0))
                size, depth = size + child_size, max(depth, child_depth + 1)
            if size > limits.max_tree_size:
                raise PickleDataError(f'the data is larger than {limits.max_tree_size} values as a tree '
                                      '(limit max_tree_size): containers shared too often')
            if depth > limits.max_depth:
                raise PickleDataError(f'containers nested deeper than {limits.max_depth} (limit max_depth)')
            sizes[key] = (size, depth)
            on_path.discard(key)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise PickleDataError('a container that contains itself')
        on_path.add(key)
        pending.append((value, True))
        pending.extend((child, False) for child in _children(value))
