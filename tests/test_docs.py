"""The documentation against the code: README.md and every docs/**/*.md page.

Every `rrg ...` command line in a fenced code block is parsed by the real CLI parser, the way
`rrg` itself parses it (launcher/cli.py main(): parse_known_args, then overrides may follow options);
every `rrg ...` named in inline code (the README's commands table, prose) names a real subcommand and
only options that subcommand has; every relative link and every repository path the text names exists;
every page is reachable from README.md; the Quick start keeps its two set-up commands.
No subprocess, no Ray: parsing only.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import re
import shlex
from pathlib import Path

import pytest

from launcher.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
# Fenced lines that mention rrg but cannot parse by design, each with its reason. Empty: every
# command line in the docs parses (placeholders such as CONFIG or `...` parse as positionals).
EXEMPT: dict[str, str] = {}
MIN_COMMANDS = 30  # so the parse test cannot pass on an empty or unreadable docs tree


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _fenced_blocks(text: str):
    """(info string, [(line number, line)]) for every fenced block (also indented, inside list items)."""
    block, info = None, ""
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*```(.*)$", line)
        if m and block is None:
            block, info = [], m.group(1).strip().lower()
        elif m:
            yield info, block
            block = None
        elif block is not None:
            block.append((no, line))
    assert block is None, "unclosed code fence"


def _prose(text: str) -> str:
    """The text with fenced blocks blanked (line numbers kept)."""
    out, fence = [], False
    for line in text.splitlines():
        if re.match(r"^\s*```", line):
            fence = not fence
            out.append("")
        else:
            out.append("" if fence else line)
    return "\n".join(out)


def _inline_code(text: str):
    """(line number, content) of every inline code span outside fences; a span may wrap a line."""
    prose = _prose(text)
    for m in re.finditer(r"`([^`]+)`", prose):
        yield prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())


_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_PREFIX = re.compile(r"^(?:\./|\.venv/bin/|\$VENV/bin/|\$\(VENV\)/bin/|\$\{VENV\}/bin/)")


def _shell_commands(lines):
    """(line number, command) for every simple command of a block: continuations joined, prompts and
    comments dropped, split on && ; |."""
    joined, start, buf = [], None, ""
    for no, line in lines:
        if start is None:
            start = no
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append((start, buf + line))
        start, buf = None, ""
    if buf:
        joined.append((start, buf))
    for no, line in joined:
        line = re.sub(r"^\s*\$ ", "", line)
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
        for part in re.split(r"&&|;|\|", line):
            if part.strip():
                yield no, part.strip()


def _rrg_argv(command: str) -> list[str] | None:
    """The words after `rrg` if the command runs rrg (env assignments and venv prefixes stripped)."""
    words = shlex.split(command)
    while words and _ENV.match(words[0]):
        words.pop(0)
    if not words:
        return None
    exe = _PREFIX.sub("", words[0])
    return words[1:] if exe == "rrg" else None


def _fenced_rrg_commands():
    found = []
    for page in PAGES:
        for info, lines in _fenced_blocks(page.read_text()):
            if info.split()[:1] and info.split()[0] not in SHELL_FENCES:
                continue
            for no, command in _shell_commands(lines):
                argv = _rrg_argv(command)
                if argv is not None:
                    found.append((f"{_rel(page)}:{no}", command, argv))
    return found


def _parse_like_main(argv: list[str]) -> argparse.Namespace:
    """launcher.cli.main's parsing, without running the command: SystemExit on any parse error."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    return args


def _subparsers(parser: argparse.ArgumentParser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _leaf_parsers(words: list[str]):
    """(command path, parser) for the subcommand(s) the words name; `a|b` names alternatives."""
    todo, leaves = [((), build_parser(), words)], []
    while todo:
        path, parser, rest = todo.pop()
        action = _subparsers(parser)
        if action is None or (path and (not rest or rest[0] in ("...", "\u2026"))):
            leaves.append((path, parser))  # prose may name a group: `rrg bench`, `rrg bench ...`
            continue
        if not rest:
            raise AssertionError(f"'rrg {' '.join(path)}' needs a subcommand: one of {sorted(action.choices)}")
        for name in rest[0].split("|"):
            if name not in action.choices:
                raise AssertionError(f"'rrg {' '.join(path + (name,))}': no such subcommand "
                                     f"(choices: {sorted(action.choices)})")
            todo.append((path + (name,), action.choices[name], rest[1:]))
    return leaves


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _flags(words) -> set[str]:
    return {m.group(0) for w in words for m in re.finditer(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", w)}


def test_docs_tree_is_there():
    names = {_rel(p) for p in PAGES}
    for page in ["README.md", "docs/README.md", "docs/datasets.md", "docs/families.md", "docs/training.md",
                 "docs/evaluation.md", "docs/clusters.md", "docs/hospital.md", "docs/security.md",
                 "docs/performance.md", "docs/tests.md"]:
        assert page in names, f"{page} missing"
    assert len(README.read_text().splitlines()) < 200, "README.md grew past 200 lines: move the text to docs/"


def test_every_fenced_rrg_command_parses_with_the_real_parser():
    commands = _fenced_rrg_commands()
    failures, parsed, exempted = [], 0, set()
    for where, command, argv in commands:
        if command in EXEMPT:
            exempted.add(command)
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                _parse_like_main(argv)
        except SystemExit as exit_:
            failures.append(f"{where}: {command}\n    exit {exit_.code}: {err.getvalue().strip().splitlines()[-1:]}")
            continue
        unknown = set()
        for _, parser in _leaf_parsers(argv):
            unknown |= _flags(argv) - _options(parser)
        if unknown:  # argparse accepts unique prefixes; the docs spell options out
            failures.append(f"{where}: {command}\n    not an option of its subcommand: {sorted(unknown)}")
            continue
        parsed += 1
    assert not failures, "doc commands the rrg parser rejects:\n" + "\n".join(failures)
    assert exempted == set(EXEMPT), f"exemptions no longer in the docs: {sorted(set(EXEMPT) - exempted)}"
    assert parsed >= MIN_COMMANDS, f"only {parsed} rrg commands parsed in the docs' code blocks"


def test_config_files_named_by_doc_commands_exist():
    missing, checked = [], 0
    for where, command, argv in _fenced_rrg_commands():
        with contextlib.redirect_stderr(io.StringIO()):
            args = _parse_like_main(argv)
        config = getattr(args, "config", None)
        if isinstance(config, str) and config.endswith((".yaml", ".yml")) and "=" not in config:
            checked += 1
            if not (ROOT / config).is_file():
                missing.append(f"{where}: {config} ({command})")
    assert not missing, "config files the docs' commands name that do not exist:\n" + "\n".join(missing)
    assert checked >= 20


def test_every_inline_rrg_command_names_a_real_subcommand_and_real_options():
    """Inline `rrg ...` spans (the commands table's synopses with [...] and |, and prose) are not
    parsed as whole commands; their subcommand path and every --option they name must exist."""
    failures, checked, table_commands = [], 0, set()
    for page in PAGES:
        for no, span in _inline_code(page.read_text()):
            span = span.replace("\\|", "|")
            if not re.match(r"^rrg\s+[a-z]", span):
                continue
            words = re.sub(r"[\[\]]", " ", span).split()[1:]
            try:
                leaves = _leaf_parsers(words)
            except AssertionError as err:
                failures.append(f"{_rel(page)}:{no}: `{span}`: {err}")
                continue
            for path, parser in leaves:
                unknown = _flags(words) - _options(parser)
                if unknown:
                    failures.append(f"{_rel(page)}:{no}: `{span}`: rrg {' '.join(path)} has no {sorted(unknown)}")
                if page == README:
                    table_commands.add(path)
            checked += 1
    assert not failures, "inline rrg commands that do not match the parser:\n" + "\n".join(failures)
    assert checked >= 30, checked
    # the README's commands table names these; each resolved to a real parser above
    for expected in [("train",), ("eval",), ("plan",), ("label",), ("generate",), ("demo-data",),
                     ("shards", "build"), ("shards", "masks"), ("shards", "inspect"), ("bench", "build"),
                     ("bench", "loader"), ("annotate", "topics"), ("annotate", "reasoning"),
                     ("config", "show"), ("submit", "slurm"), ("submit", "k8s")]:
        assert expected in table_commands, f"README's commands table lost `rrg {' '.join(expected)}`"


def _links(text: str):
    """(line number, target) of every markdown link outside code."""
    prose = re.sub(r"`[^`]+`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), _prose(text))
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        yield prose.count("\n", 0, m.start()) + 1, m.group(1)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_relative_link_points_to_an_existing_file_and_anchor():
    broken, checked = [], 0
    for page in PAGES:
        for no, target in _links(page.read_text()):
            if re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", target, re.I):  # http(s)://, mailto:, ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            checked += 1
            if not dest.exists():
                broken.append(f"{_rel(page)}:{no}: {target} (no {dest})")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(page)}:{no}: {target} (no heading #{anchor} in {_rel(dest)})")
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert checked >= 20, checked


def test_no_section_is_referred_to_by_name_only():
    """Cross-references are links: a `(see "Some section")` left over from the one-page README."""
    left = [f"{_rel(p)}:{no}: {line.strip()}"
            for p in PAGES for no, line in enumerate(_prose(p.read_text()).splitlines(), 1)
            if re.search(r"\bsee \"[A-Z]|in \"[A-Z][^\"]*\" (?:below|above)", line)]
    assert not left, "section references that are not links:\n" + "\n".join(left)


def test_every_docs_page_is_linked_from_the_readme():
    linked = set()
    for _, target in _links(README.read_text()):
        path_part = target.partition("#")[0]
        if path_part and not re.match(r"^[a-z][a-z0-9+.-]*:", path_part, re.I):
            linked.add((ROOT / path_part).resolve())
    orphans = [_rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages README.md does not link: {orphans}"


_REPO_PATH = re.compile(r"(?<![\w/.$<>-])((?:configs|shards|modeling|trainer|cluster|launcher|tests|scripts)/[\w./*-]*)"
                        r"(::\w+)?")


def test_repository_paths_named_in_the_docs_exist():
    """`trainer/plan.py`, `tests/test_plan.py::test_x`, `configs/demo.yaml` ... as the docs name them."""
    missing, checked = [], 0
    for page in PAGES:
        prose = _prose(page.read_text())
        for m in _REPO_PATH.finditer(prose):
            path, test = m.group(1).rstrip(".,;:"), m.group(2)
            end = prose[m.end(1):m.end(1) + 1]
            if end in "<{" and end:  # a placeholder continues it: shards/adapter_<name>.py
                continue
            no = prose.count("\n", 0, m.start()) + 1
            checked += 1
            pattern = re.sub(r"\b[A-Z][A-Z_]+\b", "*", path)  # configs/datasets/NAME.yaml: some file
            hits = glob.glob(str(ROOT / pattern)) if "*" in pattern else ([str(ROOT / path)] if (ROOT / path).exists() else [])
            if not hits:
                missing.append(f"{_rel(page)}:{no}: {path}")
            elif test and not re.search(rf"^\s*def {test[2:]}\(", Path(hits[0]).read_text(), re.M):
                missing.append(f"{_rel(page)}:{no}: {path}{test} (no such test)")
    assert not missing, "paths the docs name that are not in the repository:\n" + "\n".join(missing)
    assert checked >= 50, checked


def test_quick_start_keeps_exactly_the_two_set_up_commands():
    text = README.read_text()
    m = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Quick start' section"
    blocks = list(_fenced_blocks(m.group(1)))
    assert len(blocks) == 1, f"Quick start has {len(blocks)} code blocks, not one"
    commands = [cmd for _, cmd in _shell_commands(blocks[0][1])]
    assert commands == ["make demo", "make test"], commands


@pytest.mark.parametrize("command, ok", [
    ("rrg train configs/demo.yaml train.lr=1e-4", True),
    ("rrg eval configs/demo.yaml --checkpoint latest eval.labeler=rrg_es", True),  # override after an option
    ("rrg train configs/demo.yaml --no-such-flag", False),
    ("rrg eval configs/demo.yaml --checkpoint latest stray", False),
    ("rrg shards frobnicate configs/demo.yaml", False),
    ("rrg generate --out x.jsonl", False),  # --model-dir and inputs are required
])
def test_the_parse_check_itself_tells_good_from_bad(command, ok):
    argv = _rrg_argv(command)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            _parse_like_main(argv)
        parsed = True
    except SystemExit:
        parsed = False
    assert parsed is ok


def test_command_extraction_joins_continuations_and_splits_chains():
    lines = [(1, "DS_ACCELERATOR=cpu .venv/bin/rrg train a.yaml \\"), (2, "    x=1 --resume auto   # note"),
             (3, "rrg demo-data c.yaml && rrg eval c.yaml --checkpoint latest; echo done | cat"),
             (4, "$ rrg plan c.yaml --gpus 8")]
    got = [(no, _rrg_argv(c)) for no, c in _shell_commands(lines)]
    assert got == [(1, ["train", "a.yaml", "x=1", "--resume", "auto"]), (3, ["demo-data", "c.yaml"]),
                   (3, ["eval", "c.yaml", "--checkpoint", "latest"]), (3, None), (3, None),
                   (4, ["plan", "c.yaml", "--gpus", "8"])]
