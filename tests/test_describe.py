"""fastgpt.describe: the model walk-through."""
import pytest

from fastgpt.describe import describe, main
from fastgpt.model import GPTConfig


def test_gpt2_walkthrough(capsys):
    main(["--preset", "gpt2", "--device", "cpu"])
    out = capsys.readouterr().out
    for piece in ("[B, T] = [1, 1024]", "[B, T, C] = [1, 1024, 768]", "3 x [1, 12, 1024, 64]", "12 heads x 64 head dim",
                  "[B, nh, T, T] = [1, 12, 1024, 1024]", "48.0 MiB that the fused attention never writes",
                  "[B, T, vocab] = [1, 1024, 50257]", "124,439,808 in all", "123.65M", "FLOPs per token",
                  "activation memory", "backends here: ", "layer_norm=reference", "attention ->"):
        assert piece in out, piece


def test_batch_context_and_dtype():
    text = describe(GPTConfig.from_preset("shakespeare-char-small"), batch=12, context=32, dtype="bfloat16")
    assert "[B, T, C] = [12, 32, 128]" in text and "[B, nh, T, T] = [12, 4, 32, 32]" in text and "bfloat16" in text
    with pytest.raises(ValueError, match="larger than the model's block_size"):
        describe(GPTConfig.from_preset("shakespeare-char-small"), context=65)


def test_cli_errors():
    with pytest.raises(SystemExit, match="block_size"):
        main(["--preset", "shakespeare-char-small", "--context", "1000"])
    with pytest.raises(SystemExit, match="unknown preset"):
        main(["--preset", "gpt5"])


@pytest.mark.parametrize("argv, match", [(["--context", "-5"], "--context must be a positive"), (["--context", "0"], "--context must be"),
                                         (["--batch", "0"], "--batch must be a positive")])
def test_non_positive_sizes_are_refused(argv, match):
    with pytest.raises(SystemExit, match=match):
        main(["--preset", "shakespeare-char-small", *argv])
