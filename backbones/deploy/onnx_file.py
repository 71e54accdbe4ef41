"""Reading an exported ONNX file so that it contributes numbers only, never a program of its own.

An ONNX file is a program: its operators can read files (external data), load operator libraries (custom
domains), allocate what a shape tensor asks for, or run subgraphs. Checking its operators one by one against
a list would be the patching that did not converge for checkpoints. Here the graph that runs is ours by
construction: :func:`open_exported` traces the same config again (random weights, the family, precision and
sample size the file states) and requires the file's graph to be that graph, node for node (operator,
attributes, constants, wiring, inputs, outputs, opsets), with every weight an inline tensor of the shape and
type the traced graph gives it. What the file can then choose is the values of its weights (and which of
its equal-shaped weights a node reads, as the exporter's de-duplication of equal weights does), which is
data. The metadata is JSON of bounded size and depth, checked field by field (:func:`read_info`), its classes,
category ids and palette by the rule of a checkpoint's (:func:`backbones.class_meta.checked_class_meta`);
every weight's data type must be a numeric type of ONNX, before anything is built.

The file is read once into memory, from a regular file only and within a cap counted while it is read
(:func:`max_file_bytes`: ``$CONVNEXT_DENSE_MAX_ONNX_MB``, at most protobuf's limit of 2 GiB), and handed to
ONNX Runtime as bytes, so ONNX Runtime opens no path of the file's choosing. A tool reads it once
(:func:`read_exported`: its classes and family) and hands that read to the model it builds from the path
(:func:`hand_over`), which verifies and runs those same bytes.
"""
from dataclasses import dataclass, fields

import numpy as np
import onnx
import torch
from mmengine.config import ConfigDict
from mmengine.registry import MODELS
from torch import nn

from ..boundary import cap_from_environment, parse_json, read_regular_file
from ..class_meta import MAX_CLASSES, MAX_NAME_CHARS, ClassMeta, checked_class_meta
from ..errors import CheckpointError
from .export import FAMILIES, FORMAT_VERSION, METADATA_KEY, ExportInfo, build_graph, graph_bytes

__all__ = ['DEFAULT_ONNX_CAP_MB', 'MAX_FILE_BYTES', 'ONNX_CAP_VARIABLE', 'ExportedFile', 'hand_over', 'load_exported',
           'max_file_bytes', 'open_exported', 'read_exported', 'read_info']

MAX_FILE_BYTES = 2 ** 31  # protobuf's own limit for one message
ONNX_CAP_VARIABLE = 'CONVNEXT_DENSE_MAX_ONNX_MB'
# protobuf's limit: the largest of our exports, the ConvNeXt-XL Cascade Mask R-CNN in fp32, is about 1.6 GB
DEFAULT_ONNX_CAP_MB = MAX_FILE_BYTES >> 20
MAX_METADATA_BYTES = 1 << 20
SHAPE_RANGE = (16, 4096)


def _fail(path: str, problem: str) -> CheckpointError:
    return CheckpointError(f'{path} {problem}: export it again with tools/export.py CONFIG CHECKPOINT --out DIR.')


def max_file_bytes() -> int:
    """The cap on an ONNX file's bytes: ``$CONVNEXT_DENSE_MAX_ONNX_MB`` MiB, else :data:`DEFAULT_ONNX_CAP_MB`;
    never above :data:`MAX_FILE_BYTES` (no ONNX file over it holds its weights inline).

    Raises:
        UsageError: The variable is set to something other than a positive number.
    """
    return min(cap_from_environment(ONNX_CAP_VARIABLE, DEFAULT_ONNX_CAP_MB), MAX_FILE_BYTES)


def _read(path: str) -> onnx.ModelProto:
    """The one read of an ONNX file: a regular file's bytes within :func:`max_file_bytes`, parsed."""
    cap = max_file_bytes()
    setting = ONNX_CAP_VARIABLE if cap < MAX_FILE_BYTES else None  # protobuf's limit cannot be raised
    try:
        data = read_regular_file(path, cap, 'an ONNX file', setting,
                                 refuse=lambda reason: CheckpointError(f'{path}: {reason}.'))
    except FileNotFoundError:
        raise CheckpointError(f'{path} does not exist: give the model.onnx that tools/export.py wrote.') from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf's DecodeError and its C implementation's errors alike
        raise _fail(path, 'is not an ONNX model (it does not parse)') from None
    return model


def _checked_info(path: str, text: str | bytes) -> tuple[ExportInfo, ClassMeta | None]:
    """An :class:`ExportInfo` from the metadata JSON, every field of the type and range it must have, and its
    class metadata checked (None for an export without classes).

    Args:
        path: The file, for the errors.
        text: The metadata (bytes where protobuf found no UTF-8 in it).
    """
    if len(text) > MAX_METADATA_BYTES:
        raise _fail(path, 'has oversized metadata')
    try:  # one line for every way it can fail, nesting deeper than Python parses included
        values = parse_json(text if isinstance(text, bytes) else text.encode('utf-8'))
    except ValueError as error:
        raise _fail(path, f'has unreadable metadata ({error})') from None
    names = {item.name for item in fields(ExportInfo)}
    if not isinstance(values, dict) or set(values) != names:
        raise _fail(path, 'has metadata of another layout (not a file of this version of tools/export.py)')

    def strings(value: object, limit: int) -> bool:
        return isinstance(value, list) and len(value) <= limit and all(
            isinstance(item, str) and len(item) <= 256 for item in value)

    shape, threshold = values['sample_shape'], values['mask_thr_binary']
    checks = {
        'version': type(values['version']) is int and values['version'] == FORMAT_VERSION,
        'family': values['family'] in FAMILIES,
        'precision': values['precision'] in ('fp32', 'fp16'),
        'sample_shape': isinstance(shape, list) and len(shape) == 2 and all(
            type(side) is int and SHAPE_RANGE[0] <= side <= SHAPE_RANGE[1] for side in shape),
        'labels': isinstance(values['labels'], bool),
        'align_corners': isinstance(values['align_corners'], bool),
        'mask_thr_binary': type(threshold) in (int, float) and 0 <= threshold <= 1,  # NaN is neither
        'inputs': strings(values['inputs'], 4),
        'outputs': strings(values['outputs'], 8),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise _fail(path, f'has metadata with unusable {", ".join(bad)}')
    meta = _class_meta(path, values['classes'], values['category_ids'], values['palette'])
    values.update(sample_shape=tuple(shape), inputs=tuple(values['inputs']), outputs=tuple(values['outputs']),
                  classes=(), category_ids=(), palette=())
    if meta is not None:
        values.update(classes=meta.classes, category_ids=meta.category_ids or (), palette=meta.palette or ())
    return ExportInfo(**values), meta


def _class_meta(path: str, classes: object, category_ids: object, palette: object) -> ClassMeta | None:
    """The metadata's classes, category ids and palette, checked by the rule of a checkpoint's
    (:func:`~backbones.class_meta.checked_class_meta`); an empty list is none, and an export without
    classes (``[]``) carries none of the three."""
    if classes == []:
        return None

    def fail(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f'{path}: its metadata {key} {problem}. An export carries 1 to {MAX_CLASSES} class '
                               f'names of 1 to {MAX_NAME_CHARS} printable characters, and per class one (r, g, b) of '
                               '0-255 and one unique int id: export it again with tools/export.py CONFIG CHECKPOINT '
                               '--out DIR.')

    return checked_class_meta(classes, None if category_ids == [] else category_ids,
                              None if palette == [] else palette, fail)


@dataclass(frozen=True)
class ExportedFile:
    """An exported file, read and parsed once.

    Attributes:
        path: Where it was read from.
        model: The parsed graph (not yet verified: :func:`open_exported` does that).
        info: What its metadata says, checked as data.
        class_meta: Its classes, category ids and palette, checked as a checkpoint's are (with the note of a
            palette left out); None when it has no classes.
    """

    path: str
    model: onnx.ModelProto
    info: ExportInfo
    class_meta: ClassMeta | None


def read_exported(path: str) -> ExportedFile:
    """Read and parse ``path`` once, with its metadata checked as data.

    Raises:
        CheckpointError: A missing, oversized or unparsable file, one that is not a regular file, one without
            our metadata, or with a weight of a data type that is not a numeric type of ONNX.
        UsageError: ``$CONVNEXT_DENSE_MAX_ONNX_MB`` is not a positive number.
    """
    model = _read(path)
    info, class_meta = _info_of(path, model)
    for tensor in model.graph.initializer:
        if _item_size(tensor.data_type) is None:
            raise _fail(path, f'has a weight ({tensor.name[:80]!r}) of data type {tensor.data_type}, not a numeric '
                              'type of ONNX')
    return ExportedFile(path, model, info, class_meta)


def read_info(path: str) -> ExportInfo:
    """What an exported file says of itself (family, precision, classes, ...), checked as data.

    Raises:
        CheckpointError: See :func:`read_exported`.
        UsageError: ``$CONVNEXT_DENSE_MAX_ONNX_MB`` is not a positive number.
    """
    return read_exported(path).info


# Reads a tool handed to the models it builds from a path (:func:`hand_over`), taken by the first such model.
_handed_over: dict[str, ExportedFile] = {}


def hand_over(exported: ExportedFile) -> None:
    """Give the tool's read of a file to the model it builds next from that path (:func:`open_exported`), so
    that the file is read once per run and the model verifies and runs the bytes the tool read."""
    _handed_over[exported.path] = exported


def _info_of(path: str, model: onnx.ModelProto) -> tuple[ExportInfo, ClassMeta | None]:
    entries = [entry.value for entry in model.metadata_props if entry.key == METADATA_KEY]
    if len(entries) != 1:
        raise _fail(path, 'is not a model of tools/export.py (it has no convnext_dense metadata)')
    return _checked_info(path, entries[0])


def _randomized(model: nn.Module) -> nn.Module:
    """Distinct values in every floating parameter and buffer (a small random change of each), so that the
    exporter merges no two."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.add_(torch.rand(tensor.shape, generator=generator) * 1e-3)
    return model


def _item_size(data_type: int) -> int | None:
    """The bytes of one element of the ONNX data type ``data_type``; None for a value ONNX does not define or
    numpy cannot hold (``UNDEFINED``), or a type of no fixed size (``STRING``)."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype.hasobject else dtype.itemsize


def _initializer_size_ok(tensor: onnx.TensorProto) -> bool:
    """An inline tensor of a numeric type whose bytes are exactly what its dims and type take."""
    itemsize = _item_size(tensor.data_type)
    if itemsize is None or tensor.data_location != onnx.TensorProto.DEFAULT or len(tensor.external_data):
        return False
    count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    if tensor.raw_data:
        return len(tensor.raw_data) == count * itemsize
    stored = (len(tensor.float_data) + len(tensor.int32_data) + len(tensor.int64_data) + len(tensor.double_data)
              + len(tensor.uint64_data) + len(tensor.string_data))
    return stored == count


def _weights_and_nodes(path: str, model: onnx.ModelProto, check_sizes: bool) -> tuple[dict, list]:
    """The weights of a graph by name (their dims and type) and its other operators.

    The exporter merges weights of equal values into one, each other user reading it through an ``Identity``
    under the merged weight's name: such an ``Identity`` counts here as a weight of that name, so that a graph
    with merged weights compares equal to the same graph without. A weight name that is also an operator's
    output is refused (a weight must not shadow a computed value).
    """
    weights = {}
    for tensor in model.graph.initializer:
        if check_sizes and not _initializer_size_ok(tensor):
            raise _fail(path, f'has a weight ({tensor.name[:80]!r}) stored outside the file or of the wrong size')
        weights[tensor.name] = ('weight', tuple(tensor.dims), tensor.data_type)
    if len(weights) != len(model.graph.initializer):
        raise _fail(path, 'has two weights of one name')
    nodes = []
    outputs = {name for node in model.graph.node for name in node.output}
    if outputs & set(weights) or {value.name for value in model.graph.input} & set(weights):
        raise _fail(path, 'has a weight named like a computed value or an input')
    for node in model.graph.node:
        if node.op_type == 'Identity' and not node.domain and len(node.input) == 1 and node.input[0] in weights \
                and len(node.output) == 1:
            weights[node.output[0]] = weights[node.input[0]]
        else:
            nodes.append(node)
    return weights, nodes


def _compare(path: str, given: onnx.ModelProto, ours: onnx.ModelProto) -> None:
    """Require ``given`` to be the graph ``ours`` with its own weight values (module docstring)."""
    given_weights, given_nodes = _weights_and_nodes(path, given, check_sizes=True)
    our_weights, our_nodes = _weights_and_nodes(path, ours, check_sizes=False)
    if (len(given.functions) or len(given.graph.sparse_initializer) or len(given.training_info)
            or list(given.opset_import) != list(ours.opset_import) or given.ir_version != ours.ir_version
            or list(given.graph.input) != list(ours.graph.input)
            or list(given.graph.output) != list(ours.graph.output)):
        raise _fail(path, 'is not the graph tools/export.py writes for this config (inputs, outputs or opsets)')
    if len(given_nodes) != len(our_nodes):
        raise _fail(path, 'is not the graph tools/export.py writes for this config (another number of operators)')
    for index, (node, expected) in enumerate(zip(given_nodes, our_nodes)):
        # A weight is known by its dims and type: the exporter names some weights by a counter.
        node_inputs = [given_weights.get(name, name) for name in node.input]
        expected_inputs = [our_weights.get(name, name) for name in expected.input]
        if (node.op_type != expected.op_type or node.domain != expected.domain or node_inputs != expected_inputs
                or list(node.output) != list(expected.output)
                or list(node.attribute) != list(expected.attribute)):
            raise _fail(path, f'is not the graph tools/export.py writes for this config (operator {index}, '
                              f'{node.op_type[:40]!r}, differs)')


def open_exported(path: str, model_cfg: dict) -> tuple[bytes, ExportInfo]:
    """Read ``path`` (or take the read a tool handed over for it) after proving it is the export of
    ``model_cfg`` (module docstring).

    Args:
        path: A file of tools/export.py.
        model_cfg: The config's ``model`` (with the file's classes already applied to its heads).

    Returns:
        The file's bytes (for ``onnxruntime.InferenceSession``) and its :class:`ExportInfo`.

    Raises:
        CheckpointError: A file that is not that export, in one line.
    """
    exported = _handed_over.pop(path, None) or read_exported(path)
    given, info = exported.model, exported.info  # read and parsed once: what is checked is what ONNX Runtime gets
    model = MODELS.build(ConfigDict(model_cfg))
    from .export import family_of  # the family the config builds must be the file's
    family = family_of(model, 'backbone' if info.family == 'backbone' else 'model')
    if family != info.family:
        raise CheckpointError(f'{path} is a {info.family} export, and the config builds a {family}: give the config '
                              'it was exported from.')
    graph = build_graph(_randomized(model), family, info.precision, info.labels)
    reference = ExportInfo(**{**info.__dict__})
    ours = onnx.load_from_string(graph_bytes(graph, reference))
    _compare(path, given, ours)
    return given.SerializeToString(), info


def load_exported(path: str, model_cfg: dict) -> tuple['object', ExportInfo]:
    """An ONNX Runtime CPU session of a verified export (:func:`open_exported`) and its :class:`ExportInfo`."""
    import onnxruntime

    data, info = open_exported(path, model_cfg)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its notes on unused initializers are not the user's to act on
    return onnxruntime.InferenceSession(data, options, providers=['CPUExecutionProvider']), info
