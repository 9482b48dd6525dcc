"""fastgpt.config: presets, config files, command-line overrides and their errors."""
import pytest
import torch

from fastgpt import config
from helpers import error_of


def test_default_preset_is_the_cpu_main_job():
    cfg, explicit, preset, flags = config.build([])
    if not torch.cuda.is_available():
        assert preset == "shakespeare-char-small"
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size, cfg.max_iters, cfg.dropout) == (4, 4, 128, 64, 12, 2000, 0.0)
    assert explicit == {} and flags == {}
    cfg, explicit, preset, _ = config.build(["--preset", "shakespeare-char", "--max-iters=7", "--compile", "--resume"])
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.max_iters, cfg.compile) == (6, 384, 256, 7, True)


def test_every_preset_builds_a_run_and_a_model():
    from fastgpt import GPTConfig
    from fastgpt.presets import PRESETS

    for name in PRESETS:
        cfg = config.build(["--preset", name])[0]
        model = GPTConfig.from_preset(name)
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (model.n_layer, model.n_head, model.n_embd, model.block_size)


@pytest.mark.parametrize("name,body", [
    ("c.py", '"""doc"""\n# nanoGPT style\nmax_iters = 7\nlearning_rate = 3e-4\ncompile = False\n'),
    ("d.py", "{'max_iters': 7, 'learning_rate': 3e-4}"),
    ("c.toml", "max_iters = 7\nlearning_rate = 3e-4\n"),
    ("c.json", '{"max_iters": 7, "learning_rate": 0.0003}'),
])
def test_config_files(tmp_path, name, body):
    p = tmp_path / name
    p.write_text(body)
    cfg, explicit, _, _ = config.build([str(p), "--batch_size", "3"])
    assert (cfg.max_iters, cfg.learning_rate, cfg.batch_size) == (7, 3e-4, 3)
    cfg, _, _, _ = config.build(["--config", str(p), "--max_iters", "9"])
    assert cfg.max_iters == 9


def test_python_config_is_not_executed(tmp_path):
    p = tmp_path / "evil.py"
    p.write_text(f"import os\nos.remove({str(p)!r})\n")
    with pytest.raises(config.ConfigError, match="only 'key = literal' lines"):
        config.build([str(p)])
    p.write_text("max_iters = __import__('os').getpid()\n")
    with pytest.raises(config.ConfigError, match="must be a literal"):
        config.build([str(p)])
    assert p.exists()


def test_yaml_without_pyyaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_iters: 7\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(config.ConfigError, match="pip install pyyaml"):
            config.build([str(p)])
    else:
        assert config.build([str(p)])[0].max_iters == 7


@pytest.mark.parametrize("argv, pieces", [
    (["--n_layers", "3"], ["unknown config key 'n_layers'", "n_layer", "learning_rate"]),
    (["{toml}"], ["'lr'", "{toml}", "valid keys"]),
    (["--preset", "gpt5"], ["unknown preset 'gpt5'"]),
    (["--max_iters", "many"], ["--max_iters takes a int"]),
    (["--learning_rate", "0"], ["learning_rate must be > 0"]),
    (["--max_iters"], ["--max_iters needs a value"]),
    (["a.toml", "b.toml"], ["unexpected arguments"]),
    (["missing.toml"], ["config file 'missing.toml' not found"]),
])
def test_bad_settings_give_one_line(tmp_path, argv, pieces):
    toml = tmp_path / "c.toml"
    toml.write_text("lr = 1\n")
    msg = error_of([a.format(toml=toml) for a in argv])
    for piece in pieces:
        assert piece.format(toml=toml) in msg, msg
