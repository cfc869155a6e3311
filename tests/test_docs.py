"""The documentation tells the truth about the product as it is.

- The README's one Python example runs as written when saved as a file, offline, and resumes for free.
- Every ``agentshards COMMAND`` and ``--flag`` that README.md, docs/*.md and litestream/README.md name
  exists in the click group today, so the docs cannot promise a command that was never built.
- The README links every docs page; every relative link and anchor resolves.
- Every table of figures says which machine, which day and which script produced it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from agentshards._cli.main import main as cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "litestream" / "README.md"]

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+)`")
_SHELL = {"", "sh", "bash", "shell", "console"}
_SEPARATORS = {"&&", "||", ";", "|"}


# --- the README example -----------------------------------------------------------------------------------

def _python_blocks(text: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == "python"]


def _run_example(path: Path) -> list[str]:
    """Run the saved example as a user would, in its own directory, with no OpenAI settings of its own
    to fall back on (a dead endpoint in the environment proves the example needs none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="must-not-be-used",
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, path.name], cwd=path.parent, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_readme_has_one_python_example_and_it_runs_offline_as_written(tmp_path: Path) -> None:
    blocks = _python_blocks(README.read_text())
    assert len(blocks) == 1, f"the README carries one Python example, found {len(blocks)}"
    example = tmp_path / "research.py"  # the name the README tells the reader to save it under
    example.write_text(blocks[0])

    first = _run_example(example)
    assert first[-1] == "LLM requests made by this run: 2"
    answer = first[-2]
    assert "answer to: Write it from" in answer  # the draft, written from the recorded search step
    assert (tmp_path / "data" / "a1.db").is_file()

    again = _run_example(example)  # finished: the recorded result, nothing executed, nothing paid
    assert again[-2:] == [answer, "LLM requests made by this run: 0"]


# --- commands and flags -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mention:
    page: str
    line: int
    command: str | None  # None: the group itself (agentshards --version), or a standalone --flag
    flags: tuple[str, ...]
    section: str | None  # the command a "## `agentshards X`" heading names, for standalone flags


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in a sketch of a command line: plain words will do
        return line.split()


def _command_mentions(words: list[str], page: str, line: int, section: str | None) -> list[Mention]:
    """Every ``agentshards ...`` command among the shell words, split at ``&&``, ``;`` and pipes."""
    found: list[Mention] = []
    segment: list[str] = []
    for word in [*words, ";"]:
        if word not in _SEPARATORS:
            segment.append(word.strip("[]"))
            continue
        if segment and (segment[0] == "agentshards" or segment[0].endswith("/agentshards")):
            rest = segment[1:]
            command = rest[0] if rest and not rest[0].startswith("-") else None
            if command is not None and re.fullmatch(r"[A-Z_]+", command):
                command = ""  # a placeholder such as COMMAND: any command
            flags = tuple(w.split("=", 1)[0] for w in rest if w.startswith("--"))
            found.append(Mention(page, line, command, flags, section))
        segment = []
    return found


def cli_mentions(text: str, page: str = "<text>") -> list[Mention]:
    """What a markdown page says about the CLI: shell lines in code blocks, and inline code spans that
    start with ``agentshards `` or with a ``--flag``. A flag span in a paragraph that names a script
    (``scripts/...``) belongs to that script, not to the CLI."""
    mentions: list[Mention] = []
    section: str | None = None
    in_fence: str | None = None
    pending = ""
    paragraph_names_script = False
    lines = text.splitlines()
    for number, raw in enumerate(lines, 1):
        if in_fence is None and raw.startswith("```"):
            in_fence = raw[3:].strip()
            continue
        if in_fence is not None:
            if raw.startswith("```"):
                in_fence = None
            elif in_fence in _SHELL:
                pending += raw.rstrip("\\") + " "
                if not raw.endswith("\\"):
                    words = _words(pending.strip().removeprefix("$ "))
                    mentions += _command_mentions(words, page, number, section)
                    pending = ""
            continue
        if raw.startswith("#"):
            named = re.search(r"agentshards ([a-z][\w-]*)", raw)
            section = named.group(1) if named else None
        if not raw.strip():
            paragraph_names_script = False
            continue
        # a paragraph names a script if any of its lines does, before or after the span
        if not paragraph_names_script:
            end = next((i for i in range(number - 1, len(lines)) if not lines[i].strip()), len(lines))
            paragraph_names_script = any("scripts/" in lines[i] for i in range(number - 1, end))
        for span in _SPAN.findall(raw):
            if span.startswith("agentshards "):
                mentions += _command_mentions(_words(span), page, number, section)
            elif span.startswith("--") and not paragraph_names_script:
                mentions.append(Mention(page, number, None, (span.split()[0].split("=", 1)[0],), section))
    return mentions


def _options(command: click.Command) -> set[str]:
    opts = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            opts.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
    return opts


def cli_problems(mentions: list[Mention], group: click.Group = cli) -> list[str]:
    """Each command or flag a mention names that the click group does not have."""
    commands = group.commands
    every_flag = set().union(*(_options(c) for c in commands.values()))
    problems = []
    for m in mentions:
        where = f"{m.page}:{m.line}"
        if m.command:
            if m.command not in commands:
                problems.append(f"{where}: agentshards {m.command}: no such command")
                continue
            allowed = _options(commands[m.command])
            label = m.command
        elif m.command == "":  # a placeholder command
            allowed, label = every_flag, "any command"
        elif m.section in commands:  # a flag under a command's own heading
            allowed, label = _options(commands[m.section]) | _options(group), m.section
        else:
            allowed, label = every_flag | _options(group), "any command"
        problems += [f"{where}: {flag} is not an option of {label}" for flag in m.flags if flag not in allowed]
    return problems


def test_every_command_and_flag_the_docs_name_exists() -> None:
    mentions = [m for page in PAGES for m in cli_mentions(page.read_text(), str(page.relative_to(ROOT)))]
    assert len({m.command for m in mentions if m.command}) >= 10  # the parser does find the commands
    assert cli_problems(mentions) == []


def test_the_check_refuses_commands_and_flags_that_do_not_exist() -> None:
    page = "\n".join([
        "## `agentshards status`",
        "",
        "| `--json` | fine | `--no-such-status-flag` | not fine |",
        "",
        "```sh",
        "agentshards frobnicate --data-dir d",
        "agentshards restore a1 --replica r --data-dir d \\",
        "    --everything",
        "python3 -m venv .venv && .venv/bin/agentshards demo --agents 3 --fleet-size 2",
        "```",
        "",
        "Benchmarks take `--period` (scripts/bench_fleet.py), the CLI does not take `--fast`.",
    ])
    assert cli_problems(cli_mentions(page)) == [
        "<text>:3: --no-such-status-flag is not an option of status",
        "<text>:6: agentshards frobnicate: no such command",
        "<text>:8: --everything is not an option of restore",
        "<text>:9: --fleet-size is not an option of demo",
    ]
    assert cli_problems(cli_mentions("Pass `--fast` to go faster.")) == [
        "<text>:1: --fast is not an option of any command"]


# --- links, pages and figures -----------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def test_readme_links_every_docs_page_and_every_link_resolves() -> None:
    pages = {p.stem for p in DOCS}
    assert pages >= {"guarantees", "replication", "fleets", "cli", "operations", "performance", "reliability",
                     "architecture"}, pages
    readme_links = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", README.read_text()))
    assert readme_links == {f"docs/{p.name}" for p in DOCS}
    broken = []
    for page in PAGES:
        text = _FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert broken == []


def test_the_readme_is_a_product_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        assert not re.search(r"\bstop[ -]\d+", page.read_text(), re.IGNORECASE), page


def _tables_with_their_preamble(text: str) -> list[tuple[str, str]]:
    """(the text since the previous heading or table, the table's header row) for each table."""
    out = []
    preamble: list[str] = []
    in_table = False
    for line in _FENCE.sub("", text).splitlines():
        if line.startswith("|"):
            if not in_table:
                out.append(("\n".join(preamble), line))
                in_table = True
            continue
        if in_table or line.startswith("#"):
            preamble = []
        in_table = False
        preamble.append(line)
    return out


def test_every_table_of_figures_names_its_machine_day_and_script() -> None:
    for name in ("performance.md", "reliability.md"):
        tables = _tables_with_their_preamble((ROOT / "docs" / name).read_text())
        assert tables, name
        for raw, header in tables:
            preamble = " ".join(raw.split())  # a wrapped line is still one sentence
            assert "2-core x86_64 VM" in preamble, (name, header)
            assert re.search(r"\brun 20\d\d-\d\d-\d\d, commits? `[0-9a-f]{7}`", preamble), (name, header)
            assert "scripts/" in preamble, (name, header)
