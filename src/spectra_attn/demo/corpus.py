"""The offline demo corpus: SlimPajama-627B layout, written from the Python standard library.

``write_demo_corpus(out_dir)`` writes ``<out_dir>/{train,validation,test}/chunk1/
example_{split}_{i}.jsonl.zst`` with one ``{"text": ..., "meta": {"redpajama_set_name": ...}}``
record per line, the layout and record format of SlimPajama-627B, so the data stage reads it with
the same code as the real corpus.

Text comes only from the running interpreter's standard library, so nothing is downloaded:

* the ``.py`` files of the standard library (test packages, IDLE, tkinter, turtle, lib2to3,
  distutils, ensurepip and ``__main__`` files left out), read as text and parsed with ``ast``
  (never imported, so no module runs any code);
* the docstrings of its public C extension modules (``math``, ``itertools``, ...), imported and
  read with ``inspect`` in a separate, isolated interpreter (so this process's state cannot
  change them);
* the help topics of ``pydoc_data.topics`` (the language reference text that ``help()`` shows).

Every text unit (a module, a C module, a help topic) is one *atom*; a hash of its stable name and
the seed picks its source (with SlimPajama-like weights) and, stratified within each source, its
split (about 60/20/20 of each source's documents), so no text is shared between splits or sources.
The source decides the flavour of the documents an atom becomes: RedPajamaGithub gets the module's
source file; CommonCrawl a documentation web page with navigation boilerplate that ends in the
module's source listing (as Sphinx "viewcode" pages do); C4 one reflowed docstring or comment
block per document; Wikipedia an article per module or help topic; StackExchange one "Q: ... A:"
thread per documented function or class, the answer quoting its code; ArXiv a paper with an
abstract and numbered sections; Book a chapter. (Docstrings alone are too little text: the code in
the CommonCrawl and StackExchange documents is what gives the default test split, those two plus
C4 and Wikipedia, ~400k tokens.) Documents are then shuffled by a seeded hash, so the output is
byte-identical for the same seed and interpreter (sorted iteration,
``json.dumps(ensure_ascii=False)``, one zstd frame at a fixed level).
The interpreter's version is recorded in the summary because the text depends on it.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from spectra_attn.data.corpus import SOURCE_NAMES
from spectra_attn.io import atomic_dir, atomic_path, write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_SHARES = {"train": 0.6, "validation": 0.2, "test": 0.2}
FILES_PER_SPLIT = {"train": 4, "validation": 2, "test": 2}
ZSTD_LEVEL = 3
MIN_DOC_CHARS = 120  # shorter documents are dropped (RedPajama filters tiny ones too)

GITHUB = "RedPajamaGithub"
# Weights for a standard-library module (atom), loosely after SlimPajama's token shares, with more
# weight on the four sources the data stage keeps by default so its test split is large enough.
MODULE_WEIGHTS = {
    "RedPajamaCommonCrawl": 0.28,
    "RedPajamaC4": 0.12,
    "RedPajamaWikipedia": 0.10,
    "RedPajamaStackExchange": 0.28,
    GITHUB: 0.10,
    "RedPajamaArXiv": 0.06,
    "RedPajamaBook": 0.06,
}
# C extension modules have no source file to give GitHub.
C_MODULE_WEIGHTS = {name: w for name, w in MODULE_WEIGHTS.items() if name != GITHUB}
TOPIC_WEIGHTS = {"RedPajamaWikipedia": 0.6, "RedPajamaBook": 0.4}

# Never read or imported: side effects on import, GUI toolkits, test suites, shims, or text used
# elsewhere (pydoc_data is read as help topics).
SKIP_MODULES = frozenset(
    {
        "__main__",
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "lib2to3",
        "distutils",
        "ensurepip",
        "pydoc_data",
        "readline",
        "rlcompleter",
        "msilib",
        "winreg",
        "winsound",
        "msvcrt",
        "nt",
        "xxlimited",
        "xxlimited_35",
        "xxsubtype",
        "site",
    }
)
SKIP_DIR_PARTS = frozenset({"test", "tests", "idle_test", "__pycache__"})
MAX_QUOTED_CODE_LINES = 120
KEEP_LINE_PREFIXES = (">>>", "...", "-", "*", "+", "|", "=", "#", "~")
TABLE_GAP = re.compile(r"[^\s.!?:] {2,}\S")  # column gap (not the two spaces after a sentence)


@dataclass
class Entry:
    """A documented class or function of a module."""

    qualname: str
    kind: str  # "class" or "function"
    signature: str
    doc: str
    code: str | None  # source lines, when the module has a .py file


@dataclass
class ModuleText:
    name: str
    doc: str
    entries: list[Entry] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    source: str | None = None


# --------------------------------------------------------------------------- hashing & formatting


def _hash(seed: int, purpose: str, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{purpose}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _pick(seed: int, key: str, weights: dict[str, float]) -> str:
    """A source for ``key``, drawn with ``weights`` by a hash (the same for the same seed)."""
    u = _hash(seed, "source", key) / 2**64 * sum(weights.values())
    for name in sorted(weights, key=SOURCE_NAMES.index):
        u -= weights[name]
        if u < 0:
            return name
    return sorted(weights, key=SOURCE_NAMES.index)[-1]


def _reflow(text: str) -> str:
    """Join hard-wrapped prose lines into paragraphs; keep indented, list, table and doctest
    blocks as they are."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        keep = any(
            line[:1].isspace() or line.startswith(KEEP_LINE_PREFIXES) or TABLE_GAP.search(line)
            for line in lines
        )
        paragraphs.append(block if keep else " ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


# --------------------------------------------------------------------------- reading the stdlib


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _python_files(root: Path) -> list[tuple[str, Path]]:
    """(dotted module name, file) of the readable standard-library modules, sorted by name."""
    found: list[tuple[str, Path]] = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        single, package = root / f"{top}.py", root / top / "__init__.py"
        if single.is_file():
            found.append((top, single))
        elif package.is_file():
            for path in sorted(package.parent.rglob("*.py")):
                rel = path.relative_to(root)
                parts = rel.parts
                if any(p in SKIP_DIR_PARTS or p.startswith("test") for p in parts[:-1]):
                    continue
                if path.name.startswith("test_") or path.name == "__main__.py":
                    continue
                dotted = ".".join(
                    parts[:-1] if path.name == "__init__.py" else rel.with_suffix("").parts
                )
                found.append((dotted, path))
    return sorted(found)


def _c_module_names(root: Path) -> list[str]:
    """Public standard-library modules that exist only as compiled code (builtin or lib-dynload)."""
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        if (root / f"{top}.py").exists() or (root / top).is_dir():
            continue
        names.append(top)
    return names


def _function_signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def " if isinstance(node, ast.AsyncFunctionDef) else "def "
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix}{node.name}({ast.unparse(node.args)}){returns}"


def _class_signature(node: ast.ClassDef) -> str:
    bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
    return f"class {node.name}({', '.join(bases)})" if bases else f"class {node.name}"


def _comment_blocks(lines: list[str]) -> list[str]:
    """Runs of at least three full-line comments, without the ``#`` markers."""
    blocks, current = [], []
    for line in [*lines, ""]:
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!"):
            current.append(stripped.lstrip("#").strip())
            continue
        if len(current) >= 3 and sum(len(c) for c in current) >= 80:
            blocks.append("\n".join(current))
        current = []
    return blocks


def _read_python_module(name: str, path: Path) -> ModuleText | None:
    source = path.read_bytes().decode("utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines()
    module = ModuleText(name=name, doc=ast.get_docstring(tree) or "", source=source)

    def code_of(node: ast.AST) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "\n".join(lines[start - 1 : node.end_lineno])

    def visit(body: list[ast.stmt], prefix: str, depth: int) -> None:
        for node in body:
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            qualname = f"{prefix}{node.name}"
            doc = ast.get_docstring(node)
            if isinstance(node, ast.ClassDef):
                if doc:
                    signature = _class_signature(node)
                    module.entries.append(Entry(qualname, "class", signature, doc, None))
                if depth == 0:
                    visit(node.body, f"{qualname}.", depth + 1)
            elif doc:
                signature = _function_signature(node)
                module.entries.append(Entry(qualname, "function", signature, doc, code_of(node)))

    visit(tree.body, "", 0)
    module.comments = _comment_blocks(lines)
    return module


def _c_module_docs(names: list[str]) -> dict:
    """{name: {"doc": ..., "entries": [[qualname, kind, signature, doc], ...]}} of the importable
    C modules in ``names``. Self-contained: it runs in a fresh interpreter (see _read_c_modules)."""
    import importlib
    import inspect
    import warnings

    result = {}
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # not built on this platform, or refuses to import
            continue
        entries = []
        for attr in sorted(vars(mod)):
            obj = vars(mod)[attr]
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj):
                if obj.__doc__:
                    entries.append([attr, "class", f"class {attr}", inspect.cleandoc(obj.__doc__)])
                for method in sorted(vars(obj)):
                    doc = getattr(vars(obj)[method], "__doc__", None)
                    if not method.startswith("_") and isinstance(doc, str) and doc.strip():
                        qual = f"{attr}.{method}"
                        entries.append([qual, "function", qual, inspect.cleandoc(doc)])
            elif inspect.isbuiltin(obj) and obj.__doc__:
                entries.append([attr, "function", attr, inspect.cleandoc(obj.__doc__)])
        seen, unique = set(), []
        for entry in entries:  # C docstrings repeat (inherited method docs)
            if entry[3] not in seen:
                seen.add(entry[3])
                unique.append(entry)
        doc = inspect.cleandoc(mod.__doc__ or "")
        if doc or unique:
            result[name] = {"doc": doc, "entries": unique}
    return result


def _read_c_modules(names: list[str]) -> list[ModuleText]:
    """The docstrings of the C modules ``names``, read in a fresh isolated interpreter: what this
    process has imported or patched (``sys.excepthook`` by a logging setup, say) cannot change
    them, and importing them has no side effect here."""
    script = (
        f"import json, sys\n{inspect.getsource(_c_module_docs)}\n"
        "json.dump(_c_module_docs(sys.argv[1:]), sys.stdout, ensure_ascii=True)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, *names],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"reading the docstrings of the standard library's C modules with {sys.executable} "
            f"failed:\n{completed.stderr[-2000:]}"
        )
    docs = json.loads(completed.stdout)
    return [
        ModuleText(
            name=name,
            doc=docs[name]["doc"],
            entries=[Entry(q, kind, sig, doc, None) for q, kind, sig, doc in docs[name]["entries"]],
        )
        for name in sorted(docs)
    ]


def _help_topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


# --------------------------------------------------------------------------- document flavours

NAV = "Skip to main content\nHome | Library reference | Modules | Index | Search\n"
FOOTER = (
    "\nWas this page helpful? Yes | No\nFound a bug? Report it on the issue tracker.\n"
    "Privacy | Terms of use | Contact"
)


def _common_crawl(m: ModuleText) -> Iterator[tuple[str, str]]:
    parts = [NAV, f"{m.name} — Python documentation", f"Home » Library » {m.name}", ""]
    if m.doc:
        parts += [_reflow(m.doc), ""]
    for entry in m.entries:
        parts += [entry.signature, _reflow(entry.doc), ""]
    if m.source:  # the page links its source listing, as Sphinx's viewcode pages do
        parts += [f"Source code for {m.name}", "", m.source.rstrip(), ""]
    parts.append(FOOTER)
    yield m.name, "\n".join(parts)


def _c4(m: ModuleText) -> Iterator[tuple[str, str]]:
    if m.doc:
        yield m.name, _reflow(m.doc)
    for entry in m.entries:
        yield f"{m.name}.{entry.qualname}", _reflow(entry.doc)
    for i, block in enumerate(m.comments):
        yield f"{m.name}#comment{i}", _reflow(block)


def _wikipedia(m: ModuleText) -> Iterator[tuple[str, str]]:
    intro = f"{m.name} is a module of the Python programming language's standard library."
    parts = [m.name, "", intro]
    if m.doc:
        parts += ["", _reflow(m.doc)]
    for entry in m.entries:
        if "." not in entry.qualname:
            parts += ["", f"== {entry.qualname} ==", "", _reflow(entry.doc)]
    parts += ["", "== See also ==", "", "* Python (programming language)", "* Standard library"]
    yield m.name, "\n".join(parts)


def _stack_exchange(m: ModuleText) -> Iterator[tuple[str, str]]:
    for entry in m.entries:
        paragraphs = _paragraphs(entry.doc)
        question = (
            f"Q: What does {entry.kind} `{m.name}.{entry.qualname}` do?\n\n"
            f"I came across `{entry.signature}` in the `{m.name}` module and the documentation "
            f"is not clear to me. When should I use it?"
        )
        answer = "A: " + "\n\n".join(_reflow(p) for p in paragraphs)
        if entry.code and entry.code.count("\n") < MAX_QUOTED_CODE_LINES:
            answer += f"\n\nThis is how it is implemented:\n\n```python\n{entry.code}\n```"
        yield f"{m.name}.{entry.qualname}", f"{question}\n\n{answer}"


def _arxiv(m: ModuleText) -> Iterator[tuple[str, str]]:
    paragraphs = _paragraphs(m.doc) or [f"We describe the {m.name} module."]
    parts = [f"On the design of {m.name}", "", "Abstract: " + _reflow(paragraphs[0]), ""]
    section = 1
    if paragraphs[1:]:
        parts += [f"{section} Introduction", "", _reflow("\n\n".join(paragraphs[1:])), ""]
        section += 1
    for entry in m.entries:
        parts += [f"{section} {entry.qualname}", "", _reflow(entry.doc), ""]
        section += 1
    yield m.name, "\n".join(parts).rstrip()


def _book(m: ModuleText) -> Iterator[tuple[str, str]]:
    parts = [f"CHAPTER {m.name.upper()}", ""]
    if m.doc:
        parts += [_reflow(m.doc), ""]
    parts += [_reflow(e.doc) + "\n" for e in m.entries]
    parts += [_reflow(c) + "\n" for c in m.comments]
    yield m.name, "\n".join(parts).rstrip()


def _github(m: ModuleText) -> Iterator[tuple[str, str]]:
    if m.source:
        yield m.name, m.source


FLAVOURS = {
    "RedPajamaCommonCrawl": _common_crawl,
    "RedPajamaC4": _c4,
    "RedPajamaWikipedia": _wikipedia,
    "RedPajamaStackExchange": _stack_exchange,
    GITHUB: _github,
    "RedPajamaArXiv": _arxiv,
    "RedPajamaBook": _book,
}


def _topic_document(source: str, title: str, text: str) -> str:
    heading = title.replace("-", " ").capitalize()
    if source == "RedPajamaBook":
        return f"CHAPTER {heading.upper()}\n\n{text.strip()}"
    return f"{heading}\n\n{text.strip()}\n\n== See also ==\n\n* Python (programming language)"


# --------------------------------------------------------------------------- writing


def _long_enough(docs: Iterator[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(doc_id, text) for doc_id, text in docs if len(text.strip()) >= MIN_DOC_CHARS]


def _collect_atoms(seed: int) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(atom id, source, [(doc id, text), ...]) for every atom that gives at least one document."""
    root = _stdlib_root()
    atoms = []
    for name, path in _python_files(root):
        module = _read_python_module(name, path)
        if module is None:
            continue
        atom_id = f"py:{name}"
        source = _pick(seed, atom_id, MODULE_WEIGHTS)
        docs = _long_enough(FLAVOURS[source](module))
        if not docs:  # too little prose for its flavour: it gives its source file instead
            source, docs = GITHUB, _long_enough(_github(module))
        if docs:
            atoms.append((atom_id, source, docs))
    for module in _read_c_modules(_c_module_names(root)):
        atom_id = f"c:{module.name}"
        source = _pick(seed, atom_id, C_MODULE_WEIGHTS)
        docs = _long_enough(FLAVOURS[source](module))
        if docs:
            atoms.append((atom_id, source, docs))
    for title, text in _help_topics():
        atom_id = f"topic:{title}"
        source = _pick(seed, atom_id, TOPIC_WEIGHTS)
        atoms.append((atom_id, source, [(title, _topic_document(source, title, text))]))
    return atoms


def _assign_splits(atoms, seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """split → [(doc id, source, text)]. Within each source, atoms are taken in seeded-hash order
    and each goes to the split furthest below its share of that source's documents, so every split
    gets every source (the first three atoms go to three different splits) in about 60/20/20."""
    by_source: dict[str, list] = {name: [] for name in SOURCE_NAMES}
    for atom in atoms:
        by_source[atom[1]].append(atom)
    splits: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for source in SOURCE_NAMES:
        ordered = sorted(by_source[source], key=lambda a: (_hash(seed, "split", a[0]), a[0]))
        counts = dict.fromkeys(SPLITS, 0)
        for atom_id, _, docs in ordered:
            split = min(SPLITS, key=lambda s: (counts[s] / SPLIT_SHARES[s], SPLITS.index(s)))
            counts[split] += len(docs)
            splits[split] += [(f"{atom_id}/{doc_id}", source, text) for doc_id, text in docs]
    return splits


def _write_jsonl_zst(path: Path, records: list[dict]) -> int:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
    with atomic_path(path) as tmp:
        tmp.write_bytes(compressed)
    return len(compressed)


def write_demo_corpus(out_dir: str | Path, seed: int = 0) -> dict:
    """Write the demo corpus below ``out_dir`` and return (and save as ``corpus_summary.json``)
    the number of documents and text bytes per split and source."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    atoms = _collect_atoms(seed)
    splits = _assign_splits(atoms, seed)
    logger.info(
        "read %d text units from the standard library of Python %s",
        len(atoms),
        sys.version.split()[0],
    )

    summary: dict = {
        "seed": seed,
        "python_version": sys.version.split()[0],
        "layout": "SlimPajama-627B: <split>/chunk1/example_<split>_<i>.jsonl.zst",
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:  # a killed build leaves no partial corpus
        for split in SPLITS:
            docs = sorted(splits[split], key=lambda d: (_hash(seed, "order", d[0]), d[0]))
            missing = [s for s in SOURCE_NAMES if not any(d[1] == s for d in docs)]
            if missing:
                raise RuntimeError(f"demo corpus split {split!r} got no documents of {missing}")
            n_files = FILES_PER_SPLIT[split]
            per_file = -(-len(docs) // n_files)
            files, compressed = [], 0
            for i in range(n_files):
                block = docs[i * per_file : (i + 1) * per_file]
                records = [{"text": t, "meta": {"redpajama_set_name": s}} for _, s, t in block]
                path = tmp / split / "chunk1" / f"example_{split}_{i}.jsonl.zst"
                compressed += _write_jsonl_zst(path, records)
                files.append(path.relative_to(tmp).as_posix())
            sources = {
                name: {
                    "docs": sum(1 for d in docs if d[1] == name),
                    "bytes": sum(len(d[2].encode("utf-8")) for d in docs if d[1] == name),
                }
                for name in SOURCE_NAMES
            }
            summary["splits"][split] = {
                "docs": len(docs),
                "bytes": sum(v["bytes"] for v in sources.values()),
                "compressed_bytes": compressed,
                "files": files,
                "sources": sources,
            }
            logger.info(
                "%s: %d documents, %.1f MB of text in %d files",
                split,
                len(docs),
                summary["splits"][split]["bytes"] / 1e6,
                n_files,
            )
        write_json(tmp / "corpus_summary.json", summary)
    logger.info("wrote the demo corpus to %s in %.1f s", out_dir, time.perf_counter() - started)
    return summary
