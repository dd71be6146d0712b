"""The default model's training text: docstrings of the Python standard library.

Every machine that runs genwire has CPython's standard library, so the default model trains
without any download. The text is English prose written by the CPython developers and is
distributed under the Python Software Foundation License. Half of the documents are written as
a one-turn chat ("Explain NAME." → docstring) so that the chat template means something.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Bump when the extraction below changes, so cached corpora are rebuilt.
CORPUS_VERSION = "1"
SKIPPED_TOP_LEVEL = {"site-packages", "dist-packages", "test", "idlelib", "lib2to3", "turtledemo"}
MIN_DOC_CHARS = 40

EOS_TOKEN = "<|endoftext|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
SPECIAL_TOKENS = [EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN]


def stdlib_root() -> Path:
    """The standard library of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) for the module and every class and function in it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, name = stack.pop()
        doc = (
            ast.get_docstring(node, clean=True)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            else None
        )
        if doc and len(doc) >= MIN_DOC_CHARS:
            yield name, doc
        children = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        # Reversed so that popping visits definitions in source order.
        stack.extend((child, f"{name}.{child.name}") for child in reversed(children))  # type: ignore[attr-defined]


def extract_documents(root: Path) -> list[str]:
    """All documents of the corpus, in a deterministic order."""
    documents: list[str] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in SKIPPED_TOP_LEVEL or "tests" in parts:
            continue
        module = ".".join(parts).removesuffix(".py").removesuffix(".__init__")
        for name, doc in _docstrings(path, module):
            if len(documents) % 2 == 0:
                chat = f"{USER_TOKEN}\nExplain {name}.{EOS_TOKEN}\n{ASSISTANT_TOKEN}\n{doc}"
                documents.append(chat)
            else:
                documents.append(doc)
    return documents


def load_corpus(cache_dir: Path) -> tuple[list[str], str]:
    """The documents and their SHA-256, extracted once per interpreter and cached as JSON."""
    key = hashlib.sha256(f"{CORPUS_VERSION}|{sys.version}|{stdlib_root()}".encode()).hexdigest()[
        :16
    ]
    cached = cache_dir / f"stdlib-docstrings-{key}.json"
    if cached.exists():
        data = json.loads(cached.read_text(encoding="utf-8"))
        return list(data["documents"]), str(data["sha256"])
    documents = extract_documents(stdlib_root())
    digest = hashlib.sha256("\x00".join(documents).encode()).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sha256": digest, "documents": documents}), encoding="utf-8")
    tmp.replace(cached)
    return documents, digest


def load_text_files(paths: list[Path]) -> tuple[list[str], str]:
    """A user-supplied corpus: each non-empty paragraph of each file is a document."""
    documents: list[str] = []
    for path in sorted(paths):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                continue
            text = file.read_text(encoding="utf-8", errors="replace")
            documents.extend(p.strip() for p in text.split("\n\n") if p.strip())
    if not documents:
        raise ValueError(f"no text found in corpus paths: {[str(p) for p in paths]}")
    digest = hashlib.sha256("\x00".join(documents).encode()).hexdigest()
    return documents, digest
