"""Training configuration: named presets, config files and command-line overrides.

A run's settings are one flat dict of the keys in ``TrainConfig`` (nanoGPT's train.py globals,
plus a few). They are filled in this order, later wins:

1. the preset (``--preset NAME``, or a config file's ``preset`` key; default
   ``shakespeare-char-small`` on a CPU machine, ``shakespeare-char`` with a GPU; see
   ``fastgpt.presets``),
2. a config file (``--config FILE`` or a bare ``FILE`` argument): a Python file holding a dict
   literal or nanoGPT-style ``key = value`` lines, a ``.toml``, ``.json``, or ``.yaml`` file
   (YAML needs PyYAML). Python files are parsed with ``ast``, never executed;
3. ``--key value`` / ``--key=value`` on the command line (``-`` and ``_`` both work; a bare
   ``--flag`` means true for a bool key).

An unknown key is an error that lists the valid ones.

nanoGPT's own config files run unchanged. A config file that sets a key only nanoGPT's train.py
has (``dataset``, ``wandb_*``, ``init_from``, or ``backend`` naming a DDP backend) is read the
way nanoGPT reads it: over nanoGPT's train.py defaults (the ``nanogpt`` preset) unless it or the
command line names a preset. nanoGPT's keys are mapped in one place, :func:`from_nanogpt`, which
also reads the ``config`` saved in a nanoGPT ``ckpt.pt``: ``dataset`` becomes ``data`` and
``tokenizer``, ``init_from='resume'`` becomes ``--resume``, and ``backend='nccl'`` (nanoGPT's
DDP backend, not fastgpt's op backend) is dropped with a note, as fastgpt picks nccl or gloo
itself. A value that is not a literal (``wandb_run_name = 'ft-' + str(time.time())``) is left
at its default with a note for the run's name, an error for any other key.
"""
import ast
import dataclasses
import json
import operator
import os
import typing
from dataclasses import dataclass
from typing import Optional

import torch

from fastgpt.model import GPTConfig
from fastgpt.presets import PRESETS


class ConfigError(ValueError):
    """A bad config: unknown key, bad value or unreadable file. The message names the fix."""


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out/shakespeare-char-small"
    eval_interval: int = 250
    log_interval: int = 10
    eval_iters: int = 20
    eval_only: bool = False
    always_save_checkpoint: bool = True  # False: save only when val loss improves (resume still works)
    # data
    data: str = "shakespeare"  # 'shakespeare' (the embedded corpus) or a path to a text file
    tokenizer: str = "char"  # 'char' or 'gpt2' (GPT-2 BPE through tiktoken, encoding available locally)
    data_dir: str = "data_cache"  # where the tokenized .bin memmaps and meta.json are cached
    # 'scratch', 'resume', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: local files, see
    # fastgpt.sources), a Hugging Face GPT-2 directory or a nanoGPT/fastgpt ckpt.pt to fine-tune
    init_from: str = "scratch"
    gradient_accumulation_steps: int = 1  # the total over all processes; divided by the world size
    batch_size: int = 12  # sequences per micro-step (per process)
    block_size: int = 64
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    backend: str = "auto"
    fused_loss: bool = True  # the lm_head and loss in chunks, never holding the logits (GPTConfig.fused_loss)
    # AdamW
    learning_rate: float = 1e-3
    max_iters: int = 2000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # learning-rate schedule: linear warmup, cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: Optional[int] = None  # None: max_iters
    min_lr: float = 1e-4
    # system
    device: str = "auto"  # 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...
    dtype: str = "auto"  # 'auto' (bfloat16 on a GPU that has it, float16 on older GPUs, float32 on CPU)
    compile: bool = False
    threads: int = 0  # CPU threads for torch; 0 picks from the free cores
    seed: int = 1337
    peak_flops: Optional[float] = None  # for MFU; None: a per-device estimate
    # output
    progress: bool = True  # a tqdm progress bar on a terminal (piped output: a line every log_interval); False: lines
    sample_chars: int = 300  # tokens sampled after training (0: none)
    plot: bool = True  # loss.png in out_dir
    # Weights & Biases: evaluations logged there when wandb_log is set and wandb is installed
    wandb_log: bool = False
    wandb_project: str = "fastgpt"
    wandb_run_name: str = "run"

    def validate(self):
        checks = [
            (self.tokenizer in ("char", "gpt2"), "tokenizer must be 'char' or 'gpt2'"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype must be auto, float32, bfloat16 or float16"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_iters >= 0, "max_iters must be >= 0"),
            (self.eval_interval >= 1, "eval_interval must be >= 1"),
            (self.eval_iters >= 1, "eval_iters must be >= 1"),
            (self.log_interval >= 1, "log_interval must be >= 1"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"bad config: {msg}")
        try:  # the model's own checks (n_head divides n_embd, a known backend, ...)
            GPTConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, block_size=self.block_size, bias=self.bias,
                      dropout=self.dropout, backend=self.backend)
        except ValueError as e:
            raise ConfigError(f"bad config: {str(e).replace('GPTConfig.', '')}") from None
        return self


def default_preset():
    return "shakespeare-char" if torch.cuda.is_available() else "shakespeare-char-small"


def valid_keys():
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_keys(d, source):
    unknown = [k for k in d if k not in valid_keys()]
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"in {source}; valid keys: {', '.join(valid_keys())}")


def load_file(path):
    """A config file as a dict: .py (dict literal or ``key = literal`` lines; parsed, not executed),
    .toml, .json, .yaml/.yml."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pass an existing .py, .toml, .json or .yaml file")
    ext = os.path.splitext(path)[1].lower()
    text = open(path, encoding="utf-8").read()
    try:
        if ext == ".toml":
            import tomllib
            return tomllib.loads(text)
        if ext == ".json":
            return json.loads(text)
        if ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path}: YAML config files need PyYAML (pip install pyyaml), or use a .toml or .py config") from None
            out = yaml.safe_load(text) or {}
            if not isinstance(out, dict):
                raise ConfigError(f"{path}: a YAML config must be a mapping of keys to values")
            return out
        if ext == ".py":
            return _literal_py(text, path)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config file {path} could not be parsed ({type(e).__name__}: {e}); fix its syntax") from None
    raise ConfigError(f"config file {path}: unknown extension {ext!r}; use .py, .toml, .json, .yaml or .yml")


class NotLiteral:
    """A ``key = <expression>`` line of a Python config that is not a literal (never evaluated)."""

    def __init__(self, path, lineno):
        self.where = f"{path}:{lineno}"

    def __repr__(self):
        return f"<not a literal at {self.where}>"


def _literal_py(text, path):
    tree = ast.parse(text, filename=path)
    # docstrings and imports (nanoGPT's configs import time for a run name) do nothing here
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str))
            and not isinstance(n, (ast.Import, ast.ImportFrom))]
    if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Dict):  # a bare dict literal
        out = ast.literal_eval(body[0].value)
        if not isinstance(out, dict):
            raise ConfigError(f"{path}: a Python config must be a dict literal or 'key = value' lines")
        return out
    out = {}
    for node in body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path}:{node.lineno}: only 'key = literal' lines are allowed in a Python config (it is not executed)")
        try:
            out[node.targets[0].id] = _constant(node.value)
        except ValueError:
            out[node.targets[0].id] = NotLiteral(path, node.lineno)
    return out


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _constant(node):
    """A literal, or arithmetic on literals (nanoGPT writes ``gradient_accumulation_steps = 5 * 8``);
    anything else (names, calls) raises ValueError, nothing is run."""
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _constant(node.left), _constant(node.right)
        if isinstance(left, (int, float)) and isinstance(right, (int, float)) and not isinstance(left, bool) and not isinstance(right, bool) \
                and not (isinstance(node.op, ast.Pow) and abs(right) > 64):
            return _ARITHMETIC[type(node.op)](left, right)
        raise ValueError("not arithmetic on numbers")
    return ast.literal_eval(node)


# ---------------------------------------------------------------------------------------------
# nanoGPT's keys: the one mapping, for config files, the command line and the config saved in a
# nanoGPT ckpt.pt

DDP_BACKENDS = ("nccl", "gloo", "mpi", "ucc")  # nanoGPT's ``backend``: torch.distributed's
# nanoGPT's data/<dataset>/ folders that fastgpt has: (data, tokenizer)
NANOGPT_DATASETS = {"shakespeare_char": ("shakespeare", "char"), "shakespeare": ("shakespeare", "gpt2")}
NANOGPT_ONLY = ("dataset", "init_from", "wandb_log", "wandb_project", "wandb_run_name")  # marks a nanoGPT config file
NAME_KEYS = ("wandb_project", "wandb_run_name")  # may be left at their default when not a literal
# Settings of the machine a nanoGPT run was on (its train.py always saves 'cuda', its GPU's dtype
# and compile=True): not carried over from a nanoGPT checkpoint.
MACHINE_KEYS = ("device", "dtype", "compile")


def is_nanogpt(d):
    """Whether settings ``d`` use keys that only nanoGPT's train.py has."""
    return any(k in d for k in NANOGPT_ONLY) or d.get("backend") in DDP_BACKENDS


def from_nanogpt(d, source, checkpoint=False):
    """(settings, notes): ``d`` with nanoGPT's keys in fastgpt's terms.

    checkpoint: ``d`` is the ``config`` saved in a nanoGPT ckpt.pt (its machine settings are
    dropped too). Raises ConfigError for a non-literal value of a key other than a run name.
    """
    out, notes = {}, []
    for key, value in d.items():
        if isinstance(value, NotLiteral):
            if key not in NAME_KEYS:
                raise ConfigError(f"{value.where}: the value of {key!r} must be a literal (number, string, bool, None); "
                                  f"config files are parsed, not run")
            notes.append(f"{value.where}: {key} is not a literal (config files are parsed, not run): it stays {getattr(TrainConfig, key)!r}")
        elif key == "backend" and value in DDP_BACKENDS:
            notes.append(f"{source}: backend={value!r} is nanoGPT's DDP backend; fastgpt uses nccl between GPUs and gloo between "
                         f"CPU processes by itself, and the ops' backend stays 'auto' (--backend reference|triton|cuda sets that)")
        elif key == "dataset" and checkpoint:  # its text is not fastgpt's: only the tokenizer carries over
            tokenizer = "gpt2" if value == "openwebtext" else NANOGPT_DATASETS.get(value, (None, None))[1]
            if tokenizer:
                out["tokenizer"] = tokenizer
        elif key == "dataset":
            if value in NANOGPT_DATASETS:
                out["data"], out["tokenizer"] = NANOGPT_DATASETS[value]
                notes.append(f"{source}: dataset={value!r} -> data='shakespeare', tokenizer={out['tokenizer']!r} (fastgpt's embedded "
                             f"corpus: all the plays, where nanoGPT's data/{value} is the 1 MB tiny Shakespeare)")
            else:
                out["dataset"] = value  # resolved by build(): it needs --data
        elif key in MACHINE_KEYS and checkpoint:
            continue
        elif key == "init_from" and checkpoint:
            continue  # how that run started, not how this one does
        else:
            out[key] = value
    return out, notes


def _convert(key, raw, default_type):
    """A command-line string to the type of the key's default."""
    if default_type is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key} takes true or false, got {raw!r}")
    if raw.lower() == "none":
        return None
    for t in (default_type,) if default_type in (int, float, str) else (int, float, str):
        try:
            return t(raw)
        except ValueError:
            pass
    raise ConfigError(f"--{key} takes a {default_type.__name__}, got {raw!r}")


FLAGS = ("resume", "overwrite")  # command-line switches that are not config keys
_BOOL_WORDS = ("1", "true", "yes", "on", "0", "false", "no", "off")


def _key_type(key):
    """int, float, str or bool: the key's annotation, with Optional[...] unwrapped."""
    t = next(f for f in dataclasses.fields(TrainConfig) if f.name == key).type
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def _coerce(d, source):
    out = {}
    for key, value in d.items():
        t = _key_type(key)
        if value is not None and t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is not None and not isinstance(value, t) or (t is int and isinstance(value, bool)):
            if isinstance(value, str):
                value = _convert(key, value, t)
            else:
                raise ConfigError(f"{source}: {key} must be a {t.__name__}, got {value!r}")
        out[key] = value
    return out


def parse_overrides(argv):
    """``--key value`` / ``--key=value`` / ``--flag`` -> {key: raw string or True}; also returns
    a bare positional argument (a config file) if there is one."""
    out, positional = {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            positional.append(arg)
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_flag = key in FLAGS or (key in valid_keys() and _key_type(key) is bool)
            if is_flag and (nxt is None or nxt.lower() not in _BOOL_WORDS):
                value = "true"
            elif nxt is None or (nxt.startswith("--") and not is_flag):
                raise ConfigError(f"--{key} needs a value")
            else:
                value, i = nxt, i + 1
        out[key] = value
        i += 1
    if len(positional) > 1:
        raise ConfigError(f"unexpected arguments {positional}; pass settings as --key value")
    return out, (positional[0] if positional else None)


def build(argv=(), extra=None):
    """(TrainConfig, the keys set explicitly by the config file or command line, preset, flags,
    notes) from argv.

    flags: the non-config command-line switches (resume, overwrite) the caller handles itself;
    ``init_from='resume'`` (nanoGPT's way to say it) sets ``resume`` too. notes: one line each
    about nanoGPT keys that were mapped or set aside, for the caller to print.
    """
    cli, positional = parse_overrides(list(argv))
    flags = {k: _convert(k, cli.pop(k), bool) for k in FLAGS if k in cli}
    config_path = cli.pop("config", None) or positional
    file_values = {}
    if config_path:
        file_values = dict(load_file(config_path))
    preset = cli.pop("preset", None) or file_values.pop("preset", None)
    if preset is None:
        preset = "nanogpt" if is_nanogpt(file_values) else default_preset()
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    file_values, notes = from_nanogpt(file_values, config_path)
    cli, cli_notes = from_nanogpt(cli, "the command line")
    notes += cli_notes
    _check_keys({k: v for k, v in file_values.items() if k != "dataset"}, config_path)
    _check_keys({k: v for k, v in cli.items() if k != "dataset"}, "the command line")
    explicit = {**_coerce(_without(file_values, "dataset"), config_path), **_coerce(_without(cli, "dataset"), "the command line"),
                **(extra or {})}
    dataset = cli.get("dataset", file_values.get("dataset"))
    if dataset is not None:  # a nanoGPT data/<dataset>/ folder fastgpt does not have
        if "data" not in explicit:
            raise ConfigError(f"dataset={dataset!r} names nanoGPT's data/{dataset}/ folder, which fastgpt does not read; "
                              f"pass that text with --data FILE (and --tokenizer char or gpt2)")
        notes.append(f"dataset={dataset!r} set aside: training on --data {explicit['data']}")
    elif preset == "nanogpt" and "data" not in explicit:
        notes.append("nanoGPT's train.py trains on OpenWebText, which fastgpt does not have: training on the embedded Shakespeare "
                     "corpus (pass --data FILE for your own text)")
    if explicit.get("init_from") == "resume":
        flags["resume"] = True
        del explicit["init_from"]
    values = {**{k: v for k, v in PRESETS[preset].items() if k in valid_keys()}, **explicit}
    cfg = TrainConfig(**values).validate()
    return cfg, explicit, preset, flags, notes


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


def as_dict(cfg):
    return dataclasses.asdict(cfg)


def from_dict(d):
    """A TrainConfig from a checkpoint's saved config (unknown keys from other versions dropped)."""
    return TrainConfig(**{k: v for k, v in d.items() if k in valid_keys()})


def saved_settings(ckpt):
    """The settings saved in a checkpoint, in fastgpt's terms: a fastgpt checkpoint's as they are,
    a nanoGPT one's (no ``format`` entry) mapped by :func:`from_nanogpt`."""
    saved = ckpt.get("config") or {}
    if "format" in ckpt:
        return saved
    return from_nanogpt(saved, "the checkpoint", checkpoint=True)[0]

