"""The ``pdseg`` command line: parse, call the engine, render. No model code lives here."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from pdseg_cli import __version__, runtime, signal_exit, ui
from pdseg_cli.commands import benchmark as benchmark_cmd
from pdseg_cli.commands import eval as eval_cmd
from pdseg_cli.commands import export as export_cmd
from pdseg_cli.commands import info as info_cmd
from pdseg_cli.commands import predict as predict_cmd
from pdseg_cli.commands import train as train_cmd
from pdseg_cli.commands._common import EXIT_INTERRUPTED
from pdseg_cli.data import native_messages
from pdseg_cli.errors import os_error_line

# metavar of on/off options: they take no value, so no type column (Typer shows "<bool>", and a
# user then types `--tta true`)
FLAG = ""


def _no_type(ctx: object) -> None:
    return None


_TRAIN_WEIGHTS = (
    "train starts from a checkpoint with --init FILE (fine-tuning: its weights, a fresh schedule), or "
    "goes on with the run in --out with --resume; e.g. pdseg train -e 10 --init runs/a/last.pt --out runs/b"
)

_EVAL_OUT = (
    "eval writes its scores with --json FILE or --csv FILE (e.g. --json scores.json), and the model's maps "
    "with --save-preds DIR"
)

_INFO_FILE = (
    "info takes the weights file as its argument: pdseg info FILE (.pt, .onnx or .ts), or a variant name"
)

# options that users carry over from another command, where click's "Possible options" points the
# wrong way: (command, option typed) -> the hint that says what this command takes instead
WRONG_OPTIONS = {
    # -w was --workers in train before it meant --weights everywhere: say both
    ("train", "-w"): _TRAIN_WEIGHTS + "; DataLoader workers are --workers N (no short form)",
    ("train", "--weights"): _TRAIN_WEIGHTS,
    ("eval", "-o"): _EVAL_OUT,
    ("eval", "--out"): _EVAL_OUT,
    ("export", "--size"): "an exported file takes any batch, height and width (its input size is dynamic); "
    "--check-shape BxCxHxW sets the shapes the check runs, e.g. --check-shape 1x3x1024x1024",
    ("info", "-w"): _INFO_FILE,
    ("info", "--weights"): _INFO_FILE,
}

# a value given to a switch that takes none, where other commands' option of that name takes one:
# (command, switch) -> the hint
SWITCH_VALUES = {
    ("benchmark", "--json"): "benchmark's --json prints the JSON to standard output instead of the table: "
    "pdseg benchmark --json > bench.json",
}


def _wrong_option(ctx: typer.Context, exc: Exception, args: list[str]) -> None:
    """Say a known cross-command confusion (``pdseg train --weights``, ``pdseg benchmark --json
    FILE``) in pdseg's own two lines and exit 2; any other usage error keeps click's usage box.
    Click's exception classes are matched by name: Typer vendors click in new versions."""
    command = ctx.info_name or ""
    if type(exc).__name__ == "NoSuchOption":
        option = getattr(exc, "option_name", "")
        hint = WRONG_OPTIONS.get((command, option))
        known = {name for param in ctx.command.params for name in (*param.opts, *param.secondary_opts)}
        if hint is None and option.lower() != option and option.lower() in known:  # click offered others
            hint = f"options are lower case: {option.lower()}"
        if ctx.parent is None and isinstance(ctx.command, typer.core.TyperGroup):
            # `pdseg -q info`: the commands' own options go after the command's name
            after = next((a for a in args if a in ctx.command.commands), None)
            if after is not None and any(option in p.opts for p in ctx.command.commands[after].params):
                ui.error(
                    f"{option} is an option of pdseg {after}, given before it",
                    f"put it after the command: pdseg {after} {option} ...",
                )
                raise typer.Exit(2) from None
        if hint is not None:
            ui.error(f"pdseg {command} has no {option} option", hint)
            raise typer.Exit(2) from None
    elif "unexpected extra argument" in str(exc) or "does not take a value" in str(exc):
        for (name, switch), hint in SWITCH_VALUES.items():
            if name != command:
                continue
            # `--json b.json`, `--json -` (predict's and eval's standard output), `--json=b.json`
            given = [a.partition("=")[2] for a in args if a.startswith(switch + "=")]
            at = args.index(switch) if switch in args else -1
            if 0 <= at < len(args) - 1 and (args[at + 1] == "-" or not args[at + 1].startswith("-")):
                given.append(args[at + 1])
            if given:
                ui.error(f"pdseg {command} {switch} takes no value (got {given[0]})", hint)
                raise typer.Exit(2) from None


# empty values a command refuses itself, in its own words (and into its --json report)
OWN_EMPTY_CHECKS = {("predict", "--out")}


def _refuse_empty_values(ctx: typer.Context, args: list[str]) -> None:
    """An empty value (``--out ""``, ``--json=``, an argument ``""``: most often an unset shell
    variable) as one error naming the option, exit 2. Read as a path it was ".": ``-w ""`` said
    "weights . is a folder", ``train -o ""`` trained into the current folder; as a list or a name
    it was dropped in silence (``--scales ""`` ran one size, ``--variant ""`` the default one)."""
    command = ctx.info_name or ""
    options = {  # each spelling of an option that takes a value -> the option
        opt: p
        for p in ctx.command.params
        if p.param_type_name == "option"
        and not getattr(p, "is_flag", False)
        and not getattr(p, "count", False)
        for opt in p.opts
    }
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":  # what follows is arguments only
            if any(not a.strip() for a in args[i + 1 :]):
                _say_empty(ctx, None, args)
            return
        name, eq, value = arg.partition("=")
        given = options.get(name if arg.startswith("--") and eq else arg)
        if given is not None and (command, max(given.opts, key=len)) in OWN_EMPTY_CHECKS:
            i += 0 if eq else 1
        elif arg.startswith("--") and eq and given is not None:
            if not value.strip():
                _say_empty(ctx, given, args)
        elif given is not None:
            if i + 1 < len(args) and not args[i + 1].strip():
                _say_empty(ctx, given, args)
            i += 1  # its value, whatever it is
        elif not arg.strip():
            _say_empty(ctx, None, args)
        i += 1


def _say_empty(ctx: typer.Context, param: Any, args: list[str]) -> NoReturn:
    """Say the empty value (rank 0 alone under torchrun, and the first process of each machine of
    several, as ``user_errors`` says errors every process meets alike), into the command's --json
    report too where one is named, and exit 2."""
    from pdseg_cli.commands._common import ErrorReport, check_report_path, leads_one_node_of_several
    from pdseg_cli.errors import PdsegError

    command = ctx.info_name or ""
    if param is None:
        message, hint = (
            f"pdseg {command}: an argument is empty",
            "an unset shell variable gives one: give a value",
        )
    else:
        option = max(param.opts, key=len)  # --out, not -o
        message = f"{option} is empty"
        hint = "give a value" + ("" if param.required else f", or drop {option} for its default")
    json_opts = next(  # predict's and eval's report file (benchmark's --json is a switch)
        (p.opts for p in ctx.command.params if "--json" in p.opts and not getattr(p, "is_flag", False)), []
    )
    report = ""  # the --json value given last, as click takes it
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and name in json_opts:
            report = value
        elif arg in json_opts and i + 1 < len(args):
            report = args[i + 1]
    if runtime.env_distributed(strict=False).rank == 0 or leads_one_node_of_several():
        if report.strip():  # a script that reads the report without the exit status finds the error
            try:
                check_report_path("--json", Path(report), example=command)
                ErrorReport(Path(report)).write_error(message, hint)
            except PdsegError:
                pass  # that path's own fault is not the one to say: the empty value is
        ui.error(message, hint)
    raise typer.Exit(2)


_Command = TypeVar("_Command", typer.core.TyperCommand, typer.core.TyperGroup)
NARROW_HELP = 60  # terminal columns under which --help is click's plain text, not rich's table


def _flag_help(cls: type[_Command]) -> type[_Command]:
    """``cls`` whose ``--help`` fits an 80-column terminal: on/off options, its own ``--help``
    included, show no value column (``FLAG``); arguments with a metavar show that name alone (Typer
    adds "<list[str]>" to an argument that takes several values); a number with a range shows
    "<int> [x>=1]", not "<int range> [x>=1]"; and the "off" form of a switch
    (``--no-refine-foreground``) is named in its help text, not in a column of its own, which at
    80 columns left the help text 15 characters wide. Set here once for every command, so a new
    option or argument needs nothing of its own."""

    class FlagHelp(cls):  # type: ignore[valid-type,misc]
        def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
            given = list(args)  # click's parser consumes the list it gets
            helping = any(h in given for h in ctx.help_option_names)  # -h or --help: the help wins
            try:
                if not isinstance(self, typer.core.TyperGroup) and not helping:
                    _refuse_empty_values(ctx, given)  # said, then typer.Exit(2)
                return super().parse_args(ctx, args)
            except Exception as exc:  # click's UsageError, matched by name in _wrong_option; an Exit
                ui.set_quiet(False)  # an eager -q was read before the error: no command runs
                _wrong_option(ctx, exc, given)
                raise

        def get_params(self, ctx: typer.Context) -> list[Any]:
            params = super().get_params(ctx)
            for param in params:
                if getattr(param, "is_flag", False) and param.metavar is None:
                    param.metavar = FLAG
                elif isinstance(param, typer.core.TyperArgument) and param.metavar:
                    param.display_type_rich = _no_type  # type: ignore[method-assign]  # this one's own
                elif param.metavar is None and (shown := str(param.display_type_rich(ctx))).endswith(
                    " range>"
                ):
                    param.metavar = shown.replace(" range>", ">")
            return params

        def format_help(self, ctx: typer.Context, formatter: Any) -> None:
            switches = [p for p in self.get_params(ctx) if p.secondary_opts]
            saved = [(p, p.secondary_opts, p.help) for p in switches]
            for param in switches:  # help exits afterwards; the parser is built before this runs
                off = ", ".join(param.secondary_opts)
                param.help = f"{param.help or ''} Off: {off}.".strip()
                param.secondary_opts = []
            # under 60 columns rich's option table cut the names themselves (`--weig…`): click's plain
            # help wraps them instead
            # typer's MarkupMode; mypy cannot type it through the dynamic base class
            mode = self.rich_markup_mode  # type: ignore[has-type]
            if ui.console.width < NARROW_HELP:  # help goes to standard output
                self.rich_markup_mode = None
            try:
                super().format_help(ctx, formatter)
            finally:
                self.rich_markup_mode = mode
                for param, secondary, text in saved:
                    param.secondary_opts, param.help = secondary, text

    return FlagHelp


_FlagHelpGroup = _flag_help(typer.core.TyperGroup)
_FlagHelpCommand = _flag_help(typer.core.TyperCommand)


app = typer.Typer(
    name="pdseg",
    cls=_FlagHelpGroup,
    help=(
        "Dichotomous image segmentation with PDSeg (One-stage Progressive Dichotomous Segmentation): "
        "cut one foreground object out of large images at full resolution.\n\n"
        "Examples:\n\n"
        "  pdseg predict ./imgs --out ./masks\n\n"
        "  pdseg eval --split DIS-TE3\n\n"
        "  pdseg train --epochs 100 --out runs/pdseg-b"
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},  # -h everywhere, as users type it
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"pdseg {__version__}")
        except BrokenPipeError:  # `pdseg --version | true`: the reader did not want it
            ui.drop_stream(sys.stdout)
        except OSError as exc:  # a full disk under `pdseg --version > file`
            _say_output_lost(exc)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """pdseg: full-resolution dichotomous image segmentation."""
    # the command line owns its process: reuse freed tensor memory instead of page-faulting it in
    # again for every image (set any MALLOC_* variable to keep glibc's defaults)
    runtime.keep_freed_memory()


app.command("info", cls=_FlagHelpCommand)(info_cmd.info)
app.command("predict", cls=_FlagHelpCommand)(predict_cmd.predict)
app.command("eval", cls=_FlagHelpCommand)(eval_cmd.eval_)
app.command("train", cls=_FlagHelpCommand)(train_cmd.train)
app.command("export", cls=_FlagHelpCommand)(export_cmd.export)
app.command("benchmark", cls=_FlagHelpCommand)(benchmark_cmd.benchmark)


def _thread_os_error(args: threading.ExceptHookArgs) -> None:
    """An operating-system error in a background thread (TensorBoard's event writer when the disk
    fills up) as one warning line; the command meets the same error on its own thread and stops
    there with one error line. A thread that fails while the command is being stopped (a worker
    pool torn down after Ctrl-C) is not news. Anything else keeps Python's report: it is a bug."""
    if runtime.stopping.is_set():
        return
    if isinstance(args.exc_value, OSError):
        ui.warn(f"a background writer stopped: {os_error_line(args.exc_value)[0]}")
    else:
        threading.__excepthook__(args)


def main() -> None:
    """Console-script entry point: what C libraries print while a file is decoded comes back
    attributed to the file (``data.native_messages``); operating-system errors in background threads
    are one line, not a traceback; SIGTERM and SIGHUP stop as Ctrl-C does, and a command stopped by
    a signal ends by it (``signal_exit.end_by``: status 130, 143 or 129 in a shell)."""
    try:
        threading.excepthook = _thread_os_error
        runtime.interrupt_on_stop_signals()  # kill and a closed terminal clean up as Ctrl-C does
        ui.pin_terminal()  # before fd 2 becomes routed()'s pipe
        with native_messages.routed():
            try:
                app()
            finally:
                _hold_stop_signals()  # the command is over: its output is drained first
    except KeyboardInterrupt:  # a Ctrl-C just before the command's end
        ui.error(runtime.interrupted_line())
        signal_exit.end_by(runtime.stopped_by())
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # a command that stopped on Ctrl-C or a stop signal
            signal_exit.end_by(runtime.stopped_by())
        if exc.code == 1 and _help_cut_short(exc):
            raise SystemExit(0) from None
        raise
    except OSError as exc:
        # click's own write of the help to a full disk (commands catch their own errors); any
        # other error names its file, and is not this one
        _say_output_lost(exc)
    finally:
        _exit_at_once_on_stop()


def _help_cut_short(exc: SystemExit) -> bool:
    """Whether the help ended with status 1 because its reader went away (`pdseg --help | head
    -1`): the console typer prints the help with exits 1 then (rich's ``on_broken_pipe``; pdseg's
    own consoles go quiet instead), which `set -o pipefail` took for a failure. The help's status
    is 0, as a command's own output keeps the run's (``ui.plain``)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "on_broken_pipe" and tb.tb_next is None:
            return True
        tb = tb.tb_next
    return False


def _say_output_lost(exc: OSError) -> NoReturn:
    """Standard output cannot be written (`pdseg --help > /dev/full`): one line, exit 1; any other
    error goes on up."""
    lost = ui.stdout_lost(exc, known=True)
    if lost is None:
        raise exc
    ui.error(*lost)
    raise SystemExit(1) from None


_held: list[int] = []  # stop signals that came while the output was drained


def _hold(signum: int, frame: Any) -> None:
    _held.append(signum)


def _hold_stop_signals() -> None:
    """Ctrl-C and the stop signals wait while the routed standard error is drained (the last error
    line goes through it): they are noted, and :func:`_exit_at_once_on_stop` acts on them."""
    runtime.set_stop_handlers(_hold)


def _exit_at_once_on_stop() -> None:
    """The command is over and its output written: a Ctrl-C (or SIGTERM) while Python shuts down,
    joining worker and pool threads, would print a traceback of that shutdown; it now ends the
    process at once, by that signal, as does one that came while the output was drained."""
    lost: OSError | None = None
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # its reader has gone: the rest is dropped, not a shutdown traceback
            ui.drop_stream(stream)
        except OSError as exc:  # `pdseg info > /dev/full`: the output is lost, which is a failure
            ui.drop_stream(stream)
            lost = exc if stream is sys.stdout else lost
        except ValueError:  # a stream closed under us: nothing more can be shown
            pass
    if lost is not None:
        _say_output_lost(lost)
    if _held:
        signal_exit.die_by(_held[0])
    runtime.set_stop_handlers(_exit_now)


def _exit_now(signum: int, frame: Any) -> None:
    signal_exit.die_by(signum)
