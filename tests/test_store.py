"""The results store: crash (SIGKILL) and resume equals an uninterrupted run; configs guarded."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from robustbench_iqa.errors import InputError
from robustbench_iqa.provenance import config_diff, file_sha256, run_config
from robustbench_iqa.store import RESULTS_FILE, ResultsStore, RowKey

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"model": "toy", "dataset": "toy", "defense": "fs-iqa", "sigma": 0.25, "n": 100,
          "alpha": 0.999, "attack": {"steps": 10, "norms": [0.02, 0.05]}, "seed": 0}
N_ROWS = 240


def _key(i: int) -> RowKey:
    return RowKey("audit", "toy", "fs-iqa", 0.25, f"img{i // 2:03d}", f"l2={0.02 if i % 2 else 0.05}")


def _payload(i: int) -> dict[str, object]:
    return {"i": i, "lower": i / 10, "upper": i / 10 + 1.0, "abstained": i % 7 == 0,
            "eps_x": math.inf if i % 11 == 0 else i / 1000, "tag": f"row{i}"}


def write_rows(run_dir: str, *, resume: bool, delay: float = 0.0, batch: int = 1) -> None:
    """The 'runner' of this test: skip keys already done, write the rest one small batch at a time."""
    with ResultsStore.open(run_dir, CONFIG, resume=resume) as store:
        todo = [i for i in range(N_ROWS) if not store.done(_key(i))]
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            store.put_many([(_key(i), _payload(i)) for i in chunk])
            print(f"wrote {chunk[-1]}", flush=True)
            time.sleep(delay)


def _sorted_rows(store: ResultsStore) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in store.iter_rows())


def test_sigkill_midway_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    write_rows(str(clean), resume=False, batch=3)

    code = (f"from tests.test_store import write_rows; "
            f"write_rows({str(crashed)!r}, resume=False, delay=0.01, batch=2)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("wrote"):
            seen += 1
        if seen >= 25:  # mid-run: well after start, well before the 120 batches finish
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with ResultsStore.open(crashed) as partial:
        done = partial.count()
        assert 2 * 25 <= done < N_ROWS, "the kill should have happened mid-run"
        assert sqlite3.connect(crashed / RESULTS_FILE).execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    write_rows(str(crashed), resume=True, batch=5)
    with ResultsStore.open(crashed) as a, ResultsStore.open(clean) as b:
        assert a.count() == b.count() == N_ROWS
        assert _sorted_rows(a) == _sorted_rows(b)
        keys = a.frame("audit")[["table", "model", "defense", "sigma", "image", "extra"]]
        assert not keys.duplicated().any()
    # Resuming a finished run writes nothing.
    write_rows(str(crashed), resume=True)
    with ResultsStore.open(crashed) as a:
        assert a.count() == N_ROWS


def test_config_mismatch_and_missing_resume_are_refused(tmp_path: Path) -> None:
    ResultsStore.open(tmp_path, CONFIG).close()
    with pytest.raises(InputError, match=r"different configuration.*sigma"):
        ResultsStore.open(tmp_path, {**CONFIG, "sigma": 0.5}, resume=True)
    with pytest.raises(InputError, match=r"attack\.steps"):
        ResultsStore.open(tmp_path, {**CONFIG, "attack": {"steps": 20, "norms": [0.02, 0.05]}}, resume=True)
    with pytest.raises(InputError, match="--resume"):
        ResultsStore.open(tmp_path, CONFIG)
    # Tuples and lists are the same JSON; an equal config resumes.
    same = {**CONFIG, "attack": {"steps": 10, "norms": (0.02, 0.05)}}
    with ResultsStore.open(tmp_path, same, resume=True) as store:
        assert store.config == json.loads(json.dumps(CONFIG))


def test_opening_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no results store"):
        ResultsStore.open(tmp_path / "absent")
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        ResultsStore.open(not_dir, CONFIG)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / RESULTS_FILE).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(InputError, match="results store"):
        ResultsStore.open(junk)
    with pytest.raises(InputError, match="JSON"):
        ResultsStore.open(tmp_path / "bad", {"model": object()})


def test_store_killed_before_creation_committed_can_be_created(tmp_path: Path) -> None:
    (tmp_path / RESULTS_FILE).touch()  # what a kill right after sqlite3.connect leaves
    with pytest.raises(InputError, match="no run configuration"):
        ResultsStore.open(tmp_path)
    with ResultsStore.open(tmp_path, CONFIG) as store:
        assert store.put(_key(0), _payload(0))
        assert store.count() == 1


def test_put_is_idempotent_and_frame_round_trips(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path, CONFIG) as store:
        assert store.put(_key(0), _payload(0)) is True
        assert store.put(_key(0), {"i": 999}) is False  # existing key: ignored, not overwritten
        assert store.put_many([(_key(i), _payload(i)) for i in range(6)]) == 5
        assert store.put_many([]) == 0
        store.put(RowKey("beyond", "toy", "none", 0.0, "img000", "l2=0.02"), {"clean": 0.5, "adv": 0.7})
        assert store.tables() == ["audit", "beyond"]
        assert store.count("audit") == 6 and store.count() == 7
        df = store.frame("audit")
        assert list(df["i"]) == list(range(6))
        assert df.loc[0, "eps_x"] == math.inf and df.loc[1, "eps_x"] == pytest.approx(0.001)
        assert df["abstained"].tolist() == [_payload(i)["abstained"] for i in range(6)]
        assert len(store.frame("audit", image="img001")) == 2
        assert len(store.frame("audit", sigma=0.25)) == 6
        assert store.frame("nothing").empty
        assert store.done(_key(5)) and not store.done(_key(6))
        assert store.done_keys("audit") == {_key(i) for i in range(6)}
        with pytest.raises(InputError, match="filter"):
            store.frame("audit", lower=1)


def test_sigma_is_canonical_in_keys(tmp_path: Path) -> None:
    assert RowKey("s", "m", "d", 0.1 + 0.2) == RowKey("s", "m", "d", 0.3)
    with ResultsStore.open(tmp_path, CONFIG) as store:
        assert store.put(RowKey("s", "m", "d", 0.1 + 0.2, "a"), {"v": 1})
        assert not store.put(RowKey("s", "m", "d", 0.3, "a"), {"v": 2})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"table": ""}, "non-empty"), ({"sigma": -0.1}, "sigma"), ({"sigma": math.nan}, "sigma"),
     ({"image": 3}, "image")],
)
def test_bad_keys_and_payloads(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    base: dict[str, object] = {"table": "s", "model": "m", "defense": "d", "sigma": 0.1, "image": "a"}
    with pytest.raises(InputError, match=match):
        RowKey(**{**base, **kwargs})  # type: ignore[arg-type]


def test_bad_payload_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path, CONFIG) as store:
        with pytest.raises(InputError, match="JSON"):
            store.put(_key(0), {"x": object()})
        with pytest.raises(InputError, match="mapping"):
            store.put(_key(0), [1, 2])  # type: ignore[arg-type]
        assert store.count() == 0


def test_export_csv_and_parquet_match_frame(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path / "run", CONFIG) as store:
        store.put_many([(_key(i), _payload(i)) for i in range(10)])
        store.put(_key(10), {**_payload(10), "tag": [1, 2]})  # a list next to strings
        paths = store.export(tmp_path / "out")
        frame = store.frame("audit")
    assert sorted(p.name for p in paths) == ["audit.csv", "audit.parquet"]
    pq = pd.read_parquet(tmp_path / "out" / "audit.parquet")
    csv = pd.read_csv(tmp_path / "out" / "audit.csv")
    for df in (pq, csv):
        assert len(df) == 11
        assert df["i"].tolist() == frame["i"].tolist()
        assert df["lower"].tolist() == pytest.approx(frame["lower"].tolist())
    assert pq["tag"].iloc[-1] == "[1, 2]" and pq["tag"].iloc[0] == '"row0"'
    with pytest.raises(InputError, match="format"):
        ResultsStore.open(tmp_path / "run").export(tmp_path / "o2", formats=["xlsx"])


def test_run_config_versions_and_helpers(tmp_path: Path) -> None:
    import numpy as np
    import torch

    cfg = run_config(model="m", sigma=0.25, norms=(0.1, 0.2))
    assert cfg["versions"]["torch"] == torch.__version__
    assert cfg["versions"]["numpy"] == np.__version__
    assert cfg["norms"] == [0.1, 0.2]
    assert config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == ["b.c", "d"]
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(InputError, match="not a file"):
        file_sha256(tmp_path / "none")


def test_wal_mode_is_on(tmp_path: Path) -> None:
    ResultsStore.open(tmp_path, CONFIG).close()
    mode = sqlite3.connect(tmp_path / RESULTS_FILE).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert os.path.getsize(tmp_path / RESULTS_FILE) > 0


def test_units_are_written_with_their_rows_once(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path, CONFIG) as store:
        rows = [(_key(i), _payload(i)) for i in range(4)]
        assert store.put_unit("u1", study="audit", info={"images": 2}, rows=rows[:2], seconds=0.5, worker="w") == 2
        # The same unit again (a retried worker): nothing is written twice.
        assert store.put_unit("u1", study="audit", info={"images": 2}, rows=rows, seconds=0.5, worker="w") == 0
        assert store.count() == 2 and store.done_units() == {"u1"}
        units = store.units_frame()
        assert units.loc[0, "rows"] == 2 and units.loc[0, "images"] == 2 and units.loc[0, "worker"] == "w"
        store.put_meta("gate", {"passed": True})
        assert store.get_meta("gate") == {"passed": True} and store.get_meta("none") is None
        with pytest.raises(InputError, match="reserved"):
            store.put_meta("config", {})


def test_a_unit_with_a_bad_row_writes_nothing(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path, CONFIG) as store:
        with pytest.raises(InputError, match="JSON"):
            store.put_unit("u", study="audit", info={}, rows=[(_key(0), _payload(0)), (_key(1), {"x": object()})],
                           seconds=0.0, worker="w")
        assert store.count() == 0 and not store.done_units()


def test_corrupt_and_unwritable_stores_are_clear_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with ResultsStore.open(run, CONFIG) as store:
        store.put_many([(_key(i), _payload(i)) for i in range(50)])
    data = bytearray((run / RESULTS_FILE).read_bytes())
    for wal in ("-wal", "-shm"):
        (run / (RESULTS_FILE + wal)).unlink(missing_ok=True)
    data[4096:8192] = b"\xff" * 4096  # garble pages in the middle of the file
    (run / RESULTS_FILE).write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt|not a readable"):
        with ResultsStore.open(run) as st:
            st.frame("audit")
    ro = tmp_path / "ro"
    with ResultsStore.open(ro, CONFIG):
        pass
    os.chmod(ro / RESULTS_FILE, 0o444)
    try:
        if os.access(ro / RESULTS_FILE, os.W_OK):
            pytest.skip("running as a user who can write read-only files")
        with pytest.raises(InputError, match="read-only|readonly|cannot"):
            with ResultsStore.open(ro, CONFIG, resume=True) as st:
                st.put(_key(0), _payload(0))
    finally:
        os.chmod(ro / RESULTS_FILE, 0o644)


def test_run_lock_is_exclusive_and_released_on_exit(tmp_path: Path) -> None:
    from robustbench_iqa.runlock import RunLock

    with RunLock(tmp_path / "run"):
        with pytest.raises(InputError, match=f"in use by a live run \\(pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run") as again:  # released: a later run takes it
        assert again.held
    # A lock held by a process that was killed is released by the kernel.
    code = (f"from robustbench_iqa.runlock import RunLock; RunLock({str(tmp_path / 'k')!r}).acquire(); "
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code])
    with RunLock(tmp_path / "k"):
        pass
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        RunLock(f).acquire()
