"""Real English text with no network: sentences from the docstrings of Python's standard library.

The standard library ships with every Python, is written in plain technical English, and
its docstrings are prose more often than code. ``stdlib_sentences`` reads the top-level
modules of the running interpreter's standard library with ``ast`` (nothing is imported),
splits docstrings into sentences, keeps the ones that read as prose, and returns them in
a reproducible order; ``split_sentences`` shuffles them with a seed into disjoint sets
(e.g. Fisher gradients vs held-out evaluation).

The sentences depend on the Python version (3.11 and 3.12 document things differently),
so results quote the version with the seed.
"""
from __future__ import annotations

import ast
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["stdlib_sentences", "split_sentences", "docstring_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_HINTS = (">>>", "::", "`", "$", "{", "}", "=", "->", "[", "]", "__", "\\", "|", "#", "<", ">", "*", "~", "http", "www.")


def _is_prose(sentence: str, min_words: int, max_words: int) -> bool:
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if not sentence[0].isupper() or sentence[-1] != "." or any(h in sentence for h in _CODE_HINTS):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    # identifiers like foo_bar() or dotted.names mark code talk, not prose
    return letters / len(sentence) >= 0.9 and not re.search(r"\w\(|\w_\w|\w\.\w", sentence)


def docstring_sentences(doc: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Prose sentences of one docstring: paragraphs joined, indented (code) blocks dropped."""
    out = []
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if any(line.startswith((" " * 4, "\t")) and line.strip() for line in lines[1:] if lines[0].strip()):
            continue  # an indented block under a line: an example or a table
        text = " ".join(line.strip() for line in lines).strip()
        for sentence in _SENTENCE_END.split(text):
            sentence = sentence.strip()
            if sentence and _is_prose(sentence, min_words, max_words):
                out.append(sentence)
    return out


def _docstrings(source: str):
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


@lru_cache(maxsize=4)
def _all_stdlib_sentences(min_words: int, max_words: int) -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path in sorted(stdlib.glob("*.py")):  # top-level modules only: no tests, no vendored code
        try:
            source = path.read_text(encoding="utf-8")
            docs = list(_docstrings(source))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for doc in docs:
            for sentence in docstring_sentences(doc, min_words, max_words):
                if sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
    return tuple(out)


def stdlib_sentences(limit: int | None = None, *, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Unique prose sentences from the standard library's docstrings, in file order (no shuffling).

    limit: keep the first ``limit`` (None: all; about 2,900 on Python 3.11).
    Raises RuntimeError when the standard library's sources are not installed.
    """
    sentences = list(_all_stdlib_sentences(min_words, max_words))
    if not sentences:
        raise RuntimeError(f"found no docstring sentences under {sysconfig.get_paths()['stdlib']}: "
                           "this Python ships without its standard library's .py sources")
    return sentences if limit is None else sentences[:limit]


def split_sentences(sentences: list[str], sizes: list[int], seed: int = 0) -> list[list[str]]:
    """Shuffle with ``seed`` and cut into disjoint consecutive parts of the given sizes."""
    if sum(sizes) > len(sentences):
        raise ValueError(f"asked for {sum(sizes)} sentences ({sizes}), only {len(sentences)} available")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = [], 0
    for size in sizes:
        parts.append([sentences[i] for i in order[start : start + size]])
        start += size
    return parts
