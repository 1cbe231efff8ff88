"""The gin files of fam-jax (models/, tasks/, train/, t5x/), installed as
package data of `fam_jax.gin_configs`; `fam_jax.gin_utils` finds them there."""
