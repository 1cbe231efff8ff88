"""Command-line programs of fam-jax (console scripts in pyproject.toml)."""
