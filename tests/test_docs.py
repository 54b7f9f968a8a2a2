"""The docs site and the README: `mkdocs build --strict` succeeds (any warning fails it: a broken link or anchor, a
page missing from the nav), the generated parts are really generated from the code (the click commands, MLproject,
the method registry), and the README stays a short entry that points into the site."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built strictly into a temporary directory (nothing is written into the checkout)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(out / "mpl")}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out / "site")], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return out / "site"


def test_the_cli_reference_lists_every_command_and_option(site: Path) -> None:
    from prune_tracker.cli import cli

    page = (site / "cli.html").read_text()
    for name, command in cli.commands.items():
        assert f'id="prune-tracker-{name}"' in page, f"command {name} missing from the CLI reference"
        for option in command.params:
            assert all(opt in page for opt in getattr(option, "opts", ())), f"{name} {option.opts} missing"
    assert "&lt;dataset&gt;" in page and "<dataset>" not in page  # help placeholders shown, not hidden as tags
    assert "Sentinel" not in page  # click's internal "no default" marker


def test_the_entry_point_page_holds_every_mlproject_parameter(site: Path) -> None:
    page = (site / "entry-points.html").read_text()
    assert "generated:" not in page
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for name, entry in entry_points.items():
        section = page[page.index(f'<h3 id="{name}">'):]
        section = section[:section.find("<h3", 1)] if "<h3" in section[1:] else section
        for param, spec in entry["parameters"].items():
            default = "required" if "default" not in spec else (str(spec["default"]) or '""')
            row = re.search(rf"<td><code>{re.escape(param)}</code></td>\s*<td>{spec['type']}</td>\s*<td>(.*?)</td>",
                            section)
            assert row and default in row.group(1), f"{name}.{param}: {spec} not rendered"


def test_the_methods_page_follows_the_registry(site: Path) -> None:
    from prune_tracker.core.pruning import get_method, known_methods

    page = (site / "methods.html").read_text()
    assert "generated:" not in page
    for name in known_methods():
        assert f'id="{name}"' in page and get_method(name).summary.split(",")[0] in page


def test_a_method_without_its_section_fails_the_build() -> None:
    hooks = _hooks()
    from prune_tracker.core.pruning import known_methods

    sections = "".join(f"### `{name}`\n\ntext\n\n" for name in known_methods())
    hooks.check_method_sections(sections, "methods.md")
    with pytest.raises(Exception, match="missing \\['lamp'\\]"):
        hooks.check_method_sections(sections.replace("### `lamp`", "### lamp"), "methods.md")
    with pytest.raises(Exception, match="not registered \\['no_such_method'\\]"):
        hooks.check_method_sections(sections + "### `no_such_method`\n", "methods.md")


def test_the_readme_is_a_short_entry_into_the_site() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make test" in readme and "make demo" in readme and "make docs" in readme
    for target in re.findall(r"\]\((docs/[^)#]+\.md)", readme):
        assert (ROOT / target).is_file(), f"README links to missing page {target}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")):
        assert page in nav, f"docs/{page} is not in the mkdocs.yml nav"
