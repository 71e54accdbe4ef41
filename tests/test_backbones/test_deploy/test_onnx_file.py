"""An ONNX file given to the project runs only if its graph is the one the config traces to: hand-made and
changed files are refused with one line before ONNX Runtime sees them; a file of the right graph is accepted
whatever its weight values (they are data)."""
import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import backbones  # noqa: F401  registers ConvNeXt
from backbones.class_meta import MAX_CLASSES, checkpoint_class_meta
from backbones.deploy import onnx_file
from backbones.deploy.export import METADATA_KEY, ExportInfo, build_graph, export_graph
from backbones.deploy.onnx_file import ONNX_CAP_VARIABLE, load_exported, open_exported, read_info
from backbones.errors import CheckpointError, UsageError
from backbones.runtime.onnx_backend import apply_onnx_classes

SEG_CONFIG = 'configs/demo/upernet_convnext_demo.py'
DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'


def model_cfg(path: str) -> dict:
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    return cfg.model


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> Path:
    """The demo UperNet exported from mmseg's own initialisation (equal weights, which the exporter merges)."""
    path = tmp_path_factory.mktemp('onnx') / 'model.onnx'
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(model_cfg(SEG_CONFIG)))
    model.init_weights()
    export_graph(build_graph(model, 'upernet', 'fp32'), ExportInfo('upernet', 'fp32', (64, 64), classes=('c',) * 5),
                 path)
    return path


def changed(source: Path, tmp_path: Path, change) -> str:
    model = onnx.load(str(source))
    change(model)
    path = tmp_path / 'changed.onnx'
    path.write_bytes(model.SerializeToString())
    return str(path)


def set_metadata(model: onnx.ModelProto, **values) -> None:
    entry = next(entry for entry in model.metadata_props if entry.key == METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), **values})


def test_an_export_runs_and_its_weight_values_are_free(exported, tmp_path) -> None:
    session, info = load_exported(str(exported), model_cfg(SEG_CONFIG))
    image = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    logits = session.run(None, {'image': image})[0]
    assert logits.shape == (1, 5, 64, 64) and info.family == 'upernet'

    def scale_weights(model: onnx.ModelProto) -> None:
        weight = next(tensor for tensor in model.graph.initializer if tensor.name.endswith('conv_seg.weight'))
        weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 3, weight.name))

    other, _ = load_exported(changed(exported, tmp_path, scale_weights), model_cfg(SEG_CONFIG))
    assert not np.allclose(other.run(None, {'image': image})[0], logits)


def _extra_node(model: onnx.ModelProto) -> None:
    last = model.graph.node[-1]
    model.graph.node.append(onnx.helper.make_node('Relu', [last.output[0]], ['extra']))


def _changed_attribute(model: onnx.ModelProto) -> None:
    conv = next(node for node in model.graph.node if node.op_type == 'Conv')
    for attribute in conv.attribute:
        if attribute.name == 'strides':
            attribute.ints[:] = [1, 1]


def _custom_domain(model: onnx.ModelProto) -> None:
    next(node for node in model.graph.node if node.op_type == 'Relu').domain = 'com.example.evil'


def _operator_named_with_a_newline(model: onnx.ModelProto) -> None:
    next(node for node in model.graph.node if node.op_type == 'Relu').op_type = 'Relu\nerror: a line of the file'


def _short_weight_named_with_a_newline(model: onnx.ModelProto) -> None:
    weight = next(tensor for tensor in model.graph.initializer if tensor.raw_data)
    weight.raw_data, weight.name = weight.raw_data[:-4], 'w\nerror: a line of the file'


def _external_weight(model: onnx.ModelProto) -> None:
    weight = model.graph.initializer[0]
    weight.ClearField('raw_data')
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key='location', value='/etc/passwd')


def _short_weight(model: onnx.ModelProto) -> None:
    weight = next(tensor for tensor in model.graph.initializer if tensor.raw_data)
    weight.raw_data = weight.raw_data[:-4]


def _huge_constant(model: onnx.ModelProto) -> None:
    node = next(node for node in model.graph.node if node.op_type == 'Constant')
    node.attribute[0].t.CopyFrom(onnx.helper.make_tensor('big', onnx.TensorProto.INT64, [1], [1 << 40]))


def _function(model: onnx.ModelProto) -> None:
    model.functions.add(name='f', domain='local')


CHANGES = {'an extra operator': (_extra_node, 'number of operators'),
           'a changed attribute': (_changed_attribute, 'differs'),
           'a custom operator domain': (_custom_domain, 'differs'),
           'an operator named with a newline': (_operator_named_with_a_newline, 'differs'),
           'a weight named with a newline': (_short_weight_named_with_a_newline, 'of the wrong size'),
           'a weight read from another file': (_external_weight, 'stored outside the file'),
           'a weight shorter than its shape': (_short_weight, 'of the wrong size'),
           'a changed constant': (_huge_constant, 'differs'),
           'a local function': (_function, 'inputs, outputs or opsets')}


@pytest.mark.parametrize('case', list(CHANGES))
def test_a_changed_graph_is_refused_before_onnx_runtime_reads_it(exported, tmp_path, case, monkeypatch) -> None:
    change, message = CHANGES[case]
    monkeypatch.setattr('onnxruntime.InferenceSession', lambda *args, **kwargs: pytest.fail('ONNX Runtime was called'))
    with pytest.raises(CheckpointError, match=message) as error:
        load_exported(changed(exported, tmp_path, change), model_cfg(SEG_CONFIG))
    assert '\n' not in str(error.value) and 'tools/export.py' in str(error.value)


BAD_METADATA = {'another family': dict(family='yolo'), 'a huge sample': dict(sample_shape=[100000, 100000]),
                'classes that are not names': dict(classes=[{'__class__': 'x'}]), 'a newer format': dict(version=2),
                'an extra key': dict(command='rm -rf /')}


@pytest.mark.parametrize('case', list(BAD_METADATA))
def test_unusable_metadata_is_one_line_before_anything_is_built(exported, tmp_path, case, monkeypatch) -> None:
    monkeypatch.setattr(onnx_file, 'build_graph', lambda *args: pytest.fail('a graph was built'))
    path = changed(exported, tmp_path, lambda model: set_metadata(model, **BAD_METADATA[case]))
    with pytest.raises(CheckpointError, match='metadata') as error:
        open_exported(path, model_cfg(SEG_CONFIG))
    assert '\n' not in str(error.value)


def test_files_that_are_not_exports_are_one_line(exported, tmp_path, monkeypatch) -> None:
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(b'\x08\x07\x12\xff' * 100)
    foreign = changed(exported, tmp_path, lambda model: model.ClearField('metadata_props'))
    for path, message in ((garbage, 'does not parse'), (foreign, 'no convnext_dense metadata'),
                          (tmp_path / 'missing.onnx', 'does not exist')):
        with pytest.raises(CheckpointError, match=message):
            read_info(str(path))
    monkeypatch.setattr(onnx_file, 'MAX_FILE_BYTES', 1000)
    with pytest.raises(CheckpointError, match='more than 1000 bytes, the cap for an ONNX file'):
        read_info(str(exported))


def test_an_export_of_another_config_is_refused(exported) -> None:
    with pytest.raises(CheckpointError, match='upernet export, and the config builds a mask_rcnn'):
        open_exported(str(exported), model_cfg(DET_CONFIG))
    other = model_cfg(SEG_CONFIG)
    other.decode_head.channels = 32
    with pytest.raises(CheckpointError, match='not the graph tools/export.py writes for this config'):
        open_exported(str(exported), other)


# ---- Hostile files (issue 30): each one line through the reader, nothing built, no traceback ----

def payload(tmp_path: Path, metadata: str | None = None, weights: tuple[onnx.TensorProto, ...] = (), **values) -> str:
    """A hand-made ONNX file: no operators, ``weights``, and the metadata of a demo UperNet export with ``values``
    changed (or the ``metadata`` text itself)."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], 'hand-made', [], [], initializer=list(weights)))
    info = dict(asdict(ExportInfo('upernet', 'fp32', (64, 64), classes=('wall', 'floor'))), **values)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info) if metadata is None else metadata
    path = tmp_path / 'hand_made.onnx'
    path.write_bytes(model.SerializeToString())
    return str(path)


def weight_of_type(data_type: int) -> onnx.TensorProto:
    return onnx.TensorProto(name='w', data_type=data_type, dims=[2], raw_data=bytes(8))


@pytest.mark.parametrize('data_type', [999, onnx.TensorProto.UNDEFINED, -3, onnx.TensorProto.STRING])
def test_a_weight_of_an_unknown_data_type_is_one_line(exported, tmp_path, data_type, monkeypatch) -> None:
    """A data type ONNX does not define (999, -3), that numpy cannot map (UNDEFINED) or without a fixed size
    (STRING): refused when the file is read, before a graph is built or ONNX Runtime sees it."""
    with pytest.raises(CheckpointError, match=f'data type {data_type}, not a numeric type of ONNX') as error:
        read_info(payload(tmp_path, weights=(weight_of_type(data_type),)))
    assert '\n' not in str(error.value)

    def retype(model: onnx.ModelProto) -> None:
        model.graph.initializer[0].data_type = data_type

    monkeypatch.setattr('onnxruntime.InferenceSession', lambda *args, **kwargs: pytest.fail('ONNX Runtime was called'))
    monkeypatch.setattr(onnx_file, 'build_graph', lambda *args: pytest.fail('a graph was built'))
    with pytest.raises(CheckpointError, match=f'data type {data_type},') as error:
        load_exported(changed(exported, tmp_path, retype), model_cfg(SEG_CONFIG))
    assert '\n' not in str(error.value)


DEEP = '[' * 100_000 + ']' * 100_000
HOSTILE_METADATA = {
    'nested 100,000 deep': (dict(metadata=DEEP), 'unreadable metadata (nested deeper than Python parses)'),
    'a field nested 100,000 deep': (dict(metadata=json.dumps(dict(asdict(ExportInfo('upernet', 'fp32', (64, 64))),
                                                                  classes='X')).replace('"X"', DEEP)),
                                    'unreadable metadata (nested deeper than Python parses)'),
    'a field nested 500 deep': (dict(classes=json.loads('[' * 500 + ']' * 500)), 'classes hold a value of type list'),
    'a version that is a bool': (dict(version=True), 'unusable version'),
    'a threshold that is NaN': (dict(mask_thr_binary=float('nan')), 'unusable mask_thr_binary'),
    'a threshold above 1': (dict(mask_thr_binary=1e300), 'unusable mask_thr_binary'),
    'classes that are a mapping': (dict(classes={'wall': 0}), 'classes are of type dict'),
    'a palette that is a string': (dict(palette='red'), 'palette is not a list'),
}


@pytest.mark.parametrize('case', list(HOSTILE_METADATA))
def test_deep_or_mistyped_metadata_is_one_line(tmp_path, case) -> None:
    values, message = HOSTILE_METADATA[case]
    with pytest.raises(CheckpointError, match=re.escape(message)) as error:
        read_info(payload(tmp_path, **values))
    assert '\n' not in str(error.value) and 'tools/export.py' in str(error.value)


BAD_CLASSES = {
    'a name with a terminal escape': dict(classes=['wall', 'floor\x1b[2J']),
    'a name with a newline': dict(classes=['wall\nerror: fake', 'floor']),
    'a name of 257 characters': dict(classes=['wall', 'f' * 257]),
    'an empty name': dict(classes=['wall', '']),
    'more classes than the cap': dict(classes=[f'c{index}' for index in range(MAX_CLASSES + 1)]),
    'a repeated category id': dict(category_ids=[3, 3]),
    'a category id beyond int64': dict(category_ids=[1, 2 ** 63]),
    'a category id that is a bool': dict(category_ids=[True, 2]),
    'one category id for two classes': dict(category_ids=[1]),
    'a colour beyond 255': dict(palette=[[0, 0, 0], [0, 256, 0]]),
    'a colour of two values': dict(palette=[[0, 0, 0], [0, 0]]),
}


@pytest.mark.parametrize('case', list(BAD_CLASSES))
def test_classes_from_onnx_metadata_pass_the_checkpoint_rule(tmp_path, case) -> None:
    """The same values in a checkpoint's meta and in an export's metadata: the same problem, in one line each."""
    values = BAD_CLASSES[case]
    dataset_meta = dict(dict(classes=['wall', 'floor']), **values)
    with pytest.raises(CheckpointError) as from_checkpoint:
        checkpoint_class_meta({'meta': {'dataset_meta': dataset_meta}}, 'model.pth')
    key, problem = re.match(r'model\.pth: its meta\.dataset_meta (\w+) (.+?)\. A checkpoint',
                            str(from_checkpoint.value)).groups()
    with pytest.raises(CheckpointError) as from_export:
        read_info(payload(tmp_path, **values))
    message = str(from_export.value)
    assert f': its metadata {key} {problem}. ' in message and '\n' not in message and 'tools/export.py' in message


def test_onnx_palettes_follow_the_checkpoint_rule_in_the_tools(tmp_path) -> None:
    """More colours than classes are cut to the classes; fewer are left out, and the tools' log line says so."""
    cut = onnx_file.read_exported(payload(tmp_path, palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    assert cut.info.palette == ((1, 2, 3), (4, 5, 6)) and cut.class_meta.note is None
    short = onnx_file.read_exported(payload(tmp_path, palette=[[1, 2, 3]], category_ids=[7, 9]))
    assert short.info.palette == () and short.info.category_ids == (7, 9)
    cfg = Config.fromfile(SEG_CONFIG)
    line = apply_onnx_classes(cfg, short)
    assert line.endswith('Note: its palette of 1 colours for 2 classes is not used.')
    assert cfg.test_dataloader.dataset.metainfo.classes == ('wall', 'floor')
    assert 'palette' not in cfg.test_dataloader.dataset.metainfo


def test_the_file_is_read_from_a_regular_file_within_its_cap(exported, tmp_path, monkeypatch) -> None:
    """A FIFO without a writer, a device or a folder is refused without blocking; the bytes are counted against
    $CONVNEXT_DENSE_MAX_ONNX_MB while read, never trusting the size the file system reports."""
    fifo = tmp_path / 'fifo.onnx'
    os.mkfifo(fifo)
    for path, message in ((fifo, 'it is not a regular file'), ('/dev/zero', 'it is not a regular file'),
                          (tmp_path, 'it is a directory, not an ONNX file')):
        with pytest.raises(CheckpointError, match=message) as error:
            read_info(str(path))
        assert '\n' not in str(error.value)
    monkeypatch.setenv(ONNX_CAP_VARIABLE, '0.001')
    with pytest.raises(CheckpointError, match=f'more than 1048 bytes, the cap for an ONNX file; raise it with '
                                              f'{ONNX_CAP_VARIABLE}'):
        read_info(str(exported))
    monkeypatch.setenv(ONNX_CAP_VARIABLE, 'lots')
    with pytest.raises(UsageError, match=ONNX_CAP_VARIABLE):
        read_info(str(exported))
    monkeypatch.setenv(ONNX_CAP_VARIABLE, str(1 << 30))  # above protobuf's limit: that limit still holds
    assert onnx_file.max_file_bytes() == onnx_file.MAX_FILE_BYTES
    monkeypatch.delenv(ONNX_CAP_VARIABLE)
    assert onnx_file.max_file_bytes() == onnx_file.DEFAULT_ONNX_CAP_MB << 20 == 2 ** 31


@pytest.mark.parametrize('case', ['deep metadata', 'a FIFO'])
def test_a_hostile_file_given_to_a_tool_is_one_error_line(tmp_path, case) -> None:
    if case == 'a FIFO':
        path, message = tmp_path / 'model.onnx', 'it is not a regular file (a device, FIFO or socket)'
        os.mkfifo(path)
    else:
        path, message = payload(tmp_path, metadata=DEEP), 'has unreadable metadata (nested deeper than Python parses)'
    result = subprocess.run([sys.executable, 'tools/test.py', SEG_CONFIG, str(path), '--backend', 'onnxruntime',
                             '--work-dir', str(tmp_path / 'work')], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(Path.cwd())))
    lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and message in lines[0]
