"""A real (non-editable) install of fam-jax's wheel has its gin files and
every package.

The wheel is built from a copy of the sources and installed with --no-deps
into a fresh venv that sees this interpreter's site-packages (for jax, gin...)
through a .pth file, so the dependencies need no download; this checkout's
editable fam_jax is not importable there (the editable finder lives in a .pth
of this venv's site-packages, and .pth files of directories added that way
are not run). Skips where the wheel cannot be built (no setuptools/wheel).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from fam_jax import FamConfig
from fam_jax.gin_utils import parse_gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("pyproject.toml", "README.md", "fam_jax", "tasks", "gin_configs")

_PROBE = """
import dataclasses, importlib.util, json
import fam_jax
from fam_jax import FamConfig
from fam_jax.gin_utils import GIN_CONFIGS_DIR, parse_gin
import fam_jax.cli.convert, fam_jax.cli.generate, fam_jax.text.loading
parse_gin(["models/tiny.gin"])
print(json.dumps({
    "fam_jax": fam_jax.__file__,
    "gin_configs": str(GIN_CONFIGS_DIR),
    "tasks": importlib.util.find_spec("fam_jax.tasks").origin,
    "config": dataclasses.asdict(FamConfig()),
}))
"""


def _run(args, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, timeout=120,
                        **kwargs)


def test_wheel_install_finds_the_gin_files(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  for name in SOURCES:
    path = os.path.join(REPO, name)
    if os.path.isdir(path):
      shutil.copytree(path, source / name,
                      ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(path, source / name)
  built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                "--no-build-isolation", "--no-index", "-w", str(tmp_path),
                str(source)])
  wheels = sorted(tmp_path.glob("fam_jax-*.whl"))
  if built.returncode or not wheels:
    pytest.skip(f"cannot build the wheel here: {built.stderr[-500:]}")

  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  python = str(env_dir / "bin" / "python")
  installed = _run([sys.executable, "-m", "pip", "--python", python, "install",
                    "--no-deps", "--no-index", str(wheels[0])])
  assert installed.returncode == 0, installed.stderr[-2000:]
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
               "['purelib'])"]).stdout.strip()
  # After the install, so that pip does not see this checkout's fam-jax.
  with open(os.path.join(site, "zz_dependencies.pth"), "w") as f:
    f.write("\n".join(p for p in sys.path if p.endswith("site-packages")))

  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  probe = _run([python, "-c", _PROBE], cwd=str(tmp_path), env=env)
  assert probe.returncode == 0, probe.stderr[-2000:]
  found = json.loads(probe.stdout.splitlines()[-1])
  for key in ("fam_jax", "gin_configs", "tasks"):
    assert found[key].startswith(site), (key, found[key])
  parse_gin(["models/tiny.gin"])  # the same file, read from this checkout
  expected = json.loads(json.dumps(dataclasses.asdict(FamConfig())))
  assert found["config"] == expected
