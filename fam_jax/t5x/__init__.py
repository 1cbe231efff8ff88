"""fam-jax inside t5x: the module adapter, the t5x model, the optimizer and the
checkpoint reader (`pip install 'fam-jax[t5x]'` plus t5x, see README "Fine-tuning
with t5x"). Only this subpackage imports t5x; `import fam_jax` never does.

    module.FamT5xDecoder        FamLM with t5x's decoder-only call signature
    models.FamDecoderOnlyModel  loss, scoring and decoding for t5x's train/eval/infer
    optim.fam_optimizer         fam-train's optimizer with the LoRA mask, for t5x
    checkpoints                 a t5x checkpoint -> a fam-jax checkpoint
"""
