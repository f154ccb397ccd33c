"""Which files in a report folder the suite wrote, so that starting over removes those and nothing else.

Every report written into a folder records the files it wrote in that folder's
manifest, ``.robustbench_iqa-written.json`` (paths relative to the folder).
:func:`remove_written` (used by ``verify --fresh``) deletes exactly the regular files
the manifest lists, never following a symbolic link and never leaving the folder,
then the folders that became empty: a user's own file in ``RUN_DIR/report``, or a
``report`` that is a link to somewhere else, is kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

MANIFEST = ".robustbench_iqa-written.json"


def record_written(folder: str | Path, files: Iterable[str | Path]) -> None:
    """Add ``files`` (inside ``folder``) to ``folder``'s manifest; files outside it are ignored."""
    root = Path(folder)
    if root.is_symlink() or not root.is_dir():
        return
    names = set(_read(root) or ())
    base = root.resolve()
    for f in files:
        p = Path(f)
        try:
            rel = (p if p.is_absolute() else Path.cwd() / p).resolve().relative_to(base)
        except (ValueError, OSError):
            continue
        names.add(rel.as_posix())
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(sorted(names), indent=0), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)


def remove_written(folder: str | Path) -> list[Path]:
    """Delete the files ``folder``'s manifest lists (and the manifest, and folders left empty).

    A ``folder`` that is a symbolic link, or has no manifest, is left alone.  Returns the
    paths kept because the suite did not write them (for a note)."""
    root = Path(folder)
    if root.is_symlink() or not root.is_dir():
        return [root] if root.is_symlink() else []
    listed = _read(root)
    if listed is None:
        return [root]
    for rel in listed:
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute() or _linked(root, p):
            continue
        if p.is_file() and not p.is_symlink():
            p.unlink()
    (root / MANIFEST).unlink(missing_ok=True)
    for d in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                    key=lambda p: len(p.parts), reverse=True):
        _rmdir_if_empty(d)
    kept = sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
    _rmdir_if_empty(root)
    return kept


def _read(root: Path) -> list[str] | None:
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [str(x) for x in data] if isinstance(data, list) else None


def _linked(root: Path, p: Path) -> bool:
    """Whether a folder between ``root`` and ``p`` is a symbolic link (then ``p`` is elsewhere)."""
    q = p.parent
    while q != root and root in q.parents:
        if q.is_symlink():
            return True
        q = q.parent
    return False


def _rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass
