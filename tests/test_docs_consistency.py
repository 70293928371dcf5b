"""Docs against the code: every config, script, tool path and command-line flag that README.md and docs/ name
must exist (a renamed flag or a deleted config otherwise leaves the docs quietly wrong)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])

# Flags of programs that are not ours (pip) and files that docs name as examples of an error.
FOREIGN_FLAGS = {"--no-deps", "--index-url"}
EXAMPLE_FILES = {"cfgs/nope.yaml"}

_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]+)")
_PATH = re.compile(r"(?<![\w./-])((?:tools/|scripts/|cfgs/|benchmarks/|pcdet/)[\w./-]+\.(?:yaml|py|sh))")


def _doc_text() -> dict[Path, str]:
    return {doc: doc.read_text(encoding="utf-8") for doc in DOCS}


def _source_text() -> str:
    files = [*REPO.glob("tools/**/*.py"), *REPO.glob("tools/**/*.sh"), *REPO.glob("pcdet/**/*.py")]
    files += [*REPO.glob("benchmarks/**/*.py"), *REPO.glob("scripts/*.sh")]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def test_every_flag_named_in_the_docs_is_defined_by_a_tool():
    source = _source_text()
    missing = set()
    for doc, text in _doc_text().items():
        for flag in set(_FLAG.findall(text)) - FOREIGN_FLAGS:
            if f'"{flag}"' not in source and f"'{flag}'" not in source:
                missing.add(f"{doc.name}: {flag}")
    assert not missing, sorted(missing)


def _resolve(path: str) -> list[Path]:
    # cfgs/ paths are written as the tools see them, from tools/
    return [REPO / path, REPO / "tools" / path]


def test_every_config_script_and_tool_path_named_in_the_docs_exists():
    missing = set()
    for doc, text in _doc_text().items():
        for path in set(_PATH.findall(text)) - EXAMPLE_FILES:
            if not any(p.is_file() for p in _resolve(path)):
                missing.add(f"{doc.name}: {path}")
    assert not missing, sorted(missing)


@pytest.mark.parametrize("pattern", [_FLAG, _PATH])
def test_the_checks_find_what_they_look_for(pattern):
    # Guards the two tests above against a regex that silently matches nothing.
    found = {m for text in _doc_text().values() for m in pattern.findall(text)}
    assert len(found) > 10
