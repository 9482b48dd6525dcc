"""Named presets, in one table: a model's shape and, for training, its recipe.

Keys are ``GPTConfig`` fields (the model) and ``fastgpt.config.TrainConfig`` fields (the run);
``GPTConfig.from_preset`` reads the first kind, ``fastgpt.train --preset`` both (a run takes
its vocabulary from its data, so a preset's ``vocab_size`` describes the pretrained model).
"""

# nanoGPT's config/train_gpt2.py: ~0.5M tokens per iteration on 8 GPUs (12 x 1024 x 40 micro-steps).
_GPT2_RECIPE = dict(
    tokenizer="gpt2", eval_interval=1000, eval_iters=200, log_interval=10, batch_size=12,
    gradient_accumulation_steps=40, dropout=0.0, learning_rate=6e-4, max_iters=600000,
    lr_decay_iters=600000, min_lr=6e-5, weight_decay=1e-1, beta1=0.9, beta2=0.95, warmup_iters=2000,
)

PRESETS = {
    # OpenAI's GPT-2 family (Hugging Face names), as nanoGPT's from_pretrained sets them.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True,  # 124M
                 out_dir="out/gpt2", **_GPT2_RECIPE),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, block_size=1024, bias=True,  # 350M
                        out_dir="out/gpt2-medium", **_GPT2_RECIPE),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024, bias=True,  # 774M
                       out_dir="out/gpt2-large", **_GPT2_RECIPE),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, block_size=1024, bias=True,  # 1558M
                    out_dir="out/gpt2-xl", **_GPT2_RECIPE),
    # nanoGPT's train.py defaults (GPT-2 124M, bias-free, on OpenWebText there; fastgpt has no
    # OpenWebText): the base that nanoGPT's own config files override (see fastgpt.config).
    "nanogpt": dict(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=False, vocab_size=50304, dropout=0.0, out_dir="out",
        tokenizer="gpt2", eval_interval=2000, log_interval=1, eval_iters=200, always_save_checkpoint=True, batch_size=12,
        gradient_accumulation_steps=40, learning_rate=6e-4, max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95,
        grad_clip=1.0, decay_lr=True, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5,
    ),
    # nanoGPT's config/train_shakespeare_char.py: the GPU default. vocab_size is the embedded
    # corpus' 84 characters.
    "shakespeare-char": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False, vocab_size=84,
        out_dir="out/shakespeare-char", eval_interval=250, eval_iters=200, log_interval=10, batch_size=64,
        learning_rate=1e-3, max_iters=5000, lr_decay_iters=5000, min_lr=1e-4, beta2=0.99, warmup_iters=100,
    ),
    # The CPU main job: that config shrunk as nanoGPT's README suggests for a laptop (4 layers,
    # 4 heads, 128 dims, context 64, batch 12, 2000 iterations, no dropout) -- TrainConfig's defaults.
    "shakespeare-char-small": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False, vocab_size=84,
        out_dir="out/shakespeare-char-small",
    ),
}
