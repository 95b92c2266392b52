"""Atomic writes (pdseg_cli.data.atomic): whole files or none, temporaries that fit any name, and
the leftovers of killed writers removed without touching a running writer's."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import dead_pid

from pdseg_cli.data import atomic


def _leftover(target: Path, pid: int) -> Path:
    """A temporary of ``target`` as process ``pid`` of this host would have named it."""
    return target.with_name(atomic.temp_name(target).replace(f".{os.getpid()}-", f".{pid}-", 1))


def test_a_write_is_whole_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.png"]
    with atomic.atomic_path(target) as tmp:
        assert (
            tmp.parent == tmp_path
            and tmp.name.startswith(".m.png.")
            and tmp.name.endswith(atomic.TEMP_SUFFIX)
        )
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_bytes_are_written_beside_the_file_and_renamed_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What predict writes every output with: the old file stays whole until the rename, and a
    rename that fails (a full disk, a file held open on Windows) leaves no temporary behind."""
    from pdseg_cli.data import images as imio

    out = tmp_path / "a.png"
    out.write_bytes(b"old")

    def rename_fails(tmp: Path, target: Path) -> None:
        assert target.read_bytes() == b"old" and tmp.read_bytes() == b"new"
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_replace", rename_fails)
    with pytest.raises(OSError):
        imio.write_bytes_atomic(out, b"new")
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_only_dead_writers_leftovers_of_that_file_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    dead = dead_pid()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = _leftover(target, dead)
        kept = [
            _leftover(target, running.pid),  # a write of the same file still going on
            _leftover(target, os.getpid()),  # this process's own
            _leftover(tmp_path / "best.pt", dead),  # another file's: its own next write removes it
            target.with_name(stale.name.replace(f"-{atomic._HOST}-", "-abcdef-")),  # another host's
            tmp_path / f".last.pt.{dead}.tmp",  # not a name pdseg writes
            tmp_path / (stale.name + ".bak"),
        ]
        for path in [stale, *kept]:
            path.write_bytes(b"x")
        folder = _leftover(target, dead_pid())
        folder.mkdir()  # a folder is never removed
        assert atomic.remove_stale_temporaries(target) == [stale]
        assert all(path.is_file() for path in kept) and folder.is_dir()
    finally:
        running.kill()
        running.wait()
    # once that write has ended too, its leftover goes with the next write that sweeps
    with atomic.atomic_path(target, sweep=True) as tmp:
        tmp.write_bytes(b"whole")
    assert not kept[0].exists() and target.read_bytes() == b"whole"


@pytest.mark.parametrize("stem", ["a" * 250, "é" * 123])
def test_a_long_name_gets_a_temporary_that_fits_and_is_found_again(tmp_path: Path, stem: str) -> None:
    target = tmp_path / (stem + ".pt")  # 253 and 249 bytes: names that fit, whose temporaries would not
    try:
        target.write_bytes(b"")
    except OSError:
        pytest.skip("this file system takes shorter names")
    name = atomic.temp_name(target)
    assert len(os.fsencode(name)) <= 255 and name.startswith(".") and name.endswith(atomic.TEMP_SUFFIX)
    assert "~" in name and name.encode().decode() == name  # cut at whole characters, marked
    stale = _leftover(target, dead_pid())
    stale.write_bytes(b"x")
    assert atomic.remove_stale_temporaries(target) == [stale]


def test_the_name_limit_is_asked_of_the_nearest_existing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def pathconf(path: object, name: str) -> int:
        asked.append(str(path))
        return 50

    monkeypatch.setattr(os, "pathconf", pathconf)
    assert atomic.name_max(tmp_path / "deep" / "out") == 50 and asked == [str(tmp_path)]

    def unsupported(path: object, name: str) -> int:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "pathconf", unsupported)
    assert atomic.name_max(tmp_path) == 255  # a file system that will not say: Linux's NAME_MAX


def test_long_names_that_start_alike_keep_their_temporaries_apart(tmp_path: Path) -> None:
    a, b = tmp_path / ("b" * 240 + "A.pt"), tmp_path / ("b" * 240 + "B.pt")
    assert atomic._prefix(a) != atomic._prefix(b) and atomic._prefix(a).startswith(".bbb")
    stale_b = _leftover(b, dead_pid())
    stale_b.write_bytes(b"x")
    assert atomic.remove_stale_temporaries(a) == [] and stale_b.exists()
    assert atomic.remove_stale_temporaries(b) == [stale_b]


def test_a_folder_sweep_removes_every_dead_writers_leftover_and_nothing_else(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = [_leftover(tmp_path / "config.json", dead), _leftover(tmp_path / ("é" * 130 + ".png"), dead)]
    kept = [
        _leftover(tmp_path / "last.pt", os.getpid()),  # a write going on
        tmp_path / "mask.png",
        tmp_path / f".config.json.{dead}.tmp",
        tmp_path / atomic.TEMP_SUFFIX,  # a token alone is no temporary of a file
    ]
    for path in [*stale, *kept]:
        path.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    deeper = _leftover(tmp_path / "sub" / "m.png", dead)  # subfolders are their own writers' to sweep
    deeper.write_bytes(b"x")
    assert sorted(atomic.sweep_folder(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in [*kept, deeper])
    assert atomic.sweep_folder(tmp_path / "missing") == []


def test_a_file_system_that_counts_characters_is_asked_not_judged_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # APFS and NTFS take 255 characters: 90 of 日 and "_composite.png" are 284 bytes, and fit there
    name = "日" * 90 + "_composite.png"
    real_lstat = os.lstat

    def counts_characters(path: str | os.PathLike[str], *args: object, **kw: object) -> os.stat_result:
        if len(os.path.basename(path)) > 255:
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        if len(os.fsencode(os.path.basename(path))) > 255:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return real_lstat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", counts_characters)
    assert not atomic.name_too_long(tmp_path / "out", name, 255)
    assert atomic.name_too_long(tmp_path / "out", "日" * 250 + "_composite.png", 255)
    assert not atomic.name_too_long(tmp_path, "short.png", 255)  # within the limit: nothing asked


def _symlink(link: Path, target: str | Path) -> None:
    try:
        link.symlink_to(target)
    except (OSError, NotImplementedError):  # Windows without the privilege to make links
        pytest.skip("this system cannot make symbolic links")


def test_a_write_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "runs" / "x").mkdir(parents=True)
    last = tmp_path / "runs" / "x" / "last.pt"
    last.write_bytes(b"old")
    best = tmp_path / "best.pt"
    _symlink(best, "runs/x/last.pt")  # relative, into another folder
    with atomic.atomic_path(best) as tmp:
        assert tmp.parent == last.parent and tmp.name.startswith(".last.pt.")  # beside the target
        tmp.write_bytes(b"new")
    assert best.is_symlink() and os.readlink(best) == "runs/x/last.pt"
    assert last.read_bytes() == b"new" and sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]
    with pytest.raises(RuntimeError), atomic.atomic_path(best) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert best.is_symlink() and last.read_bytes() == b"new"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


def test_a_chain_of_links_is_followed_to_the_end(tmp_path: Path) -> None:
    end = tmp_path / "end.json"
    end.write_text("old")
    (tmp_path / "sub").mkdir()
    _symlink(tmp_path / "sub" / "middle.json", end)  # absolute
    _symlink(tmp_path / "first.json", "sub/middle.json")
    assert atomic.final_target(tmp_path / "first.json") == end
    with atomic.atomic_path(tmp_path / "first.json") as tmp:
        tmp.write_text("new")
    assert end.read_text() == "new" and not end.is_symlink()
    assert (tmp_path / "first.json").is_symlink() and (tmp_path / "sub" / "middle.json").is_symlink()


def test_a_dangling_link_writes_its_target_or_says_its_folder_is_missing(tmp_path: Path) -> None:
    link = tmp_path / "model.onnx"
    _symlink(link, "exports/model.onnx")
    with pytest.raises(FileNotFoundError, match="exports.model.onnx, whose folder does not exist") as err:
        atomic.final_target(link)
    assert err.value.filename == str(link)  # the message names the link, not a temporary
    (tmp_path / "exports").mkdir()
    with atomic.atomic_path(link) as tmp:
        tmp.write_bytes(b"graph")
    assert link.is_symlink() and (tmp_path / "exports" / "model.onnx").read_bytes() == b"graph"


def test_links_in_a_loop_are_refused_and_a_plain_path_is_left_as_given(tmp_path: Path) -> None:
    _symlink(tmp_path / "a", "b")
    _symlink(tmp_path / "b", "a")
    with pytest.raises(OSError) as err:
        atomic.final_target(tmp_path / "a")
    assert err.value.errno == errno.ELOOP
    assert atomic.final_target(Path("relative/new.png")) == Path("relative/new.png")


def test_leftovers_are_swept_where_a_write_through_a_link_makes_them(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "last.pt"
    target.write_bytes(b"old")
    _symlink(tmp_path / "run" / "best.pt", target)
    dead = dead_pid()
    beside_target = _leftover(target, dead)
    beside_link = _leftover(tmp_path / "run" / "best.pt", dead)  # an older pdseg's, or an export's
    other = _leftover(tmp_path / "elsewhere" / "other.pt", dead)  # not the link's: kept
    for path in (beside_target, beside_link, other):
        path.write_bytes(b"x")
    assert sorted(atomic.remove_stale_temporaries(tmp_path / "run" / "best.pt")) == sorted(
        [beside_link, beside_target]
    )
    beside_target.write_bytes(b"x")
    assert atomic.sweep_folder(tmp_path / "run") == [beside_target]  # the folder sweep follows the link
    assert other.exists() and target.read_bytes() == b"old"


def test_folds_case_asks_the_file_system_without_writing(tmp_path: Path) -> None:
    from pdseg_cli.data.atomic import folds_case

    if folds_case(tmp_path):
        pytest.skip("the temporary folder's file system folds case itself (macOS, Windows)")

    out = tmp_path / "Masks"
    out.mkdir()
    assert not folds_case(out)  # Linux: "mASKS" is no name there
    assert not folds_case(out / "new" / "123")  # a folder to be made: its nearest existing one says
    (tmp_path / "mASKS").mkdir()
    assert not folds_case(out)  # another folder of the swapped name: case-sensitive still
    (tmp_path / "mASKS").rmdir()
    (tmp_path / "mASKS").symlink_to(out)  # the swapped name reaching the same folder, as on macOS
    assert folds_case(out) and folds_case(out / "2024")
    digits = out / "2024"
    digits.mkdir()
    assert folds_case(digits)  # no letters in its name: its parent's answers


def test_folds_case_answers_for_a_relative_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o masks` from inside the folder: "." has no name, and was taken as case-sensitive."""
    from pdseg_cli.data.atomic import folds_case

    if folds_case(tmp_path):
        pytest.skip("the temporary folder's file system folds case itself (macOS, Windows)")
    (tmp_path / "Work").mkdir()
    (tmp_path / "wORK").symlink_to(tmp_path / "Work")
    monkeypatch.chdir(tmp_path / "Work")
    assert folds_case(Path("masks")) and folds_case(Path("."))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_device_or_pipe_is_never_renamed_over(tmp_path: Path) -> None:
    """Run as root, `--json /dev/null` put a regular file in the place of the system's /dev/null:
    the rename of a finished temporary replaces whatever has the name. A pipe stands in for the
    device here (making a device needs root)."""
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    assert (
        atomic.is_special(pipe) and not atomic.is_special(tmp_path) and not atomic.is_special(tmp_path / "x")
    )
    with pytest.raises(OSError, match="not a regular file") as info:
        with atomic.atomic_path(pipe) as tmp:
            tmp.write_text("{}")
    assert info.value.errno == errno.EINVAL and stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]  # no temporary left


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_report_goes_into_a_pipe_not_over_it(tmp_path: Path) -> None:
    import threading

    from helpers import run_cli, small_split

    split, maps = small_split(tmp_path)
    pipe = tmp_path / "scores.csv"
    os.mkfifo(pipe)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_text()))
    reader.start()
    result = run_cli("eval", "--split", split, "--pred", maps, "--csv", pipe)
    reader.join(30)
    assert result.exit_code == 0, result.output
    assert got and got[0].startswith("split,count,maxF") and stat.S_ISFIFO(os.stat(pipe).st_mode)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets")
def test_a_report_refuses_a_socket_before_the_work(tmp_path: Path) -> None:
    import tempfile

    from helpers import run_cli, small_split

    split, maps = small_split(tmp_path)
    short = Path(tempfile.mkdtemp(dir="/tmp"))  # a socket's path has a short limit
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(short / "s.json"))
        result = run_cli("eval", "--split", split, "--pred", maps, "--json", short / "s.json")
        assert result.exit_code == 2 and "is a disk or a socket" in " ".join(result.output.split())
    finally:
        server.close()
        (short / "s.json").unlink(missing_ok=True)
        short.rmdir()


def test_eval_temporary_folders_of_dead_runs_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pdseg eval` without --save-preds writes a split's maps to a temporary folder; `kill -9` left
    it in /tmp for good (hundreds of MB on DIS-TE). The next eval removes those of dead processes."""
    import tempfile

    from pdseg_cli.engine.eval_model import temporary_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = atomic.writer_token().split("-", 1)[1]
    dead = tmp_path / f"pdseg-eval-{dead_pid()}-{host}-abcd1234"
    live = tmp_path / f"pdseg-eval-{os.getpid()}-{host}-efgh5678"
    other = tmp_path / "pdseg-eval-abcdefgh"  # an older pdseg's name: whose it is cannot be told
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "map.png").write_bytes(b"x")
    with temporary_folder() as made:
        assert Path(made).name.startswith(f"pdseg-eval-{atomic.writer_token()}-")
        assert not dead.exists() and live.exists() and other.exists()
    assert not Path(made).exists()
