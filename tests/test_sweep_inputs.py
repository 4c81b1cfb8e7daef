"""Spec files and stores a new user brings: encodings, repeated grid values, damaged or foreign stores."""
import sqlite3

import pytest
from click.testing import CliRunner
from helpers import TINY_SPEC, lines_without_notes

from fastlora.cli import main
from fastlora.errors import FastLoRAError
from fastlora.sweep import load_spec, parse_spec


def one_error_line(result) -> str:
    lines = lines_without_notes(result.output)
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------ spec files
def test_a_spec_that_is_not_utf8_is_refused_naming_the_file_and_the_byte(tmp_path):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes(TINY_SPEC.replace('name = "tiny"', 'name = "tiny"\ndescription = "Größe"').encode("latin-1"))
    offset = spec.read_bytes().index(b"\xf6")
    line = one_error_line(CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "x.sqlite")]))
    assert str(spec) in line and f"byte 0xf6 at offset {offset}" in line and "UTF-8" in line
    assert not (tmp_path / "x.sqlite").exists()


def test_a_spec_with_a_utf8_byte_order_mark_is_read(tmp_path):
    spec = tmp_path / "bom.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + TINY_SPEC.encode())
    assert load_spec(spec).name == "tiny"


def test_repeated_grid_values_are_refused_naming_the_key():
    with pytest.raises(FastLoRAError, match=r"grid key 'T' lists 3 more than once"):
        parse_spec(TINY_SPEC.replace("T = [2, 3]", "T = [3, 2, 3]"))


# ------------------------------------------------------------------------------ stores
@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    from fastlora.sweep import run_sweep
    out = tmp_path_factory.mktemp("store") / "r.sqlite"
    run_sweep(parse_spec(TINY_SPEC), out, workers=1, progress=False)
    return out


def damaged_copy(store, tmp_path, object_name: str):
    """A copy of ``store`` with garbage over the root page of the table or index ``object_name``."""
    with sqlite3.connect(store) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (object_name,)).fetchone()[0]
    data = bytearray(store.read_bytes())
    start = (root - 1) * page_size
    data[start:start + page_size] = bytes((i * 97 + 13) % 256 for i in range(page_size))
    copy = tmp_path / f"damaged-{object_name}.sqlite"
    copy.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("object_name", ["results", "sqlite_autoindex_results_1"])
def test_a_damaged_store_is_refused_naming_it_by_every_reader_and_the_sweep(finished_store, tmp_path, object_name):
    """Garbage over a data page used to give 'database disk image is malformed' without the file's
    name (exit 1), and over the index page, export and plot exited 0 as if nothing were wrong."""
    from fastlora.sweep import load_results
    damaged = damaged_copy(finished_store, tmp_path, object_name)
    runner = CliRunner()
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY_SPEC)
    for args in (["export", str(damaged), "-o", str(tmp_path / "out.csv")],
                 ["plot", str(damaged), "--x", "T", "-o", str(tmp_path / "fig.png")],
                 ["sweep", str(spec), "--out", str(damaged)]):
        line = one_error_line(runner.invoke(main, args))
        assert f"results store {str(damaged)!r} is damaged" in line, (args, line)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "fig.png").exists()
    with pytest.raises(FastLoRAError, match="is damaged"):
        load_results(damaged)


def test_a_sweep_into_another_program_s_database_is_refused(tmp_path):
    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY_SPEC)
    before = other.read_bytes()
    line = one_error_line(CliRunner().invoke(main, ["sweep", str(spec), "--out", str(other)]))
    assert "another program (table(s) users), not a fastlora results store" in line
    assert other.read_bytes() == before


def test_a_new_store_is_marked_as_a_fastlora_store(finished_store):
    from fastlora.sweep.store import APPLICATION_ID
    with sqlite3.connect(finished_store) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_parquet_keeps_the_declared_type_of_a_metric_column_with_no_values(finished_store, tmp_path):
    """test_loss, test_accuracy and the census fractions are NULL in every row of a linear sweep:
    their Parquet columns used to be typed object (null) instead of double."""
    pq = pytest.importorskip("pyarrow.parquet")
    from fastlora.sweep import export_results
    out = tmp_path / "r.parquet"
    export_results(finished_store, out)
    schema = pq.read_schema(out)
    assert str(schema.field("test_loss").type) == "double" and str(schema.field("min_hessian_eig").type) == "double"
    assert str(schema.field("n_iter").type) == "int64" and str(schema.field("error").type) == "string"
    assert str(schema.field("rel_err_A").type) == "double" and str(schema.field("n").type) == "int64"


# ------------------------------------------------------------- checks made when a spec is read
SQUARE = TINY_SPEC.replace('method = ["standard", "lora-ml"]', 'method = ["lora-ml"]')


@pytest.mark.parametrize("grid,needle", [
    ('model = ["linear", "shallow"]\nn = ["population", 300]', "model='shallow' needs a finite n"),
    ('model = ["shallow"]\nn_ft = ["population", 50]', "model='shallow' fine-tunes on a number of samples"),
    ('model = ["linear", "shallow"]\nrank_tol = [1e-5]', "rank_tol .* do not apply to model='shallow'"),
])
def test_a_shallow_point_in_population_mode_is_refused_naming_it(grid, needle):
    """n_ft='population' was stored for shallow rows that fine-tuned on the task's own data."""
    with pytest.raises(FastLoRAError, match=needle) as info:
        parse_spec(f'name = "m"\n[grid]\n{grid}\n[fixed]\nd = 6\nk = 1\nT = 3\nn = 300\n'.replace(
            "n = 300\n", "" if "n = [" in grid else "n = 300\n"))
    assert "d=6" in str(info.value) and "[[grid]]" in str(info.value)


@pytest.mark.parametrize("change,needle", [
    (("[fixed]", '[fixed]\npeft = "dora"\nsolver = "als"'), "depends on the shared matrix A (uses_base), so ALS"),
    (("d = 8", "d = 8\nd_out = 6\nsymmetric = false\npeft = \"lora\"\nft_peft = \"lora_sym\""),
     "ft_peft: peft='lora_sym' needs square weights but d_out=6 != d_in=8"),
    (("d = 8\nk = 1\nn = 400", "d = 100000\nk = 1\nn = \"population\""), "needs about"),
    (("T = [2, 3]", "T = [100000000]"), "needs about"),
    (("n = 400", "n = 10000000000"), "random normals with sampler='raw'"),
])
def test_what_the_api_refuses_before_a_solve_is_refused_when_the_spec_is_read(tmp_path, monkeypatch, change,
                                                                               needle):
    from fastlora import config
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 16 * 10**9)
    if "dora" in change[1]:
        pytest.importorskip("fastlora_dora")
    with pytest.raises(FastLoRAError, match=needle.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_spec(SQUARE.replace(*change))
    assert "implicit" not in str(info.value)  # a spec has no implicit key to offer


def test_a_dataset_spec_asking_more_fine_tuning_samples_than_exist_is_refused():
    pytest.importorskip("sklearn")
    text = ('name = "d"\n[grid]\nmethod = ["standard"]\n[fixed]\ndataset = "digits"\nft_rank = 1\nn_ft = 10000\n'
            'max_iter = 5\n')
    with pytest.raises(FastLoRAError, match=r"n_ft=10000 is more than the 248 samples"):
        parse_spec(text)
    parse_spec(text.replace("n_ft = 10000", "n_ft = 248"))


# ------------------------------------------------------------------- fastlora store info | prune
FAILING = TINY_SPEC.replace("[fixed]", '[fixed]\nouter_lr = 1e6').replace(
    'method = ["standard", "lora-ml"]', 'method = ["reptile"]')  # an outer step of 1e6 diverges


def test_failed_rows_point_at_store_prune_and_a_fixed_spec_then_runs(tmp_path):
    """The advice after failed rows used to be '--retry-errors' alone, which cannot work when the
    fix changes the spec (refused while the store holds the old version's rows)."""
    runner = CliRunner()
    spec, out = tmp_path / "spec.toml", tmp_path / "r.sqlite"
    spec.write_text(FAILING)
    failed = runner.invoke(main, ["sweep", str(spec), "--out", str(out), "--no-progress"])
    assert failed.exit_code == 1
    assert f"fastlora store prune {out} --errors" in failed.output.splitlines()[-1]
    spec.write_text(FAILING.replace("outer_lr = 1e6", "outer_lr = 0.5"))
    refused = one_error_line(runner.invoke(main, ["sweep", str(spec), "--out", str(out), "--no-progress"]))
    assert f"fastlora store prune {out} --sweep tiny --spec-version 1" in refused
    info = runner.invoke(main, ["store", "info", str(out)])
    assert info.exit_code == 0 and "tiny" in info.output and "4" in info.output, info.output
    pruned = runner.invoke(main, ["store", "prune", str(out), "--errors"])
    assert pruned.exit_code == 0 and pruned.output.strip() == f"dropped 4 row(s) from {out}"
    fixed = runner.invoke(main, ["sweep", str(spec), "--out", str(out), "--no-progress"])
    assert fixed.exit_code == 0, fixed.output
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT status, COUNT(*) FROM results GROUP BY status").fetchall() == [("ok", 4)]


def test_prune_by_spec_version_lets_a_changed_spec_run_without_append(tmp_path):
    from fastlora.sweep import run_sweep
    from fastlora.sweep.store import describe_store, prune_store
    out = tmp_path / "r.sqlite"
    run_sweep(parse_spec(TINY_SPEC), out, workers=1, progress=False)
    changed = parse_spec(TINY_SPEC.replace("noise = 0.05", "noise = 0.1"))
    with pytest.raises(FastLoRAError, match="--spec-version 1"):
        run_sweep(changed, out, workers=1, progress=False)
    assert [(e["version"], e["rows"]) for e in describe_store(out)] == [(1, 8), (None, 8)]
    with pytest.raises(FastLoRAError, match="has 1 recorded version"):
        prune_store(out, spec_version=2)
    assert prune_store(out, spec_version=1) == 8
    assert run_sweep(changed, out, workers=1, progress=False).done == 8
    assert [(e["version"], e["rows"]) for e in describe_store(out)] == [(1, 8), (None, 8)]


def test_prune_needs_something_to_prune_and_respects_the_writer_lock(tmp_path):
    from fastlora.sweep.store import WriterLock
    out = tmp_path / "r.sqlite"
    from fastlora.sweep import run_sweep
    run_sweep(parse_spec(TINY_SPEC), out, workers=1, progress=False)
    line = one_error_line(CliRunner().invoke(main, ["store", "prune", str(out)]))
    assert "nothing to prune" in line
    lock = WriterLock(out, "tiny")
    try:
        line = one_error_line(CliRunner().invoke(main, ["store", "prune", str(out), "--errors"]))
        assert "is being written by another sweep" in line
    finally:
        lock.release()


# --------------------------------------------------------------- one name per concept (n_starts)
CENSUS = 'name = "c"\n[grid]\nT = [3]\n[fixed]\nd = 5\nk = 1\nbackend = "numpy"\nn_starts = 2\n'


def test_census_starts_is_a_deprecated_spelling_of_n_starts_with_the_same_rows():
    import hashlib
    import json

    from fastlora.options import FastLoRADeprecationWarning
    current = parse_spec(CENSUS)
    with pytest.warns(FastLoRADeprecationWarning, match="'census_starts' is deprecated, write 'n_starts'"):
        old = parse_spec(CENSUS.replace("n_starts", "census_starts"))
    assert old.rows() == current.rows()
    # row keys hash the spelling stores were written with: stores written before the rename resume
    point = {("census_starts" if k == "n_starts" else k): v for k, v in current.points()[0].items()
             if k not in current.filled}  # keys filled where the spec is silent do not enter row keys
    text = json.dumps(point, sort_keys=True, separators=(",", ":"))
    assert current.rows()[0]["row_key"] == hashlib.sha256(f"{text}|0|0".encode()).hexdigest()
    with pytest.raises(FastLoRAError, match="are one key"), pytest.warns(FastLoRADeprecationWarning):
        parse_spec(CENSUS.replace("n_starts = 2", "n_starts = 2\ncensus_starts = 2"))


def test_a_store_written_with_census_starts_resumes_under_n_starts(tmp_path):
    from fastlora.sweep import load_results, run_sweep
    out = tmp_path / "c.sqlite"
    run_sweep(parse_spec(CENSUS), out, workers=1, progress=False)
    with sqlite3.connect(out) as db:
        db.execute('ALTER TABLE results RENAME COLUMN "n_starts" TO "census_starts"')  # as fastlora wrote it before
    assert "n_starts" in load_results(out).columns  # readers show the current name
    resumed = run_sweep(parse_spec(CENSUS), out, workers=1, progress=False)
    assert (resumed.skipped, resumed.done) == (1, 0)
    with sqlite3.connect(out) as db:
        assert "n_starts" in [row[1] for row in db.execute("PRAGMA table_info(results)")]


# --------------------------------------------------------------------------------- --workers
def test_more_workers_than_cores_is_noted_and_workers_with_a_scheduler_is_refused(tmp_path, monkeypatch):
    from fastlora.sweep import runner
    monkeypatch.setattr(runner, "usable_cores", lambda: 2)
    spec, out = tmp_path / "spec.toml", tmp_path / "r.sqlite"
    spec.write_text(TINY_SPEC.replace("repeats = 2", "repeats = 1"))
    line = one_error_line(CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "3",
                                                    "--scheduler", "tcp://127.0.0.1:9"]))
    assert line.startswith("Error: --workers 3 sets local worker processes; with --scheduler") and not out.exists()
    many = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "3", "--no-progress"])
    assert many.exit_code == 0, many.output
    assert ("note: --workers 3 is more than the 2 usable core(s) of this machine: the extra processes only compete "
            "for them (slower, and more memory); use --workers 2") in many.output.splitlines()
