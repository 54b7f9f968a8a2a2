"""MkDocs hooks: the parts of the site that are read from the code at build time, so they cannot drift from it.

* ``<!-- generated:mlproject -->`` becomes, for every entry point of the repository's ``MLproject`` (YAML), a
  section with a table of its parameters (name, type, default; "required" when it has none).
* ``<!-- generated:methods -->`` becomes the table of the registered pruning methods (name, kind, summary,
  options with their defaults): what ``prune-tracker methods`` prints. The page holding it must also have one
  ``### `name` `` section per registered method and none for a method that is not registered: the build fails
  (strict) otherwise, so the prose follows the registry.

The repository root is put first on ``sys.path`` so that the site documents the checkout being built (mkdocs-click
imports ``prune_tracker.cli`` after this module is loaded), not another installed copy.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MLPROJECT_MARK = "<!-- generated:mlproject -->"
METHODS_MARK = "<!-- generated:methods -->"
METHOD_HEADING = re.compile(r"^### `([a-z0-9_]+)`", re.MULTILINE)
BARE_TAG = re.compile(r"<([a-z][a-z0-9_]*)>")
VOID_TAGS = frozenset({"br", "hr", "wbr"})


def _cell(value: Any) -> str:
    """A table cell: the value as code, pipes escaped; an empty string shown as such."""
    text = str(value)
    if text == "":
        return '`""` (empty)'
    return "`" + text.replace("|", "\\|") + "`"


def _option_help(command: Any, param: str) -> str:
    """The help text of `command`'s option that an MLproject parameter feeds (matched by name or by `--name`)."""
    for option in getattr(command, "params", []):
        if option.name == param or f"--{param}" in getattr(option, "opts", ()):
            text = html.escape(" ".join((getattr(option, "help", None) or "").split()), quote=False)
            return text.replace("|", "\\|").replace("*", "\\*")
    return ""


def mlproject_markdown(path: Path = ROOT / "MLproject") -> str:
    """Every entry point of `path` as a `###` section with its parameters' table, in the file's order; the meaning
    column is the help of the `prune-tracker` option the parameter feeds."""
    from prune_tracker.cli import cli

    project = yaml.safe_load(path.read_text())
    entry_points = project.get("entry_points") or {}
    if not entry_points:
        raise PluginError(f"{path}: no entry_points found")
    parts = []
    for name, entry in entry_points.items():
        command = cli.commands.get(name)
        if command is None:
            raise PluginError(f"MLproject entry point {name!r} has no `prune-tracker {name}` command")
        script = re.search(r"python\s+(\S+\.py)", entry.get("command", ""))
        lines = [f"### `{name}`", "",
                 f"`mlflow run . -e {name} --env-manager local -P name=value ...` runs "
                 f"`{script.group(1) if script else entry.get('command', '')}`, which calls "
                 f"[`prune-tracker {name}`](cli.md#prune-tracker-{name}).", "",
                 "| parameter | type | default | meaning (the CLI option's help) |", "|---|---|---|---|"]
        for param, spec in (entry.get("parameters") or {}).items():
            spec = spec if isinstance(spec, dict) else {"type": spec}
            default = _cell(spec["default"]) if "default" in spec else "**required**"
            meaning = _option_help(command, param) or "–"
            lines.append(f"| `{param}` | {spec.get('type', 'string')} | {default} | {meaning} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def methods_markdown() -> str:
    """The method registry as a table: what `prune-tracker methods` lists."""
    from prune_tracker.core.pruning import get_method, known_methods

    lines = ["| method | kind | what it does | options (defaults) |", "|---|---|---|---|"]
    for name in known_methods():
        method = get_method(name)
        kind = "structured" if method.structured else "unstructured"
        options = ", ".join(f"`{k}={v!r}`" for k, v in method.params.items()) or "–"
        lines.append(f"| [`{name}`](#{name}) | {kind} | {method.summary} | {options} |")
    return "\n".join(lines)


def check_method_sections(markdown: str, page: str) -> None:
    """One `### `name`` section per registered method, and none for an unknown one."""
    from prune_tracker.core.pruning import known_methods

    documented, registered = set(METHOD_HEADING.findall(markdown)), set(known_methods())
    missing, unknown = sorted(registered - documented), sorted(documented - registered)
    if missing or unknown:
        raise PluginError(f"{page}: method sections out of step with the registry: "
                          f"missing {missing or 'none'}, not registered {unknown or 'none'}")


def escape_placeholders(html_text: str) -> str:
    """`<name>` placeholders in click help texts (`runs:/<id>/model`, `prune-tracker-<dataset>-<arch>`) reach the page
    as bare HTML tags, which a browser hides: write them as text. A bare tag is one without attributes that is
    never closed in the page (real elements are)."""
    def text(match: re.Match) -> str:
        name = match.group(1)
        return match.group(0) if name in VOID_TAGS or f"</{name}>" in html_text else f"&lt;{name}&gt;"

    return BARE_TAG.sub(text, html_text)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MLPROJECT_MARK in markdown:
        markdown = markdown.replace(MLPROJECT_MARK, mlproject_markdown())
    if METHODS_MARK in markdown:
        check_method_sections(markdown, page.file.src_path)
        markdown = markdown.replace(METHODS_MARK, methods_markdown())
    return markdown


def tidy_click_page(html_text: str) -> str:
    """The CLI reference as a reader should see it: help placeholders as text, and "–" where an option has no
    default (click 8.3 reports its internal `Sentinel.UNSET` there, which mkdocs-click prints as is)."""
    return escape_placeholders(html_text).replace("<code>Sentinel.UNSET</code>", "–")


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    return tidy_click_page(html_text) if "::: mkdocs-click" in (page.markdown or "") else html_text
