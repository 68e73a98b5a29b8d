"""What the README promises, checked against the repository: its install and test commands are the
ones CI runs, its links and pictures reach files and headings, its commands name scripts that exist
with options those scripts accept, its preset table matches model.py, it stays short, it keeps
commit hashes in its results, and no file cites a method document that is not in the repository."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_README_LINES = 250
# The scripts whose command lines the README's commands must fit (python SCRIPT --help).
# A file in a folder runs as a module (python -m tools.convert): it is named here by its path.
SCRIPTS_WITH_OPTIONS = {"train.py", "eval.py", "bench.py", "data.py", "experiments/ablation.py",
                        "experiments/regimes.py", "experiments/ladder.py", "tools/convert.py",
                        "tools/plot.py", "tools/fits.py", "experiments/profile_step.py"}


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def markdown_pages():
    return ["README.md"] + sorted(os.path.relpath(p, ROOT)
                                  for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def without_code(text):
    """The text with fenced code blocks and inline code spans blanked out (lines kept)."""
    text = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def fenced_blocks(text):
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def section(text, heading):
    """The lines of a `## heading` section, up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"no section '## {heading}'"
    return m.group(1)


# ----------------------------------------------------------------------------- CI and install


def test_ci_runs_the_readme_commands():
    """.ci/run's install and test commands, each a line of one of the README's code blocks."""
    readme, ci = read("README.md"), read(".ci/run")
    commands = [line.split("#")[0].strip() for line in ci.splitlines()
                if line.strip().startswith(("pip install", "python -m pytest"))]
    assert commands == ["pip install -r requirements.txt", "python -m pytest -q",
                        "python -m pytest -q -m slow"]
    code = [part.split("#")[0].strip() for block in fenced_blocks(readme)
            for line in block.splitlines() for part in line.split("&&")]
    for command in commands:
        assert command in code, f"the README's code blocks lack CI's command {command!r}"


# ----------------------------------------------------------------------------- links and pictures


def anchors(page):
    """GitHub's anchors for the headings of a markdown page: lower case, punctuation dropped,
    spaces to dashes, a repeated heading numbered -1, -2, ..."""
    seen, out = {}, set()
    for heading in re.findall(r"^#+ (.+)$", without_code(read(page)), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", markdown_pages())
def test_links_and_pictures_reach_files_and_headings(page):
    """Every relative link and picture of the README and of docs/*.md names a file that exists
    and, after a #, a heading of that file."""
    text = without_code(read(page))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):               # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(os.path.join(ROOT, path)), f"{page}: {target}: no such file"
        if fragment:
            assert path.endswith(".md"), f"{page}: {target}: an anchor into a file without headings"
            assert fragment in anchors(path), f"{page}: {target}: no such heading in {path}"


# ----------------------------------------------------------------------------- shape of the README


def test_readme_is_short():
    lines = read("README.md").count("\n")
    assert lines <= MAX_README_LINES, (f"README.md has {lines} lines, more than {MAX_README_LINES}: "
                                       "move the long form to docs/experiments.md")


HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def test_commit_hashes_only_in_the_results():
    """A reader with a downloaded copy has no history: commits are named only beside the results
    they produced."""
    readme = read("README.md")
    before = readme.split("\n## Results\n")
    assert len(before) == 2, "the README needs one '## Results' section"
    outside = before[0] + "\n".join(re.findall(r"^## (?!Results\n).*?(?=^## |\Z)", before[1],
                                               flags=re.M | re.S))
    found = HASH.findall(outside)
    assert not found, f"commit hashes outside the results section: {found}"


def test_results_have_at_most_four_tables():
    results = section(read("README.md"), "Results")
    tables = re.findall(r"^\|[ :]*-{3,}", results, re.M)
    assert len(tables) <= 4, f"{len(tables)} tables in the results: the long form goes to docs/"


# ----------------------------------------------------------------------------- commands


def readme_commands():
    """(script, arguments) of every `python SCRIPT.py ...` or `torchrun ... SCRIPT.py ...` the
    README shows, in code blocks (backslash continuations joined) and in inline code."""
    readme = read("README.md")
    pieces = []
    for block in fenced_blocks(readme):
        for line in block.replace("\\\n", " ").splitlines():
            pieces.append(line)
    prose = re.sub(r"^```.*?^```", "", readme, flags=re.M | re.S)
    pieces += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for piece in pieces:
        piece = re.sub(r"\s#\s.*$", "", piece)                   # a trailing comment
        for part in re.split(r"&&|;|\|", piece):
            m = re.search(r"(?:^|\s)(?:python3?|torchrun(?:\s+--\S+)*)\s+(\S+\.py)\b(.*)", part)
            if m:
                commands.append((m.group(1), shlex.split(m.group(2))))
            m = re.search(r"(?:^|\s)python3?\s+-m\s+([a-z_]+\.[a-z_]+)\b(.*)", part)
            if m:                                              # python -m tools.convert ...
                commands.append((m.group(1).replace(".", "/") + ".py", shlex.split(m.group(2))))
    return commands


HELP_DUMPER = r"""
import contextlib, io, json, runpy, sys
sys.path.insert(0, sys.argv[1])
out = {}
for key in json.loads(sys.argv[2]):
    script, *args = json.loads(key)
    buf = io.StringIO()
    sys.argv = [script, *args, "--help"]
    try:
        with contextlib.redirect_stdout(buf):
            if "/" in script:      # a module in a folder: python -m tools.convert
                runpy.run_module(script[:-3].replace("/", "."), run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script, run_name="__main__")
    except SystemExit:
        pass
    out[key] = buf.getvalue()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps():
    """{(script, subcommand or None): its --help text}, for the README's scripts and subcommands,
    from one Python process (torch imported once)."""
    wanted = {(s, None) for s in SCRIPTS_WITH_OPTIONS}
    for script, args in readme_commands():
        if script in SCRIPTS_WITH_OPTIONS and args and not args[0].startswith("-"):
            wanted.add((script, args[0]))
    keys = [json.dumps([s] + ([sub] if sub else [])) for s, sub in sorted(wanted, key=str)]
    run = subprocess.run([sys.executable, "-c", HELP_DUMPER, ROOT, json.dumps(keys)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    texts = json.loads(run.stdout.strip().splitlines()[-1])
    return {(json.loads(k)[0], (json.loads(k)[1:] or [None])[0]): v for k, v in texts.items()}


def flags_in(text):
    return set(re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", text))


def test_readme_commands_name_scripts_that_exist():
    commands = readme_commands()
    assert commands, "no python commands found in the README"
    for script, _ in commands:
        assert os.path.isfile(os.path.join(ROOT, script)), f"the README runs {script}, which is not here"


def test_readme_commands_use_options_the_scripts_accept(helps):
    """Every option of a README command appears in that script's --help (options hidden from
    --help, such as the tests' hooks, do not count)."""
    for script, args in readme_commands():
        if script not in SCRIPTS_WITH_OPTIONS:
            continue
        sub = args[0] if args and not args[0].startswith("-") else None
        accepted = flags_in(helps[(script, sub)])
        assert accepted, f"python {script} {sub or ''} --help printed no options"
        for arg in args:
            if arg.startswith("--"):
                flag = arg.split("=")[0]
                assert flag in accepted, f"README: python {script} {' '.join(args)}: {flag} is not in its --help"


def test_readme_option_names_exist(helps):
    """An option quoted on its own in the README (`--queue-size auto`) is an option of one of the
    scripts."""
    known = set().union(*(flags_in(text) for text in helps.values()))
    readme = re.sub(r"^```.*?^```", "", read("README.md"), flags=re.M | re.S)
    for span in re.findall(r"`(--[^`]+)`", readme):
        for token in span.split():
            if token.startswith("--"):
                assert token.split("=")[0] in known, f"README: `{span}`: {token} is no script's option"


# ----------------------------------------------------------------------------- the method document


CODE_AND_DOCS = (glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py"))
                 + glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "README.md")])


def test_no_file_cites_a_method_document_that_is_not_here():
    """The method is docs/method.md; a citation of the old, absent file name sends a reader
    nowhere."""
    absent = "METHOD" + ".md"                 # spelled apart so that this file does not cite it
    citing = [os.path.relpath(p, ROOT) for p in CODE_AND_DOCS if absent in open(p, encoding="utf-8").read()]
    assert not citing, f"these cite {absent}, which is not in the repository (docs/method.md is): {citing}"


def test_method_document_has_the_steps_the_code_cites():
    """The code cites the method's steps 1-6 (and 2-5) and its Evaluation section."""
    method = read("docs/method.md")
    step_section = re.search(r"^## One optimizer step.*?(?=^## )", method, flags=re.M | re.S)
    assert step_section, "docs/method.md: no '## One optimizer step ...' section"
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", step_section.group(0), re.M)]
    assert numbers == [1, 2, 3, 4, 5, 6], numbers
    assert re.search(r"^## Evaluation$", method, re.M), "docs/method.md: no '## Evaluation' section"


# ----------------------------------------------------------------------------- numbers from the code


def test_readme_preset_parameter_counts_match_the_code():
    """The preset table's parameter counts, at each vocabulary its header names."""
    from model import PRESETS, DualEncoder, make_config
    readme = read("README.md")
    header = re.search(r"^\| preset \|.*$", readme, re.M)
    assert header, "no preset table"
    vocabularies = [int(v) for v in re.findall(r"vocabulary (\d+)", header.group(0))]
    assert vocabularies, "the preset table's header names no vocabulary"
    for name in PRESETS:
        row = re.search(rf"^\| `{name}` \|.*$", readme, re.M)
        assert row, f"no row for preset {name}"
        counts = [float(c) for c in re.findall(r"\| ([0-9.]+)M ", row.group(0) + " ")]
        assert len(counts) == len(vocabularies), row.group(0)
        for vocab, count in zip(vocabularies, counts):
            want = DualEncoder(make_config(name, vocab_size=vocab)).num_params() / 1e6
            assert count == round(want, 2), f"{name} at vocabulary {vocab}: {count}M, model.py {want:.2f}M"


def test_readme_ladder_table_is_what_the_ladder_report_prints():
    """Every number of the Benefit table comes from the committed study, through the same function
    `python -m experiments.ladder --report` prints it with."""
    from experiments import ladder
    from experiments import studies
    report = studies.read_json(os.path.join(ROOT, "docs", "results", "ladder.json"))
    expected = ladder.readme_table(report, ladder.choose(report)).splitlines()
    lines = read("README.md").splitlines()
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
    assert len(expected) > 2                                        # the rows are there


def test_readme_default_table_is_what_the_ladder_report_prints():
    """The default run's table is phase 4 of the committed study: the old default's recipe against
    the chosen one, as `python -m experiments.ladder --report` prints it (its title left out)."""
    from experiments import ladder
    from experiments import studies
    report = studies.read_json(os.path.join(ROOT, "docs", "results", "ladder.json"))
    expected = ladder.default_table(report, ladder.choose(report)).splitlines()[1:]
    lines = section(read("README.md"), "Results").splitlines()
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
    assert len(expected) == 8                      # two settings: old, chosen and their difference


# ----------------------------------------------------------------------------- the layout

CARD = {"model.py", "momentum.py", "loss.py", "accumulate.py", "data.py", "train.py", "eval.py",
        "bench.py", "README.md", "requirements.txt", "tests", "docs"}
FOLDERS = {"synthetic", "evaluation", "manifests", "plumbing", "experiments", "tools"}


def tracked():
    """The repository's files as git knows them (a clean clone has nothing else)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.splitlines() if os.path.exists(os.path.join(ROOT, p))]


def test_the_top_level_is_the_card_and_every_folder_is_named_in_the_readme():
    top = {p.split("/")[0] for p in tracked() if not p.startswith(".")}
    assert top - FOLDERS == CARD, f"at the top level beyond the card: {sorted(top - FOLDERS - CARD)}"
    rest = section(read("README.md"), "Files")
    for folder in FOLDERS:
        assert re.search(rf"^{folder}/", rest, re.M), f"the README's Files section lacks {folder}/"


def test_the_reading_path_gives_each_file_its_length():
    """"Read these, in this order": each file with its number of lines, as it is."""
    files = section(read("README.md"), "Files")
    rows = re.findall(r"^\d+\. \[([\w/]+\.py)\]\([\w/.]+\), (\d+) lines", files, re.M)
    assert [name for name, _ in rows][:4] == ["model.py", "momentum.py", "loss.py", "accumulate.py"]
    for name, count in rows:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert int(count) == len(f.read().splitlines()), f"README: {name} has {count} lines"


def test_every_file_and_function_is_short():
    """At most 450 lines a file and about 80 a function (its argument list aside), so that each
    file is one idea a reader can hold."""
    import ast
    too_long = []
    for path in (p for p in tracked() if p.endswith(".py")):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        if len(text.splitlines()) > 450:
            too_long.append(f"{path}: {len(text.splitlines())} lines")
        if path.startswith("tests/"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.end_lineno - node.body[0].lineno + 1
                if body > 80:
                    too_long.append(f"{path}: {node.name} {body} lines")
    assert not too_long, too_long


def test_readme_fits_table_is_the_committed_estimate():
    """Each row of 'What fits your GPU' is docs/results/fits_estimate.json's largest b per card."""
    with open(os.path.join(ROOT, "docs", "results", "fits_estimate.json"), encoding="utf-8") as f:
        fits = json.load(f)
    readme = read("README.md")
    assert "An estimate, not yet run on a GPU" in readme and not fits["measured"]
    for row in fits["rows"]:
        cells = [row["preset"], f"{row['image_size']} px", f"{row['per_sample_mb']:.1f}"] + [
            str(row["cards"][str(c)]["largest_b"]) for c in fits["cards_gb"]]
        assert "| " + " | ".join(cells) + " |" in readme, cells
