"""Loads mutated checkpoints one after another, for tests/test_checkpoints/test_fuzz.py (run as a subprocess).

    python -m tests.test_backbones.test_checkpoints.fuzz_worker SEED_DIR FIRST COUNT REPORT

For case numbers FIRST to FIRST+COUNT-1 it writes ``<case> start`` before loading, then ``<case> data`` or
``<case> refused`` after, to REPORT (flushed, so that a crash shows which case it was); any other exception
is written as ``<case> BAD <type>: <message>``.
"""
import random
import re
import struct
import sys
import zipfile
from pathlib import Path

import backbones  # noqa: F401  (the patches: mmengine's loaders are ours)
from backbones.checkpoints import CheckpointError, read_checkpoint_file

OPCODES = b'(.0124FIJKLMNPQRSTUVXabcdeghijlopqrstu}])\x80\x81\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92' \
          b'\x93\x94\x95\x96'


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, truncation, an opcode swap or a changed length field in ``data``."""
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        positions = [i for i, byte in enumerate(data) if byte in OPCODES] or [0]
        data[rng.choice(positions)] = rng.choice(OPCODES)
    else:
        positions = [m.start() + 1 for m in re.finditer(rb'[XBT]', bytes(data)) if m.start() + 5 <= len(data)] or [0]
        position = rng.choice(positions)
        length = rng.choice([0, 1, 255, 2**31 - 1, 2**32 - 1, rng.randrange(2**16)])
        data[position:position + 4] = struct.pack('<I', length)
    return bytes(data)


def mutate(path: Path, rng: random.Random, out: Path) -> Path:
    """A mutation of the file, or for a torch zip archive often of its data.pkl (re-zipped with valid CRCs)."""
    data = path.read_bytes()
    if data.startswith(b'PK') and rng.random() < 0.7:
        with zipfile.ZipFile(path) as archive:
            records = {info.filename: archive.read(info) for info in archive.infolist()}
        name = next(n for n in records if n.endswith('data.pkl'))
        records[name] = mutate_bytes(records[name], rng)
        with zipfile.ZipFile(out, 'w') as archive:
            for record, content in records.items():
                archive.writestr(record, content)
    else:
        out.write_bytes(mutate_bytes(data, rng))
    return out


def main() -> None:
    seed_dir, first, count, report = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    seeds = sorted(seed_dir.iterdir())
    with report.open('a') as log:
        for case in range(first, first + count):
            rng = random.Random(case)
            seed = seeds[case % len(seeds)]
            target = mutate(seed, rng, seed_dir.parent / f'case{seed.suffix}')
            log.write(f'{case} start\n')
            log.flush()
            try:
                read_checkpoint_file(target)
                outcome = 'data'
            except CheckpointError:
                outcome = 'refused'
            except Exception as error:  # noqa: BLE001  (what the test looks for)
                outcome = f'BAD {type(error).__name__}: {str(error)[:200]}'
            log.write(f'{case} {outcome}\n')
            log.flush()


if __name__ == '__main__':
    main()
