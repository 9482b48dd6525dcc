"""fastgpt.config: presets, config files, command-line overrides and their errors."""
import os

import pytest
import torch

from fastgpt import config
from helpers import error_of


def test_default_preset_is_the_cpu_main_job():
    cfg, explicit, preset, flags, notes = config.build([])
    if not torch.cuda.is_available():
        assert preset == "shakespeare-char-small"
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size, cfg.max_iters, cfg.dropout) == (4, 4, 128, 64, 12, 2000, 0.0)
    assert explicit == {} and flags == {} and notes == []
    cfg, explicit, preset, _, _ = config.build(["--preset", "shakespeare-char", "--max-iters=7", "--compile", "--resume"])
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
    cfg, explicit, _, _, _ = config.build([str(p), "--batch_size", "3"])
    assert (cfg.max_iters, cfg.learning_rate, cfg.batch_size) == (7, 3e-4, 3)
    cfg, _, _, _, _ = config.build(["--config", str(p), "--max_iters", "9"])
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
    (["--n_head", "5"], ["n_head (5) must divide n_embd (128)"]),
    (["--backend", "tpu"], ["backend must be one of"]),
    (["--dataset", "openwebtext"], ["nanoGPT's data/openwebtext/", "--data FILE"]),
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


# ---- nanoGPT's config files and keys

NANOGPT = os.environ.get("NANOGPT_DIR", "/work/nanogpt")  # a nanoGPT checkout, for the tests that read its own files

# A config in nanoGPT's style with every construct its config/*.py files use (written here, not copied).
NANOGPT_STYLE = '''import time

out_dir = 'out-ft'
eval_interval = 5
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare_char'
backend = 'nccl'
batch_size = 4
max_iters = 20
'''


def test_nanogpt_style_file_maps_its_keys(tmp_path):
    p = tmp_path / "nano.py"
    p.write_text(NANOGPT_STYLE)
    cfg, explicit, preset, flags, notes = config.build([str(p), "--device=cpu", "--compile=False"])
    assert preset == "nanogpt"  # nanoGPT's train.py defaults under the file's values
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.bias, cfg.beta2, cfg.gradient_accumulation_steps) == (12, 768, 1024, False, 0.95, 40)
    assert (cfg.data, cfg.tokenizer, cfg.batch_size, cfg.max_iters, cfg.out_dir) == ("shakespeare", "char", 4, 20, "out-ft")
    assert (cfg.backend, cfg.device, cfg.compile, cfg.wandb_project, cfg.wandb_run_name) == ("auto", "cpu", False, "shakespeare", "run")
    text = "\n".join(notes)
    assert "backend='nccl' is nanoGPT's DDP backend" in text and "wandb_run_name is not a literal" in text
    assert "dataset='shakespeare_char' -> data='shakespeare', tokenizer='char'" in text
    assert "--resume" not in text and flags == {}
    # a preset named on the command line wins over nanoGPT's defaults; init_from='resume' is --resume
    cfg, _, preset, flags, _ = config.build([str(p), "--preset", "shakespeare-char-small", "--init_from", "resume"])
    assert preset == "shakespeare-char-small" and cfg.n_layer == 4 and flags == {"resume": True} and cfg.init_from == "scratch"


def test_non_literal_values_other_than_names_are_refused(tmp_path):
    p = tmp_path / "nano.py"
    p.write_text("import time\nmax_iters = int(time.time())\n")
    with pytest.raises(config.ConfigError, match=r"nano.py:2: the value of 'max_iters' must be a literal"):
        config.build([str(p)])


def test_checkpoint_config_from_nanogpt_is_mapped():
    """The `config` dict nanoGPT's train.py saves (its globals): DDP backend, machine settings and
    dataset mapped, never taken for fastgpt's op backend or device."""
    saved = {"out_dir": "out-shakespeare-char", "eval_interval": 250, "log_interval": 10, "eval_iters": 200, "eval_only": False,
             "always_save_checkpoint": False, "init_from": "scratch", "wandb_log": False, "wandb_project": "shakespeare-char",
             "wandb_run_name": "mini-gpt", "dataset": "shakespeare_char", "gradient_accumulation_steps": 1, "batch_size": 64,
             "block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2, "bias": False, "learning_rate": 1e-3,
             "max_iters": 5000, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0, "decay_lr": True,
             "warmup_iters": 100, "lr_decay_iters": 5000, "min_lr": 1e-4, "backend": "nccl", "device": "cuda", "dtype": "bfloat16",
             "compile": True}
    settings = config.saved_settings({"model": {}, "model_args": {}, "config": saved})
    assert settings["tokenizer"] == "char"  # nanoGPT's data/shakespeare_char is not fastgpt's corpus: only its tokenizer carries over
    for key in ("backend", "device", "dtype", "compile", "dataset", "init_from", "data"):
        assert key not in settings, key
    cfg = config.from_dict({**config.as_dict(config.TrainConfig()), **settings}).validate()
    assert (cfg.n_layer, cfg.batch_size, cfg.backend, cfg.device) == (6, 64, "auto", "auto")
    fastgpt_saved = {"config": {"backend": "reference", "device": "cpu"}, "format": "fastgpt-1"}
    assert config.saved_settings(fastgpt_saved) == {"backend": "reference", "device": "cpu"}


@pytest.mark.skipif(not os.path.isdir(os.path.join(NANOGPT, "config")), reason="needs a nanoGPT checkout (NANOGPT_DIR)")
@pytest.mark.parametrize("name", ["train_shakespeare_char.py", "finetune_shakespeare.py", "train_gpt2.py", "eval_gpt2.py"])
def test_nanogpts_own_config_files_load(name):
    cfg, explicit, preset, flags, notes = config.build([os.path.join(NANOGPT, "config", name), "--device=cpu", "--compile=False"])
    assert preset == "nanogpt" and cfg.device == "cpu"
    if name == "train_shakespeare_char.py":
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout, cfg.tokenizer) == (6, 6, 384, 256, 0.2, "char")
    if name == "finetune_shakespeare.py":
        assert (cfg.init_from, cfg.tokenizer, cfg.decay_lr, cfg.learning_rate) == ("gpt2-xl", "gpt2", False, 3e-5)
        assert any("wandb_run_name is not a literal" in n for n in notes)
    if name == "train_gpt2.py":
        assert cfg.wandb_log and (cfg.n_layer, cfg.block_size, cfg.gradient_accumulation_steps) == (12, 1024, 40)
        assert any("OpenWebText" in n for n in notes)
    if name == "eval_gpt2.py":
        assert cfg.eval_only and cfg.init_from == "gpt2"
