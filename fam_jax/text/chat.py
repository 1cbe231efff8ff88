"""Chat templates: a model's Jinja template + messages -> the prompt text.

    text = render_chat_template(template, [{"role": "user", "content": "Hi"}],
                                add_generation_prompt=True, eos_token="<|im_end|>")

Rendered as `transformers`' `apply_chat_template(tokenize=False)` renders it:
a sandboxed, immutable Jinja environment with `trim_blocks` and `lstrip_blocks`
on, the `loopcontrols` extension, a `{% generation %}` block (it only marks
assistant text there; here it renders its body), a `tojson` filter that does not
escape HTML, and the globals `raise_exception` and `strftime_now`. Message keys
whose value is None are dropped first, as `transformers` does.

Needs `jinja2` (>= 3.1.6, the first release without the known sandbox escapes;
templates from model files are untrusted code).
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Sequence

_MIN_JINJA2 = (3, 1, 6)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None,
            sort_keys: bool = False) -> str:
  """JSON without Jinja's HTML escaping (templates write JSON into prompts)."""
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                    separators=separators, sort_keys=sort_keys)


def _strftime_now(format_string: str) -> str:
  return datetime.datetime.now().strftime(format_string)


@functools.lru_cache(maxsize=16)
def _compile(template: str):
  """The template compiled in the sandboxed environment described above."""
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, nodes, sandbox  # pylint: disable=g-import-not-at-top

  version = tuple(int(p) for p in jinja2.__version__.split(".")[:3]
                  if p.isdigit())
  if version < _MIN_JINJA2:
    raise ImportError(f"chat templates need jinja2 >= 3.1.6 (sandbox fixes); "
                      f"found {jinja2.__version__}")

  class GenerationBlock(ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_render_body"), [], [],
                             body).set_lineno(lineno)

    def _render_body(self, caller):
      return caller()

  def raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)

  environment = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[GenerationBlock, ext.loopcontrols])
  environment.filters["tojson"] = _tojson
  environment.globals["raise_exception"] = raise_exception
  environment.globals["strftime_now"] = _strftime_now
  return environment.from_string(template)


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]],
                         add_generation_prompt: bool = True,
                         **variables: Any) -> str:
  """Renders a conversation with a chat template.

  Args:
    template: the Jinja source (a GGUF's `tokenizer.chat_template`).
    messages: [{"role": "system" | "user" | "assistant", "content": str}, ...].
    add_generation_prompt: end with the header that opens an assistant reply.
    **variables: further template variables, e.g. `bos_token`, `eos_token`
      (`BpeTokenizer.apply_chat_template` passes its special tokens), `tools`.

  Returns:
    The prompt text, special tokens written out literally.

  Raises:
    ValueError: no messages, or a message that is not a mapping.
    jinja2.TemplateError: the template is invalid or raised an exception.
  """
  if not messages:
    raise ValueError("a chat needs at least one message")
  chat = []
  for message in messages:
    if not isinstance(message, Mapping):
      raise ValueError(f"chat messages are mappings, got {message!r}")
    chat.append({k: v for k, v in message.items() if v is not None})
  # `transformers` always passes tools and documents (None when not given), so
  # templates may test `tools is none`.
  context = {"tools": None, "documents": None, **variables}
  return _compile(template).render(
      messages=chat, add_generation_prompt=add_generation_prompt, **context)
