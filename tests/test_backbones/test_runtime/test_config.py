"""backbones/runtime/config.py: what a config and --cfg-options may make the tools do."""
import pytest
from mmengine.config import Config

from backbones.errors import UsageError
from backbones.runtime.config import check_hook_options, load_config

DET_CONFIG = 'configs/demo/mask_rcnn_convnext_demo.py'


def test_a_default_scope_the_project_does_not_run_is_refused_before_it_is_imported(tmp_path, monkeypatch) -> None:
    """``--cfg-options default_scope=<module>`` made check_hook_options import ``<module>.registry``."""
    package = tmp_path / 'sentinel_scope'
    package.mkdir()
    (package / '__init__.py').write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    (package / 'registry.py').write_text('HOOKS = None\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    message = ("default_scope='sentinel_scope': the configs run in mmdet, mmseg, mmengine only. Fix the config or "
               '--cfg-options.')
    with pytest.raises(UsageError) as error:
        load_config(DET_CONFIG, {'default_scope': 'sentinel_scope'})
    assert str(error.value) == message
    with pytest.raises(UsageError) as error:
        check_hook_options(Config(dict(default_scope='sentinel_scope')))
    assert str(error.value) == message
    assert not (tmp_path / 'imported').exists()


@pytest.mark.parametrize('config, scope', [(DET_CONFIG, 'mmdet'), ('configs/demo/upernet_convnext_demo.py', 'mmseg'),
                                           ('configs/pretrain/fcmae_convnextv2_atto.py', None)])
def test_the_projects_configs_keep_their_scopes(config: str, scope: str | None) -> None:
    assert load_config(config).get('default_scope') == scope
