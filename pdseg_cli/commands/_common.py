"""What the subcommands share: user errors as one line and an exit status, and the options
several commands take, declared once as ``Annotated`` types (``device: DeviceOpt[str] = "auto"``)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import json
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import typer

from pdseg_cli import runtime, ui
from pdseg_cli.config import FULL_SIZE_NAMES
from pdseg_cli.data.atomic import is_special, is_stream
from pdseg_cli.errors import InputError, PdsegError, RunFailed, counted, os_error_line, shell_quote

EXIT_USAGE = 2  # a user mistake: bad path, wrong file, bad option
EXIT_FAILED = 1  # the run went on but some items failed
EXIT_INTERRUPTED = 130


@dataclasses.dataclass
class ErrorReport:
    """A command's ``--json`` report, for the run that ends in an error before writing it.

    A script that reads the report without looking at the exit status found nothing, or the last
    run's report left in place, after a refusal (a file in ``--out`` pdseg will not replace, a
    mistyped option value): it read the last run's files as this run's. :func:`user_errors` writes
    ``{"pdseg": version, "error": message, "hint": hint}`` there instead, once the command has
    checked the path (``path``) and while it has not written its own report (``written``).
    """

    path: Path | None = None
    written: bool = False

    def write_error(self, message: str, hint: str | None) -> None:
        """Write the error as the report, where one is due. Never raises: the error line that
        follows is what matters, and a report that cannot be written (its folder is the --out a
        refused run did not make) is left out in silence."""
        if self.path is None or self.written:
            return
        self.written = True
        from pdseg_cli import __version__

        text = json.dumps({"pdseg": __version__, "error": message, "hint": hint}, indent=2) + "\n"
        try:
            write_report(self.path, text, "JSON")
        except (PdsegError, OSError):
            pass


@contextlib.contextmanager
def user_errors(*, rank: int = 0, report: ErrorReport | None = None) -> Iterator[None]:
    """Print a PdsegError as one red line (no traceback) and exit 2 (1 for a RunFailed: work that
    started and could not finish); an operating-system error that stopped the command (disk full,
    no permission, a file deleted under it) as one line naming the file and exit 1; Ctrl-C exits
    130.

    ``rank``: this process's rank under torchrun. A process other than rank 0 exits with the same
    status, and says its error itself, after ``rank N:``, unless every process meets it alike
    (``runtime.met_by_every_rank``: rank 0 says those once) or it is a Ctrl-C, which reaches every
    process. An error of one process alone (its GPU, its files) was said by no one: torchrun's
    ChildFailedError was all the user saw. On a job of several machines, the first process of each
    machine says the errors met alike too: a folder missing on one node alone is met alike by that
    node's processes only.

    ``report``: the command's ``--json`` (:class:`ErrorReport`), where rank 0 writes each of these
    errors, a Ctrl-C too, before it says it (a report the command wrote itself is kept)."""
    node_leader = rank != 0 and leads_one_node_of_several()

    def say(message: str, hint: str | None = None, *, error: BaseException | None = None) -> None:
        # error None: a Ctrl-C, which the terminal sends to every process
        if rank == 0:
            if report is not None:
                report.write_error(message, hint)
            ui.error(message, hint)
        elif error is not None and (node_leader or not runtime.met_by_every_rank(error)):
            ui.error(f"rank {rank}: {message}", hint)

    try:
        yield
    except PdsegError as exc:
        say(exc.message, exc.hint, error=exc)
        raise typer.Exit(EXIT_FAILED if isinstance(exc, RunFailed) else EXIT_USAGE) from None
    except OSError as exc:
        # a report or table into a full disk: said as standard output's, not as a file's
        say(*(ui.stdout_lost(exc) or os_error_line(exc)), error=exc)
        raise typer.Exit(EXIT_FAILED) from None
    except RuntimeError as exc:
        if str(exc) == "Could not determine home directory.":  # pathlib's expanduser of a '~'
            say(
                "a path starting with '~' names a home folder that cannot be found (no such user, or "
                "$HOME is not set)",
                "write the path out in full",
                error=exc,
            )
            raise typer.Exit(EXIT_USAGE) from None
        lost = _peer_lost(exc)
        if lost is not None:
            say(
                f"another process of this torchrun job stopped, and this one lost touch with it ({lost})",
                "torchrun's report names the process that stopped first and why; once that is fixed, run "
                "the same command again (pdseg train: with --resume; pdseg predict: with --skip-existing)",
                error=exc,
            )
            raise typer.Exit(EXIT_FAILED) from None
        # Path.resolve() on a loop of symbolic links (Python 3.13 raises OSError ELOOP instead),
        # wherever a command resolves a path it was given
        loop = re.fullmatch(r"Symlink loop from (.+)", str(exc))
        if loop is None:
            raise
        path = loop.group(1).strip("'")  # pathlib quotes it
        say(f"{path} goes round a loop of symbolic links", "check the links on that path", error=exc)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt as exc:
        # errors.Interrupted says how to go on; a SIGTERM is named, a Ctrl-C is not
        say(runtime.interrupted_line(), getattr(exc, "hint", None))
        raise typer.Exit(EXIT_INTERRUPTED) from None


# what gloo and NCCL say in the processes left when one of a job's processes dies (kill -9, a
# crash): a collective's connection to it is gone. The traceback said nothing a user could act on
_PEER_LOST = re.compile(
    r"Connection reset by peer|Connection closed by peer|Broken pipe|NCCL communicator was aborted"
    r"|remote process exited"
)


def _peer_lost(exc: RuntimeError) -> str | None:
    """The words of a torchrun job's collective that lost another process, else None."""
    if runtime.env_distributed(strict=False).world_size < 2:
        return None
    found = _PEER_LOST.search(str(exc))
    return found.group() if found else None


def leads_one_node_of_several() -> bool:
    """Whether this process is the first of its machine (LOCAL_RANK 0) in a torchrun job that spans
    several machines (LOCAL_WORLD_SIZE below WORLD_SIZE); False where the launcher does not say."""
    env = runtime.env_distributed(strict=False)
    local = env.local_world_size
    return env.local_rank == 0 and local is not None and local < env.world_size


def torchrun_rank() -> int:
    """This process's rank under torchrun (0 alone, or when the torchrun variables are broken: the
    command then says what is wrong with them, once)."""
    return runtime.env_distributed(strict=False).rank


def refuse_torchrun(command: str) -> None:
    """Refuse ``pdseg command`` under torchrun, which it does not share out: every process did the
    whole work, printed every line, wrote the same files (``--json -`` gave several documents) and
    fought over ``--save-preds``' lock. Said once (rank 0).

    Raises:
        InputError: the job has more than one process.
    """
    env = runtime.env_distributed(strict=False)
    if env.world_size > 1:
        raise runtime.every_rank_meets(
            InputError(
                f"pdseg {command} runs as one process; under torchrun each of the {env.world_size} "
                "processes would do all of it and write the same files",
                hint=f"run pdseg {command} without torchrun (predict and train share their work out)",
            )
        )


def warn_unused(ctx: typer.Context, unused: dict[str, str | None], *, enabled: bool = True) -> None:
    """Say which options typed on the command line have no effect in this run, so that a user
    does not wait for an effect that never comes: ``{parameter name: why, or None if it applies}``.
    ``enabled`` False (ranks other than 0 of a torchrun) says nothing."""
    if not enabled:
        return
    for name, why in unused.items():
        source = ctx.get_parameter_source(name)  # by name: Typer vendors click's enum in new versions
        if why is not None and source is not None and source.name == "COMMANDLINE":
            ui.warn(why)


def _set_quiet(ctx: typer.Context, value: bool) -> None:
    ui.set_quiet(value)
    if value:  # for this command only (a Python session may run several)
        ctx.call_on_close(lambda: ui.set_quiet(False))


QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print only warnings and errors (for cron and scripts): no status lines, progress or "
        "tables. Files and reports (--json, and eval's --csv) are written as usual; the exit status "
        "tells the rest.",
        callback=_set_quiet,
        is_eager=True,  # before other options' checks, whose messages it does not hide anyway
        expose_value=False,
    ),
]


DEFAULT_WEIGHTS_TEXT = "Default: $PDSEG_WEIGHTS, else the bundled demo weights."


def use_threads(threads: int | None, *, quiet: bool = False) -> None:
    """Set the compute threads (``--threads``, else as many as there are idle cores) and say so when
    busy cores made the default smaller than the machine."""
    chosen = runtime.set_compute_threads(threads)
    cores = runtime.usable_cores()
    if threads is None and chosen is not None and chosen < cores and not quiet:
        ui.info(
            f"{counted(chosen, 'compute thread')}: {cores - chosen} of {cores} cores are "
            f"busy with other work (--threads {cores} uses them all anyway)"
        )


def checked_choice(option: str, value: str, choices: Sequence[str], what: str, otherwise: str) -> str:
    """``value`` of a choice option, trimmed and lower-cased, once it is one of ``choices``.

    Such options take a plain str rather than an Enum, whose bad values get click's usage box;
    here a bad one is pdseg's one line, with the closest choice as the hint (``otherwise`` when
    none is close).

    Raises:
        InputError: ``value`` is none of ``choices``, e.g. "--mode 'comapre' is not a benchmark
            mode (choose from optimized, plain, compare)".
    """
    wanted = value.strip().lower()
    if wanted in choices:
        return wanted
    close = difflib.get_close_matches(wanted, list(choices), n=1)
    raise InputError(
        f"{option} {value!r} is not {what} (choose from {', '.join(choices)})",
        hint=f"did you mean {option} {close[0]}?" if close else otherwise,
    )


def weights_option(help_text: str) -> Any:
    """``--weights/-w``: a model file; ``help_text`` says which kinds and the default. The loaders
    check the path, so that a missing file or a folder gets pdseg's one line with its hint (the
    nearest weights file, the file inside the folder) rather than click's usage box."""
    return typer.Option("--weights", "-w", help=help_text, show_default=False)


# the model predict and eval run; export and benchmark take checkpoints only (weights_option)
WeightsOpt = Annotated[
    Path | None,
    weights_option(
        "The model to run: a checkpoint (.pt), a `pdseg export` file (.onnx, .ts), or another DIS/SOD "
        f"model as ONNX. {DEFAULT_WEIGHTS_TEXT}"
    ),
]

OnnxSpecOpt = Annotated[
    str | None,
    typer.Option(
        "--onnx-spec",
        help="For a foreign DIS/SOD ONNX model that pdseg does not recognise (IS-Net, U2-Net and BiRefNet "
        "exports are): size=N|dynamic, mean=M|R:G:B, std=S|R:G:B (R:G:B with color=bgr too), scale=255|1 "
        "(the range mean/std are on), color=rgb|bgr, output=NAME or INDEX (a name first), channel=N (an "
        "output of several maps: which is the foreground), kind=probability or logit. "
        "Example: 'size=1024, mean=0.5, std=1, scale=1, output=0, kind=logit'",
        show_default=False,
    ),
]

# the working resolution of predict and eval (train and benchmark take square sides instead)
SizeOpt = Annotated[
    str | None,
    typer.Option(
        "--size",
        help="Working resolution: N resizes to NxN as in training, averaging pixels where the image "
        "shrinks (default: the training size the weights file records); "
        "'full' runs once on the whole image at its native size. Outputs always have the input's size.",
        show_default=False,
    ),
]

_T = TypeVar("_T")

# generic in its type: train's options are None by default (a resumed run keeps its own value),
# the other commands' are the default itself (`device: DeviceOpt[str] = "auto"`)
DeviceOpt = Annotated[
    _T,
    typer.Option(
        "--device",
        "-d",
        help="auto, cpu, cuda, cuda:N or mps (default: auto). Never falls back silently.",
        show_default=False,
    ),
]

# predict and eval; train's auto also takes native bf16 on a CPU, and benchmark defaults to fp32
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision", help="auto (bf16 on GPUs with native bf16, Ampere on; else fp32), fp32, bf16, fp16."
    ),
]

# predict and eval: the flip test-time augmentation of Predictor(tta=True)
TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: also run each image mirrored left-right and average the two maps. "
        "Twice the compute; steadier maps. Earlier weights gained on every metric, the bundled ones "
        "about nothing (docs/model.md).",
    ),
]

# predict and eval: the decoding limit, predict_paths(max_pixels=...)
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse images whose header says more pixels than this, before decoding them (default 2^27: "
        "8192x8192 passes; a file claiming 33792x33792 does not).",
        show_default=False,
    ),
]

# predict and eval: multi-scale inference, Predictor(scales=...)
ScalesOpt = Annotated[
    str | None,
    typer.Option(
        "--scales",
        metavar="S,S,...",
        help="Also run the model at these multiples of the working size and average the maps, e.g. "
        "0.875,1,1.125 (at 512: 448, 512 and 576; a pass each, so three times the compute). With the "
        "bundled weights on davis16-eval: maxF 0.751 against 0.739 at 512 alone (README, 'Bundled "
        "weights'). Default: one pass.",
        show_default=False,
    ),
]


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """``--scales 0.875,1,1.125`` -> (0.875, 1.0, 1.125); None when not given. Their range, count and
    the sizes they apply to are checked where the model loads (``predict.scale_sides``).

    Raises:
        InputError: a part that is not a number.
    """
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return tuple(float(part) for part in parts)
    except ValueError:
        raise InputError(
            f"--scales {text}: give numbers separated by commas", hint="e.g. --scales 0.875,1,1.125"
        ) from None


BatchOpt = Annotated[
    # no min=1: a 0 gets pdseg's line (check_batch), as train's --batch 0 does, not click's usage box
    int, typer.Option("--batch", "-b", help="Images per forward pass (images of one working size).")
]

ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for the maths: torch, OpenCV and onnxruntime (default: $OMP_NUM_THREADS "
        "if set, else the cores other work leaves idle, since on a busy machine fewer threads are faster).",
        show_default=False,
    ),
]

CompileOpt = Annotated[
    str,
    typer.Option(
        "--compile",
        help="torch.compile the model: off, default, reduce-overhead (CUDA graphs on a GPU), "
        "max-autotune or max-autotune-no-cudagraphs. The first batch of each input size compiles (a "
        "minute or more); it pays off on a GPU over many images of one size. Optional: without it the "
        "maps are the same up to float rounding (a grey level on a few pixels).",
    ),
]

DataRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="The DIS5K folder (DIS-TR, DIS-VD, DIS-TE1..DIS-TE4 in it, each with im/ and gt/), as "
        "unpacked from the DIS data set's release (github.com/xuebinqin/DIS). Default: $PDSEG_DATA, "
        "else ./DIS5K.",
        show_default=False,
    ),
]


SIZE_EXAMPLE = "e.g. --size 1024"


def square_side(text: str | None, command: str) -> int | None:
    """``--size`` of train and info: a square side in pixels (None: the command's default), never
    ``full``, which only predict and eval take.

    Raises:
        InputError: ``full`` or a value that is not a whole number.
    """
    if text is None:
        return None
    if text.strip().lower() in FULL_SIZE_NAMES:
        raise InputError(
            f"--size {text.strip()} is for predict and eval only: {command} takes a square side in pixels",
            hint=f"{SIZE_EXAMPLE} (the DIS recipe), 512 or 320",
        )
    side = whole_number("--size", text, f"{SIZE_EXAMPLE} (the DIS recipe), 512 or 320")
    from pdseg_cli.engine.predict import MAX_SIDE  # predict's largest side: beyond it, counts mean nothing

    if side > MAX_SIDE:
        raise InputError(
            f"--size {side} is too large: at most {MAX_SIDE}", hint=f"{SIZE_EXAMPLE}, 512 or 320"
        )
    return side


def whole_number(option: str, text: str, hint: str) -> int:
    """``text`` as an int (``" 512 "`` is 512).

    Raises:
        InputError: ``--size '512.5' is not a whole number``, with ``hint``.
    """
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{option} {text!r} is not a whole number", hint=hint) from None


def check_batch(batch: int) -> None:
    """``--batch`` of predict, eval and benchmark, in the words train uses for its own.

    Raises:
        InputError: ``--batch must be at least 1, got 0``.
    """
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}", hint=BATCH_HINT)
    if batch > MAX_BATCH:  # `benchmark -b 100000` at 64 px built a 4.9 GB input, then ran for minutes
        too_many = f"--batch {batch} is more than a device runs at once (at most {MAX_BATCH})"
        raise InputError(too_many, hint=BATCH_HINT)


BATCH_HINT = "e.g. --batch 4 (images per forward pass), or leave --batch out for 1"
# images per forward pass: far above what a device runs at once (1024 at 32x32 are 12 MB of input);
# past it, a slip of the keyboard
MAX_BATCH = 1024


# --- report files (eval's --json and --csv, predict's --json) ----------------------------------


def is_stdout(path: Path) -> bool:
    """Whether a report option names standard output: ``-``, or the very file standard output is
    (``/dev/stdout``, or the file it was redirected to), where the table must not go too."""
    if str(path) == "-":
        return True
    try:
        there, out = os.stat(path.expanduser()), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (there.st_dev, there.st_ino) == (out.st_dev, out.st_ino)


def check_report_path(option: str, path: Path, created: Path | None = None, example: str = "scores") -> None:
    """Refuse a report path that cannot be written, or that names an image (a slip that would
    replace a mask or map with text), before the (long) work starts. ``-`` (standard output) passes.
    ``created``: a folder the command creates before it writes the report (predict's ``--out``),
    where a report may go although the folder does not exist yet. ``example``: the file name the
    hints suggest (``scores`` for eval's, ``run`` for predict's).

    Raises:
        InputError: a folder, an image's name, a missing or read-only folder.
    """
    from pdseg_cli.data.images import IMAGE_SUFFIXES, check_writable_folder
    from pdseg_cli.weights import MODEL_SUFFIXES

    if is_stdout(path) or is_stream(path.expanduser()):  # /dev/null, a named pipe a script reads
        return
    if is_special(path.expanduser()):
        raise InputError(
            f"{option} {path} is a disk or a socket, not a file a report can be written to",
            hint=f"give a file name, e.g. {option} {example}.{option.lstrip('-')} ('-': standard output)",
        )
    if path.is_dir():
        raise InputError(
            f"{option} {path} is a folder; give a file name for the output",
            hint=f"e.g. {option} {path / (example + '.' + option.lstrip('-'))}",
        )
    kind = "an image" if path.suffix.lower() in IMAGE_SUFFIXES else None
    kind = kind or ("a model" if path.suffix.lower() in MODEL_SUFFIXES else None)
    if kind:  # a slip in a long command line would replace a mask, a map or the weights with text
        raise InputError(
            f"{option} {path} names {kind} file, and the report is text",
            hint=f"give a {option.lstrip('-')} file name, e.g. {example}.{option.lstrip('-')}",
        )
    parent = path.expanduser().resolve().parent
    nearest = next((p for p in (parent, *parent.parents) if p.exists()), parent)
    if not nearest.is_dir():  # a file where a folder of the path should be: mkdir -p cannot help
        raise InputError(
            f"cannot write {option} {path}: {nearest} is a file, not a folder",
            hint="give a path in a folder",
        )
    if created is not None and parent == created.expanduser().resolve() and nearest != parent:
        # the report goes into the folder the run makes first: the folder it is made in must take it
        check_writable_folder(nearest, f"{option} {path}")
        return
    if nearest != parent:
        raise InputError(
            f"cannot write {option} {path}: the folder {parent} does not exist",
            hint=f"create it first (mkdir -p {shell_quote(str(parent))}), or give a path in one that exists",
        )
    check_writable_folder(parent, f"{option} {path}")  # a read-only disk said so only after the run


# A name read from the file system that is not UTF-8 holds lone surrogates (Python's
# surrogateescape): written back as the bytes they stand for, a report names the folder as it is on
# disk. Strict UTF-8 raised after the scoring, and the report was lost.
_NAME_BYTES = "surrogateescape"


def _open_stream(path: Path) -> IO[str]:
    """Open a character device or a named pipe to write a report into. A named pipe nothing reads
    yet is said so: opening it waits for a reader, and the run, its work done, seemed to hang. (A
    trial open that were closed again would end the reader's input: the one open is kept.)"""
    target: Path | int
    target = path.expanduser()
    if hasattr(os, "O_NONBLOCK") and stat.S_ISFIFO(os.stat(target).st_mode):
        try:
            target = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            ui.info(f"waiting for a program to read the named pipe {path} (Ctrl-C stops)", essential=True)
        else:
            os.set_blocking(target, True)  # a slow reader must not make a write fail with EAGAIN
    return open(target, "w", encoding="utf-8", errors=_NAME_BYTES)  # noqa: SIM115


def write_report(path: Path, text: str, kind: str) -> None:
    """Write a report to ``path`` atomically, or to standard output for ``-`` (where the command
    then keeps its table and messages on standard error), and say where it went.

    Raises:
        RunFailed: the file cannot be written: the work is done but not kept (exit 1).
    """
    from pdseg_cli.data.images import write_bytes_atomic

    if is_stdout(path):
        ui.plain(text)
        return
    try:
        if is_stream(path.expanduser()):  # written into, never renamed over (that would replace it)
            with _open_stream(path) as f:
                f.write(text)
        else:
            write_bytes_atomic(path, text.encode("utf-8", _NAME_BYTES))
    except OSError as exc:
        locked = isinstance(exc, PermissionError)  # or, on Windows, open in a spreadsheet
        raise RunFailed(
            f"cannot write {path} ({exc.strerror or exc})",
            hint=(
                "close it in any program that has it open, or check its permissions"
                if locked
                else "free some space"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "check that path"
            )
            + ", or choose another path, and run the command again",
        ) from None
    ui.info(f"{kind} written to {path}")
