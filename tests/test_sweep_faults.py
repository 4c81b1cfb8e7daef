"""Sweeps under faults: killed drivers, read-only stores, concurrent and changed specs, failed rows."""
import contextlib
import functools
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import TINY_SPEC, lines_without_notes

from fastlora.cli import main
from fastlora.sweep import ResultsStore, export_results, load_results, parse_spec, run_rows, run_sweep
from fastlora.sweep import runner as runner_module

FAST = """
name = "fast"
repeats = 2
[grid]
method = ["standard", "lora-ml"]
[fixed]
d = 4
k = 1
T = 2
backend = "numpy"
max_iter = 50
"""

# rows of ~40 ms, mostly drawing their data (n = 200000, however fast the solvers get): a
# driver with two workers is still busy seconds after its first commit
SLOW = (TINY_SPEC.replace('name = "tiny"', 'name = "slow"').replace("repeats = 2\n", "repeats = 24\n")
        .replace("n = 400\n", "n = 200000\n").replace("max_iter = 200", "max_iter = 400"))

needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")


def stored_count(path) -> int:
    try:
        # closed at once: an open reader would keep the writer from tidying its WAL at close
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def process_state(pid: int) -> dict:
    """Fields of /proc/<pid>/status ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def alive(pid: int) -> bool:
    state = process_state(pid)
    return bool(state) and not state["State"].startswith("Z")  # a zombie has exited


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every live child of ``pid``."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        child = int(status.parent.name)
        if process_state(child).get("PPid", "").strip() == str(pid) and alive(child):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return found


def _default_sigint():
    # a shell may start test runs with SIGINT ignored, which Python would then keep ignoring
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def sweep_process(tmp_path, text, out, *extra):
    """A ``fastlora sweep`` driver in its own process group; whatever is left of the group is killed after."""
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    cmd = [sys.executable, "-m", "fastlora.cli", "sweep", str(spec), "--out", str(out), "--no-progress", *extra]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # orphaned workers keep the group alive
        proc.communicate()


def wait_for_rows(proc, out, timeout=60.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if stored_count(out) > 0:
            return stored_count(out)
        time.sleep(0.05)
    raise AssertionError(f"no rows appeared while the driver ran (exit status {proc.poll()})")


def driver_children(proc) -> dict[int, str]:
    kids = children(proc.pid)
    workers = [p for p, cmd in kids.items() if "spawn_main" in cmd]
    assert len(workers) == 2 and any("resource_tracker" in cmd for cmd in kids.values()), kids
    return kids


def wait_until_dead(pids, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def driver_ended(proc, kids, timeout: float):
    """Wait up to ``timeout`` s for the driver and 5 s more for its children, then kill what is left
    (survivors would hold the driver's pipes open); (surviving children, stdout, stderr)."""
    proc.wait(timeout=timeout)
    survivors = wait_until_dead(kids, timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    return survivors, stdout, stderr


@contextlib.contextmanager
def busy_sweep(tmp_path, store_name: str):
    """A sweep of SLOW with two workers, once its first rows are committed: (driver, store, children)."""
    out = tmp_path / store_name
    with sweep_process(tmp_path, SLOW, out, "--workers", "2") as proc:
        wait_for_rows(proc, out)
        yield proc, out, driver_children(proc)


# ---------------------------------------------------------------------------- processes
@needs_proc
def test_sigkill_of_the_driver_leaves_no_worker_or_tracker_behind(tmp_path):
    with busy_sweep(tmp_path, "k.sqlite") as (proc, _, kids):
        assert proc.poll() is None, "the driver finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
        proc.wait()
        survivors = wait_until_dead(kids, timeout=10)
        assert not survivors, {p: kids[p] for p in survivors}
        _, stderr = proc.communicate(timeout=10)  # what the tracker said on the driver's stderr, once it ended
    # the pool holds no named semaphore: the tracker has nothing to clean up or to warn about
    assert "leaked" not in stderr and "resource_tracker" not in stderr, stderr


@needs_proc
def test_sigterm_takes_the_ctrl_c_path(tmp_path):
    with busy_sweep(tmp_path, "t.sqlite") as (proc, out, kids):
        proc.send_signal(signal.SIGTERM)
        survivors, stdout, stderr = driver_ended(proc, kids, timeout=30)
    assert not survivors
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "Terminated.", stderr
    line = re.search(r"sweep 'slow' interrupted: (\d+) row\(s\) done", stdout)
    assert line, stdout
    assert stored_count(out) == int(line.group(1)) > 0  # every finished row was committed before exit
    assert not (tmp_path / "t.sqlite-wal").exists()  # closed cleanly: one self-contained file


@needs_proc
def test_ctrl_c_commits_stops_workers_and_exits_130(tmp_path):
    with busy_sweep(tmp_path, "i.sqlite") as (proc, out, kids):
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        survivors, stdout, stderr = driver_ended(proc, kids, timeout=30)
    assert not survivors
    assert proc.returncode == 130, stderr
    assert lines_without_notes(stderr) == ["Interrupted."]  # workers ignore SIGINT: no traceback from them
    line = re.search(r"sweep 'slow' interrupted: (\d+) row\(s\) done", stdout)
    assert line and stored_count(out) == int(line.group(1)) > 0, stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_ctrl_c_while_workers_start_up_kills_none_of_them():
    # a Ctrl-C reaches the whole process group: a worker still importing numpy died with a traceback (exit -2)
    pool = runner_module._LocalPool(2, 60.0)
    try:
        for worker in pool._pool:
            os.kill(worker.process.pid, signal.SIGINT)
        rows = parse_spec(FAST).rows()[:2]
        done = [pool.submit(rows[:1]), pool.submit(rows[1:])]
        assert [len(f.result(timeout=60)[0]) for f in done] == [1, 1]
        assert all(worker.process.is_alive() for worker in pool._pool)
    finally:
        pool.close(abort=True)


def test_the_driver_ignores_ctrl_c_only_while_it_spawns_workers(monkeypatch):
    started = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest may run with SIGINT ignored (nohup)
    try:
        with runner_module._workers_ignore_sigint():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        # signal.signal runs pending Python handlers first: one that raises as the handler is restored (the
        # CLI's SIGTERM -> KeyboardInterrupt) must not leave SIGINT ignored
        real, calls = signal.signal, []

        def pending_handler_raises_once(sig, handler):
            calls.append(handler)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(sig, handler)
        monkeypatch.setattr(signal, "signal", pending_handler_raises_once)
        with pytest.raises(KeyboardInterrupt):
            with runner_module._workers_ignore_sigint():
                pass
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, started)


@needs_proc
def test_a_killed_worker_ends_the_sweep_with_its_rows_kept_and_a_resume_completes_it(tmp_path):
    """One worker SIGKILLed (as the out-of-memory killer does): the driver stops the other worker,
    keeps every committed row, says so in one line and exits 1 within seconds (it used to wait
    forever for the dead worker to wake on the stop event); a rerun completes the spec."""
    with busy_sweep(tmp_path, "w.sqlite") as (proc, out, kids):
        assert proc.poll() is None, "the driver finished before a worker could be killed"
        os.kill(next(p for p, cmd in kids.items() if "spawn_main" in cmd), signal.SIGKILL)
        committed = stored_count(out)
        try:
            survivors, _, stderr = driver_ended(proc, kids, timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver still runs 20 s after one of its workers was killed")
    assert not survivors, {p: kids[p] for p in survivors}
    assert proc.returncode == 1, stderr
    lines = lines_without_notes(stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: RuntimeError: a worker process died unexpectedly"), stderr
    assert "rerun the same command to resume" in lines[0]
    kept = stored_count(out)
    assert committed <= kept < 96  # nothing committed was lost, and the sweep did stop early
    resumed = run_sweep(parse_spec(SLOW), out, workers=2, progress=False)
    assert (resumed.skipped, resumed.done, resumed.failed) == (kept, 96 - kept, 0)
    with contextlib.closing(sqlite3.connect(out)) as db:
        keys = [key for (key,) in db.execute("SELECT row_key FROM results WHERE status = 'ok'")]
    assert len(keys) == len(set(keys)) == 96 and set(keys) == {r["row_key"] for r in parse_spec(SLOW).rows()}


@needs_proc
def test_a_stopped_worker_ends_the_sweep_after_the_stall_timeout_and_a_rerun_resumes(tmp_path):
    """A SIGSTOPped worker used to hang the sweep for ever: it gets no CPU time, so after
    --stall-timeout seconds it is killed and the sweep ends as for a dead worker."""
    out = tmp_path / "stopped.sqlite"
    with sweep_process(tmp_path, SLOW, out, "--workers", "2", "--stall-timeout", "2") as proc:
        wait_for_rows(proc, out)
        kids = driver_children(proc)
        stopped = next(p for p, cmd in kids.items() if "spawn_main" in cmd)
        os.kill(stopped, signal.SIGSTOP)
        try:
            survivors, _, stderr = driver_ended(proc, kids, timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(stopped, signal.SIGCONT)
            pytest.fail("the driver still runs 30 s after one of its workers was stopped")
    assert not survivors and not alive(stopped), {p: kids[p] for p in survivors}
    assert proc.returncode == 1, stderr
    lines = lines_without_notes(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"Error: RuntimeError: worker process {stopped} got no CPU time "
                                                   f"for 2 s"), stderr
    assert "rerun the same command to resume" in lines[0]
    kept = stored_count(out)
    resumed = run_sweep(parse_spec(SLOW), out, workers=2, progress=False)
    assert (resumed.skipped, resumed.done, resumed.failed) == (kept, 96 - kept, 0)


def test_dask_forgets_a_dead_drivers_work(tmp_path):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "d.sqlite"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster, \
            sweep_process(tmp_path, SLOW, out, "--scheduler", cluster.scheduler_address) as proc:
        wait_for_rows(proc, out)
        assert cluster.scheduler.tasks, "the driver should have work queued on the cluster"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while cluster.scheduler.tasks and time.time() < deadline:
            time.sleep(0.1)
        assert not cluster.scheduler.tasks, list(cluster.scheduler.tasks)[:5]


def free_port() -> int:
    import socket
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> None:
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def dask_process(*args):
    """A ``dask`` command (scheduler or worker) in its own process group, killed after."""
    proc = subprocess.Popen([sys.executable, "-m", "dask", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_lost_dask_scheduler_leaves_the_unfinished_rows_pending_and_a_rerun_resumes(tmp_path):
    """kill -9 of a real ``dask scheduler`` mid-sweep used to store every unfinished row as an error
    (FutureCancelledError ... scheduler-connection-lost) that a plain rerun did not retry."""
    pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "lost.sqlite"
    with dask_process("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard") as scheduler, \
            dask_process("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"):
        wait_for_port(port, timeout=60)
        with sweep_process(tmp_path, SLOW, out, "--scheduler", address) as proc:
            wait_for_rows(proc, out, timeout=120)
            os.killpg(scheduler.pid, signal.SIGKILL)
            try:
                _, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("the driver still runs 60 s after its scheduler was killed")
    assert proc.returncode == 1, stderr
    lines = lines_without_notes(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"Error: RuntimeError: the Dask scheduler at {address} was lost mid-sweep"), lines[0]
    assert "rerun the same command to resume" in lines[0]
    with contextlib.closing(sqlite3.connect(out)) as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM results GROUP BY status").fetchall())
    assert set(statuses) == {"ok"} and 0 < statuses["ok"] < 96, statuses  # nothing stored as an error
    resumed = run_sweep(parse_spec(SLOW), out, workers=2, progress=False)
    assert (resumed.skipped, resumed.done, resumed.failed) == (statuses["ok"], 96 - statuses["ok"], 0)


# ----------------------------------------------------------------------------- read-only
def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_readers_open_the_store_read_only(tmp_path):
    store = tmp_path / "store" / "r.sqlite"
    store.parent.mkdir()
    run_sweep(parse_spec(FAST), store, workers=1, progress=False)
    before = snapshot(store.parent)
    assert set(before) == {"r.sqlite", "r.sqlite.lock"}  # the writer left one database file (and its lock file)
    with ResultsStore(store) as reader:
        assert reader.readonly and len(reader.rows()[1]) == 4
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("DELETE FROM results")
    assert len(load_results(store)) == 4
    assert export_results(store, tmp_path / "r.csv", "csv") == 4
    from fastlora.sweep.plot import plot_results
    plot_results(store, "method", "objective", out=tmp_path / "fig.png")
    assert snapshot(store.parent) == before  # nothing created, nothing written


def _can_mount_read_only() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], check=False, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="unprivileged user+mount namespaces are not available")
def test_a_store_on_a_read_only_mount_is_readable(tmp_path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    run_sweep(parse_spec(FAST), shelf / "new.sqlite", workers=1, progress=False)
    legacy = shelf / "legacy.sqlite"  # a store left in WAL mode, as older versions closed it
    shutil.copy(shelf / "new.sqlite", legacy)
    with sqlite3.connect(legacy) as db:
        db.execute("PRAGMA journal_mode=WAL")
    out = tmp_path / "out"
    out.mkdir()
    export = f"{sys.executable} -m fastlora.cli export {{store}} -o {out}/{{name}}.csv"
    script = " && ".join([f"mount --bind {shelf} {shelf}", f"mount -o remount,ro,bind {shelf} {shelf}",
                          f"! touch {shelf}/probe 2>/dev/null",
                          export.format(store=shelf / "new.sqlite", name="new"),
                          export.format(store=legacy, name="legacy")])
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("wrote 4 row(s)") == 2
    assert (out / "legacy.csv").read_text() == (out / "new.csv").read_text()


# -------------------------------------------------------------------- concurrent sweeps
def test_a_second_sweep_on_a_busy_store_is_refused_naming_the_first(tmp_path):
    spec = parse_spec(FAST)
    out = tmp_path / "busy.sqlite"
    with ResultsStore(out, spec):  # a sweep writing the store right now (this process)
        with pytest.raises(ValueError, match=rf"being written by another sweep \(sweep 'fast', pid {os.getpid()} "):
            run_sweep(spec, out, workers=1, progress=False)
        spec_path = tmp_path / "fast.toml"
        spec_path.write_text(FAST)
        result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--workers", "1"])
        assert result.exit_code == 2
        lines = lines_without_notes(result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert "another --out" in result.output
    assert run_sweep(spec, out, workers=1, progress=False).done == 4  # free again once the writer closed


def test_a_killed_writer_never_blocks_a_resume(tmp_path):
    out = tmp_path / "held.sqlite"
    hold = (f"import sys, time; from fastlora.sweep import ResultsStore, parse_spec; "
            f"s = ResultsStore(sys.argv[1], parse_spec({FAST!r})); print('ready', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ValueError, match=f"pid {holder.pid} "):
            run_sweep(parse_spec(FAST), out, workers=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert run_sweep(parse_spec(FAST), out, workers=1, progress=False).done == 4


# ------------------------------------------------------------------------ changed specs
def test_a_changed_spec_is_refused_naming_the_change_unless_appended(tmp_path):
    out = tmp_path / "c.sqlite"
    run_sweep(parse_spec(FAST), out, workers=1, progress=False)
    noisier = parse_spec(FAST.replace("max_iter = 50", "max_iter = 50\nnoise = 0.05"))
    with pytest.raises(ValueError, match=r"holds 4 row\(s\) of sweep 'fast' that this spec no longer produces "
                                         r"\(noise: 0.0 -> 0.05\); pass --append"):
        run_sweep(noisier, out, workers=1, progress=False)
    assert stored_count(out) == 4
    assert run_sweep(noisier, out, workers=1, progress=False, append=True).done == 4
    assert stored_count(out) == 8
    assert run_sweep(noisier, out, workers=1, progress=False).skipped == 4  # appended once: now a resume


def test_a_dry_run_refuses_what_the_run_would_refuse(tmp_path):
    from fastlora.sweep.dryrun import dry_run
    failing = FAST.replace('method = ["standard", "lora-ml"]', 'method = ["reptile"]\nouter_lr = [0.5, 1e6]')
    out = tmp_path / "d.sqlite"
    assert run_sweep(parse_spec(failing), out, workers=1, progress=False).errors == 2
    refused = {"changed": failing.replace("max_iter = 50", "max_iter = 50\nnoise = 0.05"),
               "other keys": failing.replace("max_iter = 50", "max_iter = 50\ntol = 1e-9"),
               "renamed": failing.replace('name = "fast"', 'name = "other"'),
               "pairing": failing + 'pairing = "per-point"\n'}
    run_errors = {}
    for case, text in refused.items():
        with pytest.raises(ValueError) as run_error:
            run_sweep(parse_spec(text), out, workers=1, progress=False)
        run_errors[case] = str(run_error.value)
    before = out.read_bytes()
    for case, text in refused.items():
        with pytest.raises(ValueError) as dry_error:
            dry_run(parse_spec(text), out, time_budget=0.1)
        assert str(dry_error.value) == run_errors[case], case
    assert dry_run(parse_spec(refused["changed"]), out, append=True, time_budget=0.1).pending == 4
    assert dry_run(parse_spec(failing), out, time_budget=0.1).pending == 0
    assert dry_run(parse_spec(failing), out, retry_errors=True, time_budget=0.1).pending == 2
    assert out.read_bytes() == before  # the dry runs wrote nothing
    held = ResultsStore(out, parse_spec(failing))  # a sweep writing the store
    try:
        with pytest.raises(ValueError, match="is being written by another sweep"):
            dry_run(parse_spec(failing), out, time_budget=0.1)
    finally:
        held.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()  # an empty file: the run makes it a store, the dry run counts every row as pending
    assert dry_run(parse_spec(failing), empty, time_budget=0.1).pending == 4
    assert empty.stat().st_size == 0 and not (tmp_path / "empty.sqlite.lock").exists()


def test_more_repeats_resume_without_append(tmp_path):
    out = tmp_path / "m.sqlite"
    run_sweep(parse_spec(FAST), out, workers=1, progress=False)
    more = run_sweep(parse_spec(FAST.replace("repeats = 2", "repeats = 3")), out, workers=1, progress=False)
    assert (more.skipped, more.done) == (4, 2)  # every stored row still belongs to the spec


def test_a_renamed_spec_does_not_silently_reuse_rows(tmp_path):
    out = tmp_path / "n.sqlite"
    run_sweep(parse_spec(FAST), out, workers=1, progress=False)
    renamed_text = FAST.replace('name = "fast"', 'name = "quick"')
    spec_path = tmp_path / "quick.toml"
    spec_path.write_text(renamed_text)
    result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 2
    assert "already holds rows of spec 'quick' under another name (4 by sweep 'fast')" in result.output
    for extra in (["--append"], []):  # once appended, the renamed spec resumes
        result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--workers", "1", *extra])
        assert result.exit_code == 0, result.output
        assert "0 row(s) done (0 error(s)), 4 already in" in result.output


# ----------------------------------------------------------------------------- failures
def test_failed_rows_exit_1_with_their_messages(tmp_path):
    # Reptile with an outer step of 1e6 diverges: every row fails
    text = FAST.replace('method = ["standard", "lora-ml"]', 'method = ["reptile"]\nouter_lr = [1e6]')
    spec_path = tmp_path / "bad.toml"
    spec_path.write_text(text)
    out = tmp_path / "bad.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: 2 of 2 row(s) of sweep 'fast' failed; first distinct error(s): (1) ")
    assert error.count("DivergenceError") == 2 and "(3)" not in error  # each row's message, distinct numbers
    again = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(out), "--workers", "1"])
    assert again.exit_code == 1 and "2 of 2 row(s)" in again.output  # stored failures still count


def test_a_clean_sweep_exits_0(tmp_path):
    spec_path = tmp_path / "fast.toml"
    spec_path.write_text(FAST)
    result = CliRunner().invoke(main, ["sweep", str(spec_path), "--out", str(tmp_path / "ok.sqlite"),
                                       "--workers", "1"])
    assert result.exit_code == 0 and "Error" not in result.output, result.output


def test_one_bad_row_in_a_chunk_is_one_error_row():
    good = parse_spec(FAST).rows()[0]
    bad = {**good, "point": {**good["point"], "method": "lora-ml", "rank": 9}}  # rank > d = 4
    outcomes = run_rows([good, bad, good])
    assert [o["status"] for o in outcomes] == ["ok", "error", "ok"]
    assert "rank" in outcomes[1]["error"]
    assert outcomes[0]["objective"] == outcomes[2]["objective"]



@pytest.mark.parametrize("n", [None, 300])
def test_rows_of_one_point_draw_their_problems_together_as_alone(monkeypatch, n):
    """A chunk's rows of one point build their problems in one call (fastlora.problems.make_linear_problems):
    each row's numbers are those it gets alone, paired truth seeds too; where that call fails, the rows build
    one by one, each with its own error."""
    import fastlora.problems as problems_module
    spec = FAST.replace("repeats = 2", "repeats = 4").replace("[fixed]", "[fixed]\nnoise = 0.1"
                                                              + ("" if n is None else f"\nn = {n}"))
    rows = parse_spec(spec).rows()
    assert any(row["truth_seed"] != row["seed"] for row in rows)
    built = []
    together_call = problems_module.make_linear_problems

    @functools.wraps(together_call)  # its signature: the keys it takes
    def spy(seeds, *args, **kwargs):
        built.append(len(seeds))
        return together_call(seeds, *args, **kwargs)
    monkeypatch.setattr(problems_module, "make_linear_problems", spy)
    keys = ("objective", "n_iter", "rel_err_A", "excess_risk")
    together = run_rows(rows)
    assert built == [4, 4]  # one call a retraining (method): 4 seeds each
    alone = [run_rows([row])[0] for row in rows]
    assert [[o[k] for k in keys] for o in together] == [[o[k] for k in keys] for o in alone]

    @functools.wraps(together_call)
    def failing(seeds, *args, **kwargs):  # many at once fail; one (make_problem's own call) does not
        if len(seeds) > 1:
            raise MemoryError("no room for them all")
        return together_call(seeds, *args, **kwargs)
    monkeypatch.setattr(problems_module, "make_linear_problems", failing)
    one_by_one = run_rows(rows)
    assert [[o[k] for k in keys] for o in one_by_one] == [[o[k] for k in keys] for o in alone]
    monkeypatch.setattr(problems_module, "make_linear_problems", spy)
    built.clear()
    bad = {**rows[0], "point": {**rows[0]["point"], "noise": -1.0}}  # each row its own error, the others go on
    outcomes = run_rows([bad, rows[1], {**rows[2], "point": bad["point"]}])
    assert [o["status"] for o in outcomes] == ["error", "ok", "error"] and "noise" in outcomes[0]["error"]
    assert built[0] == 2  # the two bad rows were drawn together first (then one by one, for their errors)


def test_rows_differing_only_in_evaluation_keys_share_one_retraining(monkeypatch):
    import fastlora as fl
    rows = parse_spec(FAST.replace("[grid]", "[grid]\nn_ft = [20, 40]")).rows()  # 2 methods x 2 n_ft x 2 seeds
    alone = [run_rows([row])[0] for row in rows]
    retrained = []
    retrain_many = fl.retrain_many

    def spy(problems, **kwargs):
        retrained.extend(kwargs["seeds"])
        return retrain_many(problems, **kwargs)

    monkeypatch.setattr(fl, "retrain_many", spy)
    together = run_rows(rows)
    assert len(retrained) == 4  # (method, seed) pairs, not 8 rows
    for a, b in zip(alone, together):
        assert b["status"] == "ok"
        assert (a["objective"], a["excess_risk"], a["n_iter"]) == (b["objective"], b["excess_risk"], b["n_iter"])
    by_n = {row["point"]["n_ft"]: out["excess_risk"] for row, out in zip(rows, together)
            if row["point"]["method"] == "lora-ml" and row["repeat"] == 0}
    assert by_n[20] != by_n[40]  # each row still fine-tunes with its own n_ft
    chunker = runner_module._Chunker(rows, workers=1)
    probe = chunker.take()  # the first retraining's rows, whatever the spec's point order
    assert [r["point"]["n_ft"] for r in probe] == [20, 40] and len({r["seed"] for r in probe}) == 1
    assert sorted(r["row_key"] for r in chunker.rows) == sorted(r["row_key"] for r in rows)

# ------------------------------------------------------------------ batching and columns
def test_rows_are_committed_in_batches(tmp_path, monkeypatch):
    batches = []
    add_rows = ResultsStore.add_rows

    def spy(self, spec, finished):
        batches.append(len(finished))
        return add_rows(self, spec, finished)

    monkeypatch.setattr(ResultsStore, "add_rows", spy)
    started = time.perf_counter()
    summary = run_sweep(parse_spec(FAST.replace("repeats = 2", "repeats = 20")), tmp_path / "b.sqlite", workers=1,
                        progress=False)
    seconds = time.perf_counter() - started
    assert summary.done == sum(batches) == 40 and stored_count(tmp_path / "b.sqlite") == 40
    assert len(batches) <= seconds / runner_module.COMMIT_SECONDS + 2 and len(batches) < 40, batches


def test_chunks_hold_one_point_sized_by_its_measured_row_time():
    rows = parse_spec(FAST.replace("repeats = 2", "repeats = 30")).rows()  # 30 standard, then 30 lora-ml rows
    chunker = runner_module._Chunker(rows, workers=1)
    probe = chunker.take()
    assert len(probe) == 1  # nothing measured yet
    chunker.observe(probe, seconds=runner_module.CHUNK_SECONDS / 10)
    assert [len(chunker.take()) for _ in range(3)] == [10, 10, 9]  # the rest of the point, not beyond
    assert len(chunker.take()) == 1 and chunker.rows[chunker.next - 1]["point"]["method"] == "lora-ml"
    fast = runner_module._Chunker(rows, workers=4)
    fast.observe(fast.take(), seconds=1e-7)
    assert len(fast.take()) == 15  # ceil(59 rows left / 4 workers): the last rows spread over every worker
    big = runner_module._Chunker(parse_spec(FAST.replace("repeats = 2", "repeats = 1000")).rows(), workers=1)
    big.observe(big.take(), seconds=1e-7)
    assert len(big.take()) == runner_module.MAX_CHUNK_ROWS


def test_the_store_records_what_ran_and_upgrades_old_stores(tmp_path, monkeypatch):
    from fastlora.config import settings
    monkeypatch.setattr(settings, "default_backend", "numpy")  # what "auto" resolves to (no kernel compiles)
    out = tmp_path / "u.sqlite"
    text = FAST.replace('backend = "numpy"', 'backend = "auto"')
    run_sweep(parse_spec(text), out, workers=1, progress=False)
    frame = load_results(out).sort_values("method")
    assert set(frame["backend"]) == {"auto"} and list(frame["backend_used"]) == ["numpy"] * 4
    # lora-ml, then standard (res.info["solver"] names the closed form where there is no solver choice)
    assert list(frame["solver_used"].fillna("-")) == ["als", "als", "closed-form", "closed-form"]
    with sqlite3.connect(out) as db:  # a store written before these columns existed
        db.execute("ALTER TABLE results DROP COLUMN backend_used")
        db.execute("ALTER TABLE results DROP COLUMN solver_used")
    assert "backend_used" not in load_results(out).columns  # old stores stay readable
    more = run_sweep(parse_spec(text.replace("repeats = 2", "repeats = 3")), out, workers=1, progress=False)
    assert more.done == 2
    frame = load_results(out)
    assert frame["backend_used"].isna().sum() == 4 and frame["backend_used"].notna().sum() == 2


def test_rows_record_whether_their_fine_tunings_converged(tmp_path):
    # lora_sym fine-tuning from 2 samples at d = 4, rank 2 can have no minimiser (UUᵀ unbounded on the samples'
    # null space): its adapter runs off (excess risk 1e3-1e8); where the solver then stops at max_iter the row
    # must say so. lora's exact fit always converges.
    text = ('name = "ft"\nrepeats = 4\n[grid]\nft_peft = ["lora", "lora_sym"]\n[fixed]\nmethod = "lora-ml"\n'
            'd = 4\nk = 1\nT = 3\nnoise = 0.1\nn_ft = 2\nft_rank = 2\nbackend = "numpy"\n')
    out = tmp_path / "ft.sqlite"
    summary = run_sweep(parse_spec(text), out, workers=1, progress=False)
    frame = load_results(out)
    unconverged = int(((frame["converged"] == 0) | (frame["ft_converged"] == 0)).sum())
    assert summary.unconverged == unconverged > 0  # the end-of-sweep line counts them
    assert f"(0 error(s), {unconverged} not converged)" in summary.line("ft", out)
    lora, lora_sym = (frame[frame["ft_peft"] == name] for name in ("lora", "lora_sym"))
    assert list(lora["ft_converged"]) == [1] * 4
    assert set(lora_sym["ft_converged"]) <= {0, 1} and 0 in set(lora_sym["ft_converged"])
    assert (lora_sym.loc[lora_sym["ft_converged"] == 0, "excess_risk"] > 1e3).all()
    # a store written before the column existed: plot says why it is missing, and lists what the store has
    with sqlite3.connect(out) as db:
        db.execute("ALTER TABLE results DROP COLUMN ft_converged")
    res = CliRunner().invoke(main, ["plot", str(out), "--x", "ft_peft", "--y", "ft_converged",
                                    "-o", str(tmp_path / "f.png")])
    assert res.exit_code == 2 and "written by an older fastlora" in res.output
    assert "columns: " in res.output and "ft_converged" not in res.output.split("columns: ")[1]
