"""The floors of docs/architecture.md hold in the code: no module imports one
of a higher floor, the imports form no circle, and every module is placed."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Module -> floor, as docs/architecture.md lists them (text/ sub-floors: each
# of its modules imports only the ones before it).
FLOORS = {
    "fam_jax.param_names": 0, "fam_jax.config": 0, "fam_jax.gin_utils": 0,
    "fam_jax.gin_configs": 0, "fam_jax.atomic": 0, "fam_jax.jsonfile": 0,
    "fam_jax.layers": 1, "fam_jax.masks": 1, "fam_jax.sampling": 1,
    "fam_jax.randomization": 1, "fam_jax.sharding": 1, "fam_jax.scan_grads": 1,
    "fam_jax.text": 1.0, "fam_jax.text.tokenizer": 1.1, "fam_jax.text.chat": 1.2,
    "fam_jax.text.bpe": 1.3, "fam_jax.text.loading": 1.4,
    "fam_jax.weights": 2,
    "fam_jax.blockwise": 3,
    "fam_jax.model": 4, "fam_jax": 4,
    "fam_jax.checkpoint": 5, "fam_jax.streaming": 5, "fam_jax.lora": 5,
    "fam_jax.generate": 5, "fam_jax.evaluation": 5, "fam_jax.memory": 5,
    "fam_jax.convert": 6,
    "fam_jax.cli": 7, "fam_jax.tasks": 7, "fam_jax.train": 7,
    "fam_jax.t5x": 8,
}
# Packages whose modules all share the package's floor.
WHOLE_PACKAGES = ("fam_jax.convert", "fam_jax.cli", "fam_jax.tasks",
                  "fam_jax.train", "fam_jax.t5x")


def _modules():
  """Module name -> source file, as installed (tasks/ is fam_jax.tasks)."""
  roots = {"fam_jax": "fam_jax", "tasks": "fam_jax.tasks",
           "gin_configs": "fam_jax.gin_configs"}
  found = {}
  for root, package in roots.items():
    for folder, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if not name.endswith(".py"):
          continue
        parts = os.path.relpath(os.path.join(folder, name),
                                os.path.join(REPO, root))[:-3].split(os.sep)
        parts = [p for p in parts if p != "__init__"]
        found[".".join([package] + parts)] = os.path.join(folder, name)
  return found


def _floor(module):
  for package in WHOLE_PACKAGES:
    if module == package or module.startswith(package + "."):
      return FLOORS[package]
  return FLOORS[module]


def _imports(path, modules):
  """The fam_jax modules a file imports, anywhere in it."""
  targets = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      targets.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module in modules:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        targets.add(sub if sub in modules else node.module)
  return targets


def test_every_module_has_a_floor_and_a_place_in_the_doc():
  doc = open(os.path.join(REPO, "docs", "architecture.md"),
             encoding="utf-8").read()
  for module, path in _modules().items():
    _floor(module)  # KeyError: a module docs/architecture.md does not place
    name = os.path.relpath(path, os.path.join(REPO, "fam_jax"))
    if not name.startswith(("..", "cli")) and not name.endswith("__init__.py"):
      assert f"`{name}`" in doc, name
  assert "`cli/`" in doc and "`tasks/`" in doc


def test_no_module_imports_a_higher_floor():
  modules = _modules()
  wrong = [(m, t) for m, path in modules.items()
           for t in _imports(path, modules) if _floor(t) > _floor(m)]
  assert not wrong


def test_imports_form_no_circle():
  modules = _modules()
  graph = {m: _imports(path, modules) - {m} for m, path in modules.items()}
  # The package __init__ files re-export their modules: not an edge back.
  for package in ("fam_jax", "fam_jax.tasks", "fam_jax.text"):
    for m in graph:
      graph[m].discard(package)
  state = {}

  def visit(module, trail):
    if state.get(module) == "done":
      return
    assert state.get(module) != "open", " -> ".join(trail + [module])
    state[module] = "open"
    for target in sorted(graph[module]):
      visit(target, trail + [module])
    state[module] = "done"

  for module in sorted(graph):
    visit(module, [])
