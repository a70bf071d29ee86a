"""Write docs/api.md, the API reference, from the package's docstrings.

    python docs/build_api.py            # rewrite docs/api.md
    python docs/build_api.py --check    # exit 1 if docs/api.md is out of date
    python docs/build_api.py -o FILE    # write elsewhere ("-": standard output)

Documents every name in each listed module's ``__all__`` (less those
:data:`INTERNAL` names): classes with
their public methods and properties, functions, and constants, each with
its signature and docstring. Docstrings are reStructuredText-flavoured;
the few constructs they use (``literals``, :class:`roles`, ``::`` blocks)
are turned into Markdown. Needs nothing beyond the standard library and
the package itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"

# The modules of the reference, in reading order.
MODULES = (
    "replicant",
    "replicant.runtime",
    "replicant.health",
    "replicant.metrics",
    "replicant.progress",
    "replicant.acknowledgement",
    "replicant.changes",
    "replicant.snapshot",
    "replicant.incremental",
    "replicant.lsn",
    "replicant.errors",
    "replicant.connection",
    "replicant.decoders",
    "replicant.values",
    "replicant.cluster",
    "replicant.protocol",
    "replicant.formatting",
    "replicant.envelopes",
    "replicant.sinks",
    "replicant.recording",
    "replicant.cli",
)

# Names a module exports for its own parts and tests, not for users: left
# out of the reference (and of the package's top level).
INTERNAL = {
    "replicant.acknowledgement": {"WalProgress"},
    "replicant.runtime": {"Backoff", "StatusTimer", "WalProgress"},
}

_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def markdown(doc: str | None) -> str:
    """A docstring as Markdown."""
    if not doc:
        return ""
    text = inspect.cleandoc(doc)
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)
    out: list[str] = []
    in_block = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if in_block:
            if line.strip() and not line.startswith("    "):
                out.append("```")
                in_block = False
            else:
                out.append(line[4:] if line.startswith("    ") else line)
                continue
        if line.rstrip().endswith("::"):
            # "Text::" introduces a literal block: "Text:" and a fence.
            stripped = line.rstrip()[:-1]
            if stripped.strip():
                out.append(stripped)
            out.append("")
            out.append("```")
            in_block = True
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and not line.startswith((" ", "*", "-"))
            and following.startswith("    ")
            and following.strip()
        ):
            # A definition-list term: its body follows, indented.
            out += [f"**{line.strip()}**", ""]
            continue
        # Indented lines outside literal blocks are definition-list bodies.
        out.append(line[4:] if line.startswith("    ") else line)
    if in_block:
        out.append("```")
    # A fence opened right before a blank line: drop blank lines after it.
    return re.sub(r"```\n\n+", "```\n", "\n".join(out)).strip()


def signature(obj: Any, name: str) -> str:
    """``name(params) -> return`` with annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = []
    previous_kind = None
    for param in sig.parameters.values():
        if param.name == "self":
            continue
        if param.kind is param.KEYWORD_ONLY and previous_kind not in (
            param.KEYWORD_ONLY,
            param.VAR_POSITIONAL,
        ):
            params.append("*")
        if previous_kind is param.POSITIONAL_ONLY and param.kind is not param.POSITIONAL_ONLY:
            params.append("/")
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text = "*" + text
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            text += (
                f" = {param.default!r}"
                if param.annotation is not param.empty
                else (f"={param.default!r}")
            )
        params.append(text)
        previous_kind = param.kind
    result = f"{name}({', '.join(params)})"
    if sig.return_annotation is not sig.empty:
        result += f" -> {_annotation(sig.return_annotation)}"
    return result


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _is_public(name: str) -> bool:
    return not name.startswith("_")


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined on ``cls`` itself, in source order."""
    for name, value in vars(cls).items():
        if not _is_public(name) or name in ("kind",):
            continue
        if isinstance(value, property) or inspect.isfunction(value):
            yield name, value
        elif isinstance(value, (classmethod, staticmethod)):
            yield name, value.__func__


def document_class(name: str, cls: type, level: int) -> list[str]:
    lines = [f"{'#' * level} class `{name}`", ""]
    if dataclasses.is_dataclass(cls):
        lines += ["```python", f"{name}({_fields(cls)})", "```", ""]
    elif "__init__" in vars(cls):
        lines += ["```python", signature(vars(cls)["__init__"], name), "```", ""]
    bases = [
        b.__name__
        for b in cls.__bases__
        # Bases from private modules (replicant._speedups) are implementation.
        if b is not object and _is_public(b.__name__) and not b.__module__.startswith("replicant._")
    ]
    if bases:
        lines += [f"Bases: {', '.join(f'`{b}`' for b in bases)}", ""]
    doc = markdown(cls.__doc__)
    if doc:
        lines += [doc, ""]
    members = list(_members(cls))
    properties = [(m, v) for m, v in members if isinstance(v, property)]
    if properties:
        lines += ["Properties:", ""]
        lines += [f"- `{m}`: {_first_paragraph(v.__doc__)}" for m, v in properties]
        lines.append("")
    for member, value in members:
        if not isinstance(value, property):
            lines += [
                f"{'#' * (level + 1)} `{name}.{signature(value, member)}`",
                "",
                markdown(value.__doc__) or "*(undocumented)*",
                "",
            ]
    return lines


def _fields(cls: Any) -> str:
    parts = []
    for field in dataclasses.fields(cls):
        text = f"{field.name}: {_annotation(field.type)}"
        if field.default is not dataclasses.MISSING:
            text += f" = {field.default!r}"
        parts.append(text)
    return ", ".join(parts)


def _first_paragraph(doc: str | None) -> str:
    text = markdown(doc)
    return text.split("\n\n", 1)[0].replace("\n", " ") if text else "*(undocumented)*"


def document_module(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    lines = [f"## `{module_name}`", "", markdown(module.__doc__), ""]
    # The package's re-exports first, as one list, then what it documents
    # itself: a heading in the middle would cut the list in two.
    references: list[str] = []
    documented: list[str] = []
    for name in getattr(module, "__all__", []):
        if name in INTERNAL.get(module_name, ()):
            continue
        value = getattr(module, name)
        home = getattr(value, "__module__", module_name)
        if module_name == "replicant" and home != module_name and not isinstance(value, str):
            references.append(name)
        else:
            documented.append(name)
    for name in references:
        home = getattr(module, name).__module__
        # Each name is documented in its own module.
        lines.append(f"- `{name}`: see [`{home}`](#{_anchor(home)})")
    if references:
        lines.append("")
    for name in documented:
        value = getattr(module, name)
        if inspect.isclass(value):
            lines += document_class(name, value, 3)
        elif inspect.isfunction(value):
            lines += [
                f"### `{signature(value, name)}`",
                "",
                markdown(value.__doc__) or "*(undocumented)*",
                "",
            ]
        else:
            lines += _document_constant(module, name, value)
    lines.append("")
    return lines


def _document_constant(module: ModuleType, name: str, value: Any) -> list[str]:
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    doc = _attribute_doc(module, name)
    lines = [f"### `{name}`", "", f"`{shown}`", ""]
    if doc:
        lines += [doc, ""]
    return lines


def _attribute_doc(module: ModuleType, name: str) -> str:
    """The docstring written under a module-level assignment, or its ``#:`` comment."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return ""
    match = re.search(
        rf"^{re.escape(name)}\b[^\n]*=[^\n]*\n(?:[^\n]+\n)*?\"\"\"(.*?)\"\"\"", source, re.M | re.S
    )
    if match and match.start(1) - match.start() < 400:
        return markdown(match.group(1))
    comment = re.search(rf"^#: (.*)\n{re.escape(name)}\b", source, re.M)
    return markdown(comment.group(1)) if comment else ""


def _anchor(module_name: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", f"`{module_name}`".lower()).replace(" ", "-")


def build() -> str:
    """The whole reference as Markdown."""
    sys.path.insert(0, str(ROOT))
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/build_api.py`; do not edit by hand.",
        "The [guide](guide.md) explains the ideas; this page lists what is there.",
        "",
        "Modules: " + ", ".join(f"[`{m}`](#{_anchor(m)})" for m in MODULES),
        "",
    ]
    for module_name in MODULES:
        lines += document_module(module_name)
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("-o", "--output", default=str(OUTPUT), help="where to write")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        current = (
            Path(args.output).read_text(encoding="utf-8") if Path(args.output).exists() else ""
        )
        if current != text:
            print(f"{args.output} is out of date: run python docs/build_api.py", file=sys.stderr)
            return 1
        return 0
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
