"""An ONNX file given to the project runs only if its graph is the one the config traces to: hand-made and
changed files are refused with one line before ONNX Runtime sees them; a file of the right graph is accepted
whatever its weight values (they are data)."""
import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import backbones  # noqa: F401  registers ConvNeXt
from backbones.deploy import onnx_file
from backbones.deploy.export import METADATA_KEY, ExportInfo, build_graph, export_graph
from backbones.deploy.onnx_file import load_exported, open_exported, read_info
from backbones.errors import CheckpointError

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
    with pytest.raises(CheckpointError, match='more than an ONNX file can hold'):
        read_info(str(exported))


def test_an_export_of_another_config_is_refused(exported) -> None:
    with pytest.raises(CheckpointError, match='upernet export, and the config builds a mask_rcnn'):
        open_exported(str(exported), model_cfg(DET_CONFIG))
    other = model_cfg(SEG_CONFIG)
    other.decode_head.channels = 32
    with pytest.raises(CheckpointError, match='not the graph tools/export.py writes for this config'):
        open_exported(str(exported), other)
