"""seqio tasks and mixtures of fam-jax, importable as `fam_jax.tasks`.

Needs the `data` extra (seqio, TensorFlow); the model in `fam_jax` does not.
"""
