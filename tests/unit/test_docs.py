"""Documentation that is generated or refers to generated files stays current."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_rest_api", DOCS / "gen_rest_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rest_api_reference_is_current():
    yaml = pytest.importorskip("yaml")
    gen = _generator()
    expected = gen.render(yaml.safe_load((DOCS / "openapi.yaml").read_text()))
    assert (DOCS / "rest-api.md").read_text() == expected, (
        "docs/rest-api.md is out of date with docs/openapi.yaml: run `python docs/gen_rest_api.py`")


def test_rest_api_reference_lists_every_operation():
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((DOCS / "openapi.yaml").read_text())
    text = (DOCS / "rest-api.md").read_text()
    for path, item in spec["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                assert f"### {method.upper()} `{path}`" in text
    for name in spec["components"]["schemas"]:
        assert f"### {name}" in text


def screenshot_names():
    """PNG names the UI scripts (tests/ui/*.mjs) write: literals, and prefix + template suffix."""
    literals, suffixes = set(), set()
    for script in (REPO / "tests" / "ui").glob("*.mjs"):
        text = script.read_text()
        literals |= set(re.findall(r"'([0-9]{2}-[a-z0-9-]+)(?:\.png)?'", text))
        suffixes |= set(re.findall(r"\}(-[a-z0-9-]+)`", text))
    return literals | {lit + suf for lit in literals for suf in suffixes}


def test_guides_link_existing_files_and_screenshots():
    """Relative links of the guides point at files of the checkout, screenshots at names the
    UI tests write (tests/ui/*.mjs)."""
    names = screenshot_names()
    for guide in ("admin-guide.md", "user-guide.md"):
        text = (DOCS / guide).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if target.startswith("../artifacts/ui/"):
                assert Path(target).stem in names, f"{guide}: no UI test writes {target}"
                continue
            assert (DOCS / target).resolve().exists(), f"{guide}: broken link {target}"
