"""Hand-built pickles inside torch zip archives: what an attacker would hand the project.

The opcodes are written one by one (``pickletools`` documents each), so that a payload can do what
Python's pickler never writes: BUILD on a container, a dtype whose state claims object fields, two
BUILDs on one memoised array.
"""
import io
import struct
import zipfile
from pathlib import Path

import torch

PROTO2 = b'\x80\x02'


def text(value: str) -> bytes:
    data = value.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def raw(value: bytes) -> bytes:
    if len(value) < 256:
        return b'C' + struct.pack('<B', len(value)) + value
    return b'B' + struct.pack('<I', len(value)) + value


def integer(value: int) -> bytes:
    return b'J' + struct.pack('<i', value)


def name(dotted: str) -> bytes:
    module, _, attribute = dotted.rpartition('.')
    return b'c' + f'{module}\n{attribute}\n'.encode()


def call(dotted: str, *args: bytes) -> bytes:
    """REDUCE of ``dotted`` with the given (already encoded) arguments."""
    return name(dotted) + b'(' + b''.join(args) + b'tR'


def tuple_of(*items: bytes) -> bytes:
    return b'(' + b''.join(items) + b't'


def dict_of(**items: bytes) -> bytes:
    return b'}(' + b''.join(text(key) + value for key, value in items.items()) + b'u'


def put(index: int) -> bytes:
    return b'q' + struct.pack('<B', index)


def get(index: int) -> bytes:
    return b'h' + struct.pack('<B', index)


def plain_dtype(code: str = 'f8') -> bytes:
    """``numpy.dtype(code, False, True)`` with the state numpy pickles for plain numbers."""
    return call('numpy.dtype', text(code), b'\x89\x88') + tuple_of(integer(3), text('<'), b'NNN', integer(-1),
                                                                     integer(-1), integer(0)) + b'b'


def forged_dtype() -> bytes:
    """A void dtype whose state claims an object field, with the object flags off (numpy's own route to
    reading the file's bytes as pointers)."""
    field = tuple_of(call('numpy.dtype', text('O8'), b'\x89\x88'), integer(0))
    return call('numpy.dtype', text('V8'), b'\x89\x88') + tuple_of(
        integer(3), text('|'), b'N', tuple_of(text('a')), dict_of(a=field), integer(8), integer(1), integer(0)) + b'b'


def array(data: bytes, dtype: bytes, shape: tuple[int, ...]) -> bytes:
    """numpy's pickle of an array: ``_reconstruct`` then BUILD with (1, shape, dtype, fortran, bytes)."""
    return (call('numpy._core.multiarray._reconstruct', name('numpy.ndarray'), tuple_of(integer(0)), raw(b'b'))
            + tuple_of(integer(1), tuple_of(*map(integer, shape)), dtype, b'\x89', raw(data)) + b'b')


def checkpoint(body: bytes) -> bytes:
    """A whole pickle: ``{'state_dict': {}, 'meta': <body>}``."""
    return PROTO2 + b'}(' + text('state_dict') + b'}' + text('meta') + body + b'u.'


def archive(pickle: bytes, records: dict[str, bytes] | None = None, compression: int = zipfile.ZIP_STORED) -> bytes:
    """A torch zip archive holding ``pickle`` as its data.pkl and ``records`` under data/."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', compression=compression) as file:
        file.writestr('archive/data.pkl', pickle)
        file.writestr('archive/byteorder', 'little')
        for key, data in (records or {}).items():
            file.writestr(f'archive/data/{key}', data)
        file.writestr('archive/version', '3\n')
    return buffer.getvalue()


def write_archive(path: Path, pickle: bytes, records: dict[str, bytes] | None = None,
                  compression: int = zipfile.ZIP_STORED) -> Path:
    """:func:`archive` written to ``path``."""
    path.write_bytes(archive(pickle, records, compression))
    return path


def torch_file(value: object, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()
