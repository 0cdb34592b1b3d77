"""The docs cite only what the repository holds: every section the code and the README cite
(`design §N`, `design §12 Q7`) is a section of `docs/design.md`, every `.py` or `.md` file they
name exists, and every `module.name` they put in backticks is defined in that module.

Read from the files as they are (nothing is imported), so the checks follow the code as it moves.
"""

import ast
import fnmatch
import functools
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
# One cited section, a range of them, or a quirk of section 12: §9, §4-8, §12 Q7.
SECTION = r"§(\d+)(?:-(\d+))?(?: (Q\d+))?"
# A citation names its document, then lists sections: "design §4 and §8", "design §2, §9-11".
CITATION = re.compile(rf"design {SECTION}(?:(?:, | and | or ){SECTION})*")
# Suffixes of file names, not attributes, when they follow a module's name in backticks.
FILE_SUFFIXES = {"py", "md", "json", "out", "params", "ckpt", "png", "sh", "txt", "toml", "prev"}


def _skipped(rel: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts)


@functools.cache
def repository_files() -> tuple[Path, ...]:
    found = (p.relative_to(ROOT) for p in sorted(ROOT.rglob("*")) if p.is_file())
    return tuple(rel for rel in found if not _skipped(rel))


def citing_files() -> list[Path]:
    """Everything that may cite the design: the code, the tests, the README, the other docs."""
    return [
        rel
        for rel in repository_files()
        if rel.suffix == ".py" or (rel.suffix == ".md" and rel != DESIGN.relative_to(ROOT))
        if rel.parts[0] != "benchmarks"  # measured tables, written by benchmark.py
        if rel != Path(__file__).resolve().relative_to(ROOT)  # its examples are not citations
    ]


def _lines(rel: Path):
    for number, line in enumerate((ROOT / rel).read_text().splitlines(), start=1):
        yield f"{rel}:{number}", line


# --------------------------------------------------------------------------------------------
# docs/design.md
# --------------------------------------------------------------------------------------------


@functools.cache
def design_sections() -> dict[int, str]:
    """Section number -> its text, from the `## N. Title` headings."""
    text = DESIGN.read_text()
    heads = list(re.finditer(r"^## (\d+)\. .+$", text, flags=re.MULTILINE))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return {int(h.group(1)): text[h.start() : end] for h, end in zip(heads, ends, strict=True)}


def quirks(section: int) -> set[str]:
    """The quirk ids a section defines, each as a bold `**Qn.**` item."""
    return set(re.findall(r"\*\*(Q\d+)\.\*\*", design_sections().get(section, "")))


def cited_sections(citation: str) -> list[tuple[int, str | None]]:
    """(section, quirk or None) for every section a citation names, ranges expanded."""
    cited = []
    for first, last, quirk in re.findall(SECTION, citation):
        numbers = range(int(first), int(last or first) + 1)
        cited += [(n, quirk or None) for n in numbers]
    return cited


@functools.cache
def citations() -> tuple[tuple[str, str], ...]:
    """(where, citation) of every `design §...` in the citing files."""
    return tuple(
        (where, match.group(0))
        for rel in citing_files()
        for where, line in _lines(rel)
        for match in CITATION.finditer(line)
    )


def test_design_sections_are_numbered_in_order():
    assert list(design_sections()) == list(range(1, len(design_sections()) + 1))
    assert len(design_sections()) >= 12


def test_the_section_grammar():
    assert cited_sections("design §4-8") == [(n, None) for n in range(4, 9)]
    assert cited_sections("design §2, §9-11") == [(2, None), (9, None), (10, None), (11, None)]
    assert cited_sections("design §12 Q7") == [(12, "Q7")]
    assert CITATION.search("as design §1 and §11 say").group(0) == "design §1 and §11"


def test_the_code_cites_the_design():
    """Guards the checks below against passing because they found nothing to check."""
    assert len(citations()) >= 20
    assert {rel.name for rel in citing_files()} >= {"README.md", "loop.py", "agents.py"}


def test_every_cited_section_is_in_the_design():
    missing = [
        f"{where}: {citation} (no {'quirk ' + quirk + ' in ' if quirk else ''}section {number})"
        for where, citation in citations()
        for number, quirk in cited_sections(citation)
        if number not in design_sections() or (quirk and quirk not in quirks(number))
    ]
    assert not missing, "citations of docs/design.md that it lacks:\n" + "\n".join(missing)


def test_every_section_sign_names_its_document():
    """A bare `§8`, or `SPEC §8`, would point at a document the reader cannot find."""
    unnamed = []
    for rel in citing_files():
        for where, line in _lines(rel):
            rest = CITATION.sub("", line)
            if "§" in rest or re.search(r"\bSPEC\b", line):
                unnamed.append(f"{where}: {line.strip()}")
    assert not unnamed, "sections cited without 'design §N':\n" + "\n".join(unnamed)


# --------------------------------------------------------------------------------------------
# Files and names the docs point to
# --------------------------------------------------------------------------------------------


@functools.cache
def made_by_tests() -> str:
    """The tests' source, minus this file: a worked example's file that a test writes (the
    README's new agent, say) is named there."""
    own = Path(__file__).resolve()
    return "\n".join(p.read_text() for p in sorted((ROOT / "tests").rglob("*.py")) if p != own)


def _resolves(named: str, citing: Path) -> bool:
    """A bare file name (or pattern, `train_*.py`) that some file of the repository has, or a
    path from the repository root or from the citing file's folder, or a file a test writes."""
    if "<" in named or ("/" not in named and f'"{named}"' in made_by_tests()):
        return True  # a template, such as `train_<agent>.py`, or a file a test makes
    if "/" not in named:
        return any(rel.match(named) for rel in repository_files())
    targets = {os.path.normpath(base / named) for base in (Path(), citing.parent)}
    return any(fnmatch.fnmatchcase(str(rel), t) for t in targets for rel in repository_files())


def test_the_files_the_docs_name_exist():
    """Every `something.py` and `something.md` named in the code, tests and docs, e.g. a
    docstring's pointer to `training/results.py`, is a file of the repository."""
    path = re.compile(r"(?<![\w/.<*-])((?:\.\./)*[\w<>*./-]*[\w>*]\.(?:py|md))\b")
    missing = [
        f"{where}: {named}"
        for rel in [*citing_files(), DESIGN.relative_to(ROOT)]
        for where, line in _lines(rel)
        for named in path.findall(line)
        if not _resolves(named, rel)
    ]
    assert not missing, "files named that the repository does not hold:\n" + "\n".join(missing)


@functools.cache
def modules() -> dict[str, list[Path]]:
    """A module's short and dotted names (`loop`, `training.loop`) -> its files."""
    named: dict[str, list[Path]] = {}
    for rel in repository_files():
        if rel.suffix == ".py" and rel.parts[0] != "tests":
            parts = rel.with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            for name in {parts[-1], ".".join(parts)}:
                named.setdefault(name, []).append(rel)
    return named


@functools.cache
def defined(rel: Path) -> frozenset[str]:
    """The names a module defines at its top level (not those it imports)."""
    names = set()
    for node in ast.parse((ROOT / rel).read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return frozenset(names)


def stale_pointer(named: str) -> str | None:
    """What is wrong with a backticked `module.name` (`figure4/plan.TABLE`,
    `training.loop.env_step`), or None when the module defines the name or the text is not a
    pointer into the project."""
    parts = [p for p in re.split(r"[./]", re.sub(r"\(.*\)$", "", named)) if p]
    if not re.fullmatch(r"[\w./]+(\(.*\))?", named) or not parts or parts[-1] in FILE_SUFFIXES:
        return None
    for split in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:split])
        if module in modules():
            files = modules()[module]
            attribute = parts[split]
            if any(attribute in defined(rel) for rel in files):
                return None
            if f"{module}.{attribute}" in modules():
                continue
            return f"{' or '.join(map(str, files))} defines no `{attribute}`"
    return None


def test_stale_pointer_finds_what_moved():
    assert stale_pointer("scoring.bootstrap_ci") is None
    assert stale_pointer("training.loop.env_step") is None
    assert stale_pointer("figure4/plan.TABLE") is None
    assert stale_pointer("experiment.run(cfg)") is None
    assert stale_pointer("plot_metric.bootstrap_ci")  # used by way of curves, defined in scoring
    assert stale_pointer("jax.vmap") is None and stale_pointer("configs/ER.json") is None
    assert stale_pointer("training/") is None


@pytest.mark.parametrize("rel", [*citing_files(), DESIGN.relative_to(ROOT)], ids=str)
def test_every_module_pointer_names_a_definition(rel):
    """A pointer such as `plot_metric.bootstrap_ci` must name where the thing is defined, so a
    reader who follows it finds it (an import of it elsewhere does not count)."""
    stale = [
        f"{where}: `{named}`: {problem}"
        for where, line in _lines(rel)
        for named in re.findall(r"`([^`]+)`", line)
        if (problem := stale_pointer(named))
    ]
    assert not stale, "pointers to names their module does not define:\n" + "\n".join(stale)


# --------------------------------------------------------------------------------------------
# The README's code map
# --------------------------------------------------------------------------------------------


def code_map_entries() -> list[str]:
    """What the first column of the code map's table names: files, folders, patterns."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Code map")
    end = text.find("\n## ", start + 1)
    rows = [line.split("|") for line in text[start:end].splitlines() if line.startswith("|")]
    return [name for row in rows[2:] for name in re.findall(r"`([^`]+)`", row[1])]


def test_the_code_map_names_only_what_exists():
    entries = code_map_entries()
    assert "agents.py" in entries
    missing = [
        name
        for name in entries
        if not any(
            fnmatch.fnmatchcase(str(rel), name.rstrip("/") + ("/*" if name.endswith("/") else ""))
            for rel in repository_files()
        )
    ]
    assert not missing, f"the README's code map names what the repository lacks: {missing}"


def test_every_module_has_a_row_in_the_code_map():
    entries = [name for name in code_map_entries() if not name.endswith("/")]
    absent = [
        str(rel)
        for rel in repository_files()
        if rel.suffix == ".py" and rel.parts[0] != "tests"
        if not any(fnmatch.fnmatchcase(str(rel), name) for name in entries)
    ]
    assert not absent, f"modules without a row in the README's code map: {absent}"
