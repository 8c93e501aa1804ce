"""The docs keep every path they name real.

Checked: README.md, deploy/README.md and docs/*.md (prose, code blocks, relative links and their
#anchors, every run-config key in docs/configuration.md) and the docstrings and comments of the
code. A path is a token that starts with one of the repository's top-level folders (``server/run/``,
``strategies/math/flora.py``, ``docs/privacy.md``); a user's folders (``FED/``, ``NODE/``,
``runs/``, ``RUN_DIR/``), URLs and templates or globs (``<run>``, ``*``, ``{a,b}``, ``…``) are
not repository paths and are skipped. A reference to a section (``README "Privacy"``,
``docs/privacy.md "The ledger"``) must name a heading of that file.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
import tokenize
from pathlib import Path

import pytest

from client.node.start import NODE_CONFIG_KEYS, check_node_overrides
from common.config import DEFAULT_RUN_CONFIG, SettingsError
from server.cli.main import build_parser
from server.run.settings import server_settings

REPO = Path(__file__).resolve().parents[2]
TOP = (".ci", "bench", "client", "common", "deploy", "docs", "protos", "scripts", "server",
       "strategies", "tests")  # fmt: skip
CODE = ("server", "client", "strategies", "protos", "common", "bench")
PATH = re.compile(r"(?<![\w./~$@-])((?:" + "|".join(map(re.escape, TOP)) + r")/[\w./*{}<>…-]*)")
BARE_MD = re.compile(r"(?<![\w./-])([A-Z][A-Z_-]*\.md)\b")  # README.md, DESIGN.md: at the root
TEMPLATE = re.compile(r"[*{}<>…]")
SECTION = re.compile(r"\b(README(?:\.md)?|[A-Z]+\.md|docs/[\w-]+\.md),?\s+\"([^\"]+)\"")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_files(repo: Path) -> list[Path]:
    return [
        repo / "README.md",
        repo / "deploy" / "README.md",
        *sorted((repo / "docs").glob("*.md")),
    ]


def code_text(source: str) -> str:
    """A Python file's docstrings and comments, one block each (comment lines joined)."""
    blocks: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                blocks.append(doc)
    comments = [tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT]  # fmt: skip
    return "\n\n".join([*blocks, " ".join(comments)])


def headings(markdown: str) -> set[str]:
    """The file's headings, as written (lower case) and as GitHub's anchors."""
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            title = match.group(1).replace("`", "").lower()
            found |= {title, re.sub(r"[^\w\s-]", "", title).replace(" ", "-")}  # as GitHub does
    return found


def missing_paths(repo: Path, text: str) -> list[str]:
    """Repository paths and section references in ``text`` that do not exist in ``repo``."""
    problems = []
    for raw in PATH.findall(text):
        path = raw.rstrip(".,;:")
        if not TEMPLATE.search(path) and not (repo / path).exists():
            problems.append(f"{path}: no such file or folder")
    for name in BARE_MD.findall(text):
        if not (repo / name).exists():
            problems.append(f"{name}: not at the repository root")
    for name, title in SECTION.findall(text):
        target = repo / (name if name.endswith(".md") else name + ".md")
        if target.is_file() and title.lower() not in headings(target.read_text()):
            problems.append(f'{name} "{title}": no such heading in {target.name}')
    return problems


def broken_links(repo: Path, md_file: Path) -> list[str]:
    """Relative links (and their #anchors) in ``md_file`` that do not resolve."""
    problems = []
    for target in LINK.findall(md_file.read_text()):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (md_file.parent / path).resolve() if path else md_file
        if not resolved.exists() or repo.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{target}: {resolved} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in headings(resolved.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("md", markdown_files(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_paths_and_links_exist(md: Path) -> None:
    problems = missing_paths(REPO, md.read_text()) + broken_links(REPO, md)
    assert not problems, f"{md.relative_to(REPO)}:\n  " + "\n  ".join(problems)


def test_code_docstrings_and_comments_name_real_paths() -> None:
    problems = []
    for folder in CODE:
        for py in sorted((REPO / folder).rglob("*.py")):
            if "_pb2" in py.name:  # generated
                continue
            problems += [f"{py.relative_to(REPO)}: {p}"
                         for p in missing_paths(REPO, code_text(py.read_text()))]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_every_setting_is_documented() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    keys = list(dict.fromkeys([*DEFAULT_RUN_CONFIG, *NODE_CONFIG_KEYS]))
    missing = [key for key in keys if f"`{key}`" not in page]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_the_checks_catch_a_wrong_path_a_broken_link_and_a_moved_section(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "server" / "run").mkdir(parents=True)
    (tmp_path / "server" / "run" / "checkpoint.py").write_text("")
    (tmp_path / "docs" / "privacy.md").write_text(
        "# Privacy\n\n## The ledger\n```\n# not one\n```\n"
    )
    text = (
        'See server/run/checkpoint.py, server/run/, docs/privacy.md "The ledger", FED/ca.pem,\n'
        "runs/<run>/adapter, server/run/*.py, https://x.org/server/no.py.\n"
        "Wrong: server/run/checkpoints.py, strategies/node_modes.py, DESIGN.md and\n"
        'docs/privacy.md "Budget guard", docs/privacy.md "not one".'
    )
    assert missing_paths(tmp_path, text) == [
        "server/run/checkpoints.py: no such file or folder",
        "strategies/node_modes.py: no such file or folder",
        "DESIGN.md: not at the repository root",
        'docs/privacy.md "Budget guard": no such heading in privacy.md',
        'docs/privacy.md "not one": no such heading in privacy.md',
    ]
    page = tmp_path / "docs" / "index.md"
    page.write_text(
        "[ok](privacy.md#the-ledger) [ok](#index) [web](https://x.org/a.md)\n# Index\n"
        "[bad](strategies.md) [bad anchor](privacy.md#budget-guard) [out](../../etc/passwd)\n"
    )
    assert [p.split(":")[0] for p in broken_links(tmp_path, page)] == [
        "strategies.md", "privacy.md#budget-guard", "../../etc/passwd"
    ]  # fmt: skip


def test_comments_are_read_across_lines_and_code_strings_are_not() -> None:
    source = (
        '"""Module doc: see docs/a.md."""\n'
        'x = "server/not_a_doc.py"  # the step (README\n'
        '# "Strategies compared")\n'
        "def f() -> None:\n"
        '    """Uses client/b.py."""\n'
    )
    text = code_text(source)
    assert "docs/a.md" in text and "client/b.py" in text
    assert 'README "Strategies compared"' in text
    assert "not_a_doc" not in text


def shell_commands(markdown: str) -> list[list[str]]:
    """Each ``fedlora …`` command in the file's sh/bash blocks, as argv after ``fedlora``."""
    commands, block, lines = [], False, []
    for line in markdown.splitlines():
        if FENCE.match(line):
            block = not block and line.strip().strip("`~") in ("sh", "bash")
        elif block:
            lines.append(line)
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        line = re.sub(r"<[^<>\s]*>", "PLACEHOLDER", line)  # runs/<run>/adapter
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        starts = [i for i, w in enumerate(words) if w == "fedlora" or w.endswith("/fedlora")]
        if starts:
            argv = words[starts[0] + 1 :]
            ends = [i for i, w in enumerate(argv) if set(w) <= set("();<>|&")]
            commands.append(argv[: ends[0]] if ends else argv)
    return commands


def command_problem(argv: list[str]) -> str | None:
    """Why ``fedlora ARGV`` would not start as written, or None: parse, then check its --config."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return None if exit_.code == 0 else "the fedlora parser refuses it"
    overrides = dict(getattr(args, "config", None) or [])
    for key, flag in (("num-server-rounds", "rounds"), ("lora-ranks", "ranks")):
        if getattr(args, flag, None) is not None:  # as the CLI maps them
            overrides[key] = getattr(args, flag)
    try:
        if argv[:2] == ["node", "start"]:
            check_node_overrides(overrides)
        elif argv[0] in ("simulate", "run"):
            server_settings({**DEFAULT_RUN_CONFIG, **overrides})
    except SettingsError as err:
        return str(err)
    return None


@pytest.mark.parametrize("md", markdown_files(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_every_fedlora_command_in_the_docs_parses(
    md: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = []
    for argv in shell_commands(md.read_text()):
        problem = command_problem(argv)
        if problem:
            problems.append(f"fedlora {shlex.join(argv)}: {problem} {capsys.readouterr().err}")
    assert not problems, f"{md.relative_to(REPO)}:\n" + "\n".join(problems)


def test_commands_are_read_from_shell_blocks_and_bad_ones_caught() -> None:
    page = (
        "```sh\n.venv/bin/fedlora simulate --rounds 2 \\\n    --config seed=1  # two\n"
        'fedlora node join "$(fedlora server invite --dir F --name a | tail -n 1)" --dir N\n'
        "fedlora node start --dir N --data D > n.log 2>&1 &\n"
        "fedlora adapter inspect runs/<run>/adapter\n```\n"
        "```\nfedlora not-in-a-sh-block\n```\n"
    )
    assert shell_commands(page) == [
        ["simulate", "--rounds", "2", "--config", "seed=1"],
        ["node", "join", "$(fedlora server invite --dir F --name a | tail -n 1)", "--dir", "N"],
        ["node", "start", "--dir", "N", "--data", "D"],
        ["adapter", "inspect", "runs/PLACEHOLDER/adapter"],
    ]
    assert command_problem(["simulate", "--rounds", "2"]) is None
    assert command_problem(["simulate", "--rouds", "2"]) is not None
    assert command_problem(["simulate", "--config", "strategy=fedit", "--ranks", "8"]) is None
    assert command_problem(["simulate", "--config", "strategy=fedit"]) is not None  # 4,8,16
    assert command_problem(["simulate", "--config", "local-step=10"]) is not None
    assert "`strategy`" in str(command_problem(["run", "--dir", "F", "--config", "strategy=avg"]))
    node = ["node", "start", "--dir", "N", "--data", "D", "--config"]
    assert command_problem([*node, "privacy=dp-sgd", "--config", "dp-noise-multiplier=1"]) is None
    assert "`dp-max-epsilon`" in str(command_problem([*node, "dp-max-epsilon=8"]))
