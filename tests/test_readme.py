"""The README's commands are the ones CI runs, and its preset table matches model.py."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_ci_runs_the_readme_commands():
    readme, ci = read("README.md"), read(".ci/run")
    commands = [line.split("#")[0].strip() for line in ci.splitlines()
                if line.strip().startswith(("pip install", "python -m pytest"))]
    assert commands == ["pip install -r requirements.txt", "python -m pytest -q",
                        "python -m pytest -q -m slow"]
    for command in commands:
        assert command in readme, command


def test_readme_preset_parameter_counts_match_the_code():
    from model import PRESETS, DualEncoder, make_config
    readme = read("README.md")
    for name in PRESETS:
        m = re.search(rf"^\| `{name}` \|.*?\| ([0-9.]+)M \|", readme, re.M)
        assert m, f"no row for preset {name}"
        count = DualEncoder(make_config(name)).num_params() / 1e6
        assert float(m.group(1)) == round(count, 2), name


def anchor(heading):
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_reach_files_and_headings():
    """Every relative link of the README (and of docs/experiments.md, which it links to) names a
    file that exists and, after a #, a heading of that file."""
    for page in ("README.md", "docs/experiments.md"):
        text = read(page)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, fragment = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            assert os.path.exists(os.path.join(ROOT, path)), f"{page}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.+)$", read(path), re.M)
                assert fragment in [anchor(h) for h in headings], f"{page}: {target}"
