"""Rows carry checksums: a row changed after it was written is named by ``report`` and ``--resume``.

One digit edited in a stored payload (or a key field, or a row deleted from a unit) must
never be read back as a result: opening the store raises an ``InputError`` naming the
changed rows, and the CLI prints it as one ``error:`` line (exit 2).  Stores of the
previous schema (2, no checksums) stay readable and are refused for ``--resume``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.store import RESULTS_FILE, ResultsStore, RowKey, row_checksum

CONFIG = {"kind": "test", "n": 10}


def _key(i: int) -> RowKey:
    return RowKey("guarantee", "default-nr", "fs-iqa", 0.25, f"img{i}#0123456789ab")


def _store(tmp_path: Path, n: int = 4) -> Path:
    run = tmp_path / "run"
    with ResultsStore.open(run, CONFIG) as store:
        store.put_many([(_key(i), {"score": 0.5 + i / 100, "lower": 0.25, "abstained": False}) for i in range(n)])
        store.put_unit("unit-a", study="x", info={}, seconds=1.0, worker="w",
                       rows=[(RowKey("audit", "default-nr", "fs-iqa", 0.25, f"u{i}"), {"v": i}) for i in range(3)])
    return run


def _sql(run: Path, sql: str, params: tuple = ()) -> None:  # type: ignore[type-arg]
    con = sqlite3.connect(run / RESULTS_FILE)
    con.execute(sql, params)
    con.commit()
    con.close()


def test_untouched_store_opens(tmp_path: Path) -> None:
    run = _store(tmp_path)
    with ResultsStore.open(run) as store:
        assert store.count() == 7
    with ResultsStore.open(run, CONFIG, resume=True) as store:
        assert store.count("guarantee") == 4


@pytest.mark.parametrize("sql, named", [
    ("UPDATE rows SET payload = replace(payload, '0.52', '0.53') WHERE image = 'img2#0123456789ab'", "img2#"),
    ("UPDATE rows SET payload = replace(payload, 'false', 'true ') WHERE image = 'img1#0123456789ab'", "img1#"),
    ("UPDATE rows SET image = 'img9#0123456789ab' WHERE image = 'img3#0123456789ab'", "img9#"),
    ("UPDATE rows SET sigma = 0.5 WHERE image = 'img0#0123456789ab'", "sigma=0.5/img0#"),
    ("UPDATE rows SET model = 'default-fr' WHERE image = 'u1'", "audit/default-fr/fs-iqa/sigma=0.25/u1"),
])
def test_a_changed_row_is_named(tmp_path: Path, sql: str, named: str) -> None:
    run = _store(tmp_path)
    _sql(run, sql)
    for config, resume in ((None, False), (CONFIG, True)):
        with pytest.raises(InputError, match=r"1 row\(s\) changed since they were written") as info:
            ResultsStore.open(run, config, resume=resume)
        assert named in str(info.value) and "--fresh" in str(info.value)
        for other in ("img0#", "img1#", "img2#", "img3#"):
            if other not in named and other not in sql:
                assert other not in str(info.value)


def test_a_deleted_row_of_a_unit_is_named(tmp_path: Path) -> None:
    run = _store(tmp_path)
    _sql(run, "DELETE FROM rows WHERE image = 'u2'")
    with pytest.raises(InputError, match=r"1 unit\(s\) lost rows.*unit-a \(2 of 3 rows\)"):
        ResultsStore.open(run)


def test_checksum_covers_every_character() -> None:
    text = json.dumps({"score": 0.123456, "ok": True})
    base = row_checksum(_key(0), text)
    for i, ch in enumerate(text):
        changed = text[:i] + ("7" if ch != "7" else "8") + text[i + 1:]
        assert row_checksum(_key(0), changed) != base, i
    assert row_checksum(_key(1), text) != base
    assert row_checksum(RowKey("guarantee", "default-nr", "fs-iqa", 0.250000001, "img0#0123456789ab"), text) != base


def test_schema_2_stores_are_read_not_continued(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run.mkdir()
    con = sqlite3.connect(run / RESULTS_FILE)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE rows (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, model TEXT NOT NULL, defense TEXT NOT NULL,
            sigma REAL NOT NULL, image TEXT NOT NULL, extra TEXT NOT NULL, payload TEXT NOT NULL,
            created REAL NOT NULL, unit TEXT, UNIQUE (tbl, model, defense, sigma, image, extra));
        CREATE TABLE units (key TEXT PRIMARY KEY, study TEXT NOT NULL, info TEXT NOT NULL, rows INTEGER NOT NULL,
            seconds REAL NOT NULL, worker TEXT NOT NULL, finished REAL NOT NULL);
    """)
    con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    con.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps(CONFIG),))
    con.execute("INSERT INTO rows (tbl, model, defense, sigma, image, extra, payload, created) VALUES "
                "('guarantee', 'm', 'fs-iqa', 0.25, 'a', '', '{\"score\": 0.5}', 0)")
    con.commit()
    con.close()
    with ResultsStore.open(run) as store:
        assert store.version == 2 and store.frame("guarantee")["score"].tolist() == [0.5]
        with pytest.raises(InputError, match="read only"):
            store.put(_key(0), {"score": 1.0})
    with pytest.raises(InputError, match="earlier version.*schema 2.*without checksums.*--fresh"):
        ResultsStore.open(run, CONFIG, resume=True)


def _one_error(capsys: pytest.CaptureFixture[str], rc: int, *names: str) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in names:
        assert n in lines[0], (n, lines[0])


def test_cli_report_and_resume_name_the_changed_row(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "run"
    argv = ["certify", "--model", "default-nr", "--image", str(img), "--n", "64", "--alpha", "0.9",
            "--no-progress", "--json", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    con = sqlite3.connect(out / RESULTS_FILE)
    (rid, payload), = con.execute("SELECT id, payload FROM rows WHERE tbl = 'guarantee'").fetchall()
    score = json.loads(payload)["score"]
    old = repr(score)
    digit = next(i for i in range(len(old) - 1, 0, -1) if old[i].isdigit())
    edited = old[:digit] + ("1" if old[digit] != "1" else "2") + old[digit + 1:]
    assert edited in payload.replace(old, edited)
    con.execute("UPDATE rows SET payload = ? WHERE id = ?", (payload.replace(old, edited), rid))
    con.commit()
    con.close()
    _one_error(capsys, main(["report", str(out), "--no-progress"]), "changed since they were written", "a.png#")
    _one_error(capsys, main([*argv, "--resume"]), "changed since they were written", "guarantee/default-nr")
