"""The click plumbing of `deploy-nas`: the group that turns every error into one line, shared options, and options
generated from the dataclasses the library takes (so a field and its option cannot drift apart)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import threading
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from deploy_nas.errors import INTERRUPTED, TERMINATED, DeployNASError, Terminated, brief

TERM_GRACE_S = 10.0  # after SIGTERM, how long the process may take to unwind before it exits regardless


def _terminate(signum: int, frame: Any) -> None:
    TERMINATED.set()
    raise Terminated()


def _interrupt(signum: int, frame: Any) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt()


def _stopped() -> bool:
    return TERMINATED.is_set() or INTERRUPTED.is_set()


def _fail(message: str, code: int) -> None:
    """Print `error: message` and exit with `code`; after a SIGTERM or Ctrl-C, what stopped the command and its
    code instead: the interrupt raised inside a library's callback (safetensors reading a file, OpenVINO tracing a
    module) can come out as that library's own error, which the files it was reading do not deserve."""
    if _stopped():
        message, code = interruption(KeyboardInterrupt())
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def interruption(err: BaseException) -> tuple[str, int]:
    """(what stopped the command, its exit code) for an interrupt: SIGTERM (also when click wrapped it in an Abort,
    or a library its own error) or Ctrl-C."""
    if isinstance(err, Terminated) or isinstance(err.__context__, Terminated) or TERMINATED.is_set():
        return "terminated (SIGTERM)", 143
    return "interrupted", 130


def _handle_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt as Python's own handler does, and records that it came (see `_fail`); left
    alone where SIGINT is ignored (a background job of a non-interactive shell) or handled by someone else."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupt)
    except ValueError:  # not the main thread
        pass


def _handle_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread. Python runs that handler only between bytecodes, so a long
    native call (an engine build, a collective waiting on a dead rank) would hold it off indefinitely: a watcher
    thread, woken by the signal through the wakeup fd, ends the process TERM_GRACE_S later if it has not ended by
    then, and at once on a second SIGTERM (what the default action did); the next run sweeps what is left."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # someone else set it up (or we did already)
        return
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        if signal.set_wakeup_fd(w, warn_on_full_buffer=False) != -1:  # the fd is someone else's: leave it
            signal.set_wakeup_fd(-1)
            os.close(r), os.close(w)
            return
    except ValueError:  # not the main thread
        return
    signal.signal(signal.SIGTERM, _terminate)
    threading.Thread(target=_watch_sigterm, args=(r,), daemon=True, name="deploy-nas-sigterm").start()


def _watch_sigterm(fd: int) -> None:
    def end() -> None:
        os.write(2, b"error: terminated (SIGTERM); stopped without cleaning up (the next run removes what is left)\n")
        os._exit(143)

    seen, timer = 0, None
    while data := os.read(fd, 64):  # one byte per signal: its number
        seen += data.count(signal.SIGTERM)
        if seen >= 2:
            end()
        if seen and timer is None:
            timer = threading.Timer(TERM_GRACE_S, end)
            timer.daemon = True
            timer.start()


def main_one_line(command: click.Command, *args: Any, **kwargs: Any) -> Any:
    """`command.main(...)` with every DeployNASError, and click's own usage errors, as one line `error: ...` and
    their exit code (2 for bad input, 1 for a failed parity gate, 130 for an interrupt, 143 for SIGTERM). Python
    warnings of the libraries underneath (deprecations, no-op initialisations) are silenced unless PYTHONWARNINGS
    asks for them."""
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    _handle_sigterm()
    _handle_sigint()
    try:
        return click.Command.main(command, *args, standalone_mode=False, **kwargs)
    except (click.exceptions.Abort, KeyboardInterrupt) as err:
        if isinstance(err.__cause__, EOFError):  # click reports an EOFError from the command as an abort
            click.echo("error: unexpected end of a file or of the input (an empty or cut file?)", err=True)
            sys.exit(2)
        how, code = interruption(err)
        click.echo(f"error: {how}", err=True)
        sys.exit(code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.ClickException as err:
        _fail(one_line(err.format_message()), 2)
    except DeployNASError as err:
        from deploy_nas.distributed import main_process

        if main_process() or TERMINATED.is_set():  # under torchrun every rank fails alike; one says so
            _fail(one_line(str(err)), err.exit_code)
        sys.exit(err.exit_code)
    except UnicodeEncodeError as err:  # a path given as bytes that are not UTF-8 (the file system took it, we cannot)
        _fail(f"a name that is not valid UTF-8 ({err.reason}); rename it or choose another path", 2)
    except OSError as err:  # the file system refused a path: a name too long, a symlink loop, no permission
        where = f": {brief(str(err.filename), 80)}" if err.filename else ""
        _fail(f"{err.strerror or one_line(str(err))}{where}", 2)
    except (MemoryError, RuntimeError) as err:  # what no input check foresaw: the machine, not a bug
        if isinstance(err, RuntimeError) and "can't allocate memory" not in str(err) and not _stopped():
            raise  # torch's CPU allocator says so
        _fail("out of memory; use a smaller model, batch or input, or a machine with more memory", 2)
    except Exception as err:  # a library's own error for the interrupt raised inside it (OpenVINO's
        if not _stopped():  # OpConversionFailure): reported as the interrupt; anything else is a bug to show
            raise
        _fail(one_line(str(err)), 1)


class OneLineErrors(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        return main_one_line(self, *args, **kwargs)


class WithFamilyCommands(OneLineErrors):
    """The `deploy-nas` group: its own commands plus those the families contribute (`Family.commands()`, e.g.
    ViT-Slim's `slim search|prune`), looked up only when a name is not one of its own or help lists them all."""

    def family_commands(self) -> dict[str, click.Command]:
        from deploy_nas.family import FAMILIES

        return {c.name: c for fam in FAMILIES.values() for c in getattr(fam, "commands", lambda: ())()}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.family_commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self.family_commands().get(name)


def one_line(message: str, limit: int = 2000) -> str:
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def options(*decorators: Callable) -> Callable:
    """Apply several click option decorators in the order given."""
    return lambda fn: functools.reduce(lambda f, opt: opt(f), reversed(decorators), fn)


class FamilyChoice(click.Choice):
    """The registered families, looked up only when an option is parsed or help is shown."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=False)

    @property
    def choices(self) -> list[str]:  # type: ignore[override]
        from deploy_nas.family import FAMILIES

        return FAMILIES.names()

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


def csv(cast: Callable[[str], Any] = str) -> Callable:
    """A callback that turns "a,b" into a tuple of `cast` values, each once (`openvino,openvino` built, measured and
    reported one engine twice), in the order given; an empty item (`1,,8`, `,`) is refused."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> tuple:
        items = [v.strip() for v in str(value or "").split(",")]
        if value is not None and not all(items):
            raise click.BadParameter(f"{brief(str(value), 60)}: an empty item; give a comma-separated list")
        try:
            return tuple(dict.fromkeys(cast(v) for v in items if v))
        except ValueError as err:
            raise click.BadParameter(f"{brief(str(value), 60)}: {err}") from err

    return parse


def pair(cast: Callable[[str], Any]) -> Callable:
    """A callback for "LOW,HIGH"."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> tuple | None:
        if value is None:
            return None
        parts = str(value).split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            return tuple(cast(v) for v in parts)
        except ValueError:
            raise click.BadParameter(f"{str(value)[:60]!r}: expected LOW,HIGH") from None

    return parse


def is_default(param: str) -> bool:
    """Whether the current command's option `param` was left at its default (not given by the user)."""
    source = click.get_current_context().get_parameter_source(param)
    return source in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def dataclass_options(cls: type, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> Callable:
    """One option per field of the dataclass `cls`: `--batch-size` for batch_size (or the field's metadata "flag"),
    bools as --x/--no-x, (a, b) tuples as "LOW,HIGH", no default = required, help from the metadata; `defaults`
    replaces fields' defaults (a family's recipe, so that --help shows what runs)."""
    hints, decorators = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        extra: dict[str, Any] = {"help": f.metadata.get("help")}
        default = (defaults or {}).get(f.name, f.default)
        if default is dataclasses.MISSING:
            extra["required"] = True
        else:
            extra.update(default=default, show_default=default is not None)
        if kind is bool:
            decls = (f"{flag}/--no-{flag[2:]}",)
        elif typing.get_origin(kind) is tuple:
            decls, extra["callback"] = (flag,), pair(typing.get_args(kind)[0])
            extra["metavar"] = "LOW,HIGH"
        else:
            decls, extra["type"] = (flag,), click.Path(path_type=Path) if kind is Path else kind
        if f.name == "threads":  # every --threads is capped at the usable cores, with a warning
            extra["callback"] = _cap_threads
        decorators.append(click.option(*decls, f.name, **extra))
    return options(*decorators)


family = click.option("--family", type=FamilyChoice(), default=None,
                      help="Supernet family (default: the one the supernet or checkpoint belongs to).")
def _cap_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    from deploy_nas.export.backends.base import default_threads

    cores = default_threads()
    if value is not None and value > cores:
        click.echo(f"warning: --threads {value} is more than the {cores} cores this process may use; using {cores}",
                   err=True)
        return cores
    return value


threads = click.option("--threads", type=click.IntRange(min=1), default=None, callback=_cap_threads,
                       help="CPU threads (default, and at most: the cores this process may use).")
out_argument = click.argument("out", type=click.Path(path_type=Path))
force = click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
train_data = click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                          help="Image folders DIR/train, DIR/val (and DIR/test) of class folders (default: the "
                               "embedded task, cluttered digits); supernet.json records their class names.")
data = click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                    help="A folder of images for the parity batch (default: 64 plain embedded digits, the "
                         "digits_splits test split).")


def batch_sizes(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    sizes = csv(int)(ctx, param, value)
    if not sizes or min(sizes) < 1:  # the largest batch is bounded by the memory its input needs (`run`, `bench`)
        raise click.BadParameter(f"{brief(str(value), 60)}: give one or more batch sizes >= 1, e.g. 1,8")
    return sizes  # each once (csv): `1,1` measured twice would leave two rows of one key


batches = click.option("--batch", "batches", default="1,8", show_default=True, callback=batch_sizes,
                       help="Batch sizes: 1 is measured in latency mode, larger ones in throughput mode.")
runs = click.option("--runs", type=click.IntRange(min=50, max=1_000_000), default=50, show_default=True)
calib = click.option("--calib-data", "calib_dir", type=click.Path(path_type=Path), default=None,
                     help="A folder of images to calibrate on: int8 quantization (export openvino, run) and the "
                          "BatchNorm statistics of BatchNorm families (extract, run; search, whose default is the "
                          "task's train split).")
bn = click.option("--bn", type=click.Choice(["recalibrate", "stored"]), default=None,
                  help="BatchNorm families: recalibrate the subnet's statistics on --calib-data before folding them "
                       "(the default when --calib-data is given; search always recalibrates unless told 'stored'), "
                       "or fold the stored ones.")
supernet = options(
    family,
    click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                 help="Official checkpoint (.pth/.safetensors). Default: the embedded default supernet."),
    click.option("--supernet", "supernet_dir", type=click.Path(path_type=Path), default=None,
                 help="A supernet directory written by `deploy-nas train`."),
    click.option("--space", default=None, help="Search space (registered name or file) to validate the config "
                 "against. Default: the supernet's own, or the official space of its size."),
    click.option("--import-option", "import_options", multiple=True, metavar="KEY=VALUE",
                 help="An import option of the family (repeatable), e.g. change_qkv=false for AutoFormer."),
    click.option("--change-qkv/--no-change-qkv", default=None, help="AutoFormer: = --import-option change_qkv=..."),
    click.option("--gp/--no-gp", default=None, help="AutoFormer: = --import-option gp=..."),
    click.option("--pre-norm/--no-pre-norm", default=None, help="AutoFormer: = --import-option pre_norm=..."),
    click.option("--config", default=None, help="Preset name, min or max of the space, or a JSON/YAML config file "
                 "(canonical, or the family's official form)."))
ALIASES = ("change_qkv", "gp", "pre_norm")  # the import options with flags of their own


def supernet_source(params: dict[str, Any]) -> Any:
    """The SupernetSource of the `supernet` options (popped from `params`)."""
    from deploy_nas.workflows import SupernetSource

    aliases = {k: params.pop(k) for k in ALIASES}
    return SupernetSource(params.pop("family"), params.pop("checkpoint"), params.pop("supernet_dir"),
                          params.pop("space"), tuple(params.pop("import_options")), aliases)


REPLACED_WHOLE = ("supernet_dir", "dense_dir", "base")  # inputs other commands rewrite as a whole: no output inside
READ_WHOLE = ("data_dir", "calib_dir")  # image folders, read whole: an output inside would join the data
# The training states of the directories `train --resume` and `slim search --resume` replace whole (train.STATE_FILE,
# train.slim.OFFICIAL_CHECKPOINT; named here so that the CLI's checks import no torch): no output inside one either.
RESUMED_WHOLE = ("train_state.pt", "ckpt.pth")
INPUT_PARAMS = ("checkpoint", "supernet_dir", "config", "space", "dense_dir", "calib_dir", "data_dir", "base")


def writes(new: bool = True, force: str | None = "force", replaces: tuple[str, ...] = (),
           resumes: tuple[str, ...] = (), in_place: bool = False) -> Callable:
    """The command writes the directory given as `out`. A new output is checked before any work starts (empty,
    or with the `force` flag a directory holding only what deploy-nas wrote; never an input or an ancestor of one;
    `force=None`: the command owns its output, as the demo does); the output is locked against other writers for
    the whole command. `replaces`: the files a command on an existing directory rewrites there; each must be absent
    or written by deploy-nas (checked first; recorded as deploy-nas's afterwards). `resumes`: the files one of which
    a non-empty OUT must hold when the `force` flag is a resume flag: a resume never stands in for --force on a
    directory that holds nothing to resume (an empty or absent OUT starts from the beginning). `in_place`: the
    command writes its files into OUT rather than building OUT beside it and swapping it in."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            from deploy_nas.distributed import main_process
            from deploy_nas.io import check_output_dir, check_replaceable, output_lock, record_written

            out = kw["out"]
            command = f"deploy-nas {click.get_current_context().command_path.split(' ', 1)[-1]}"
            if new:  # the flag that may replace OUT: --force, --resume, or (owning its output) the command itself
                inputs = [kw[p] for p in INPUT_PARAMS if isinstance(kw.get(p), (str, Path)) and Path(kw[p]).exists()]
                check_output_dir(out, True if force is None else bool(kw.get(force)), inputs,
                                 flag=command if force is None else f"--{force.replace('_', '-')}", resumes=resumes,
                                 replaced_whole=[kw.get(p) for p in REPLACED_WHOLE], resumed_whole=RESUMED_WHOLE,
                                 read_whole=[kw.get(p) for p in READ_WHOLE], swapped=not in_place)
            for name in replaces:
                check_replaceable(Path(out) / name, command)
            # under torchrun rank 0 alone writes (and locks); if it fails, torchrun stops the other ranks
            try:
                with output_lock(out) if main_process() else contextlib.nullcontext():
                    return fn(*args, **kw)
            finally:  # a failed parity gate has written its record too; a user's file never got this far
                for name in replaces:
                    if (Path(out) / name).is_file():
                        record_written(Path(out) / name, create=True)

        return wrapper

    return decorate
