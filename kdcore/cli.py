"""The ``kd`` command line: train, eval, report, plugins, tasks, schedules, plus plugins' own commands."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcore.config import ConfigError, dump, read_toml, resolve
from kdcore.plugins import get_registry

#: Errors that are the user's to fix: shown as one line, never as a traceback. kdcore's own (ConfigError,
#: PluginError, ScheduleError, CheckpointError, ReportError, ...) are ValueErrors or RuntimeErrors.
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    RuntimeError,
)


class KdGroup(click.Group):
    """Turns user errors into ``Error: ...`` and exit status 1 instead of a traceback wall.

    Set ``KD_DEBUG=1`` to see the full traceback. With ``plugin_commands`` set, the plugins' own commands
    are added the first time a command that is not kdcore's is asked for, or the list of commands (``kd
    --help``): ``kd train --help`` loads no plugin.
    """

    plugin_commands = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and self._add_plugin_commands_once():
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands_once()
        return super().list_commands(ctx)

    def _add_plugin_commands_once(self) -> bool:
        if not self.plugin_commands:
            return False
        self.plugin_commands = False
        _add_plugin_commands(self)
        return True

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own exits (--help, Ctrl-C, usage errors); Exit and Abort are RuntimeErrors
        except USER_ERRORS as exc:
            if os.environ.get("KD_DEBUG"):
                raise
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise click.ClickException(str(message)) from exc


@click.group(cls=KdGroup)
@click.version_option(package_name="kdcore")
def cli() -> None:
    """kd: knowledge distillation with a small core and domain plugins."""


def _load_config(config_file: str | None, plugin: str | None, task: str | None, sets, overrides) -> dict:
    file_config = read_toml(config_file) if config_file else {}
    plugin = plugin or file_config.get("plugin") or "classify"
    task_name = task if task is not None else file_config.get("task", "")
    task_obj = get_registry().get_task(plugin, task_name)
    overrides = {**overrides, "plugin": plugin, "task": task_obj.name}
    config = resolve(task_obj.defaults, file_config, config_file or "", sets, overrides)
    # Check --with plugins here too, so that --dry-run reports an unknown or broken one.
    for name in config["with_plugins"]:
        get_registry().plugin_object(name)
    return config


@cli.command()
@click.option(
    "--plugin", "-p", help="Plugin providing the task (default: from the config file, else classify)."
)
@click.option("--task", "-t", help="Task of the plugin (default: the plugin's first task).")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option(
    "--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable)."
)
@click.option("--data", help="Data set path (default: the task's embedded default data).")
@click.option("--device", help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--out", "out_dir", help="Directory that holds run directories (default: runs).")
@click.option(
    "--with", "with_plugins", multiple=True, metavar="PLUGIN", help="Enable another plugin's hooks."
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME",
    help="Train only these of the config's variants (repeatable; default: all).",
)
@click.option("--dry-run", is_flag=True, help="Print the resolved config and stop.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    metavar="RUN_DIR",
    help="Continue an interrupted run with its own config.toml (no other option).",
)
def train(
    plugin, task, config_file, sets, data, device, out_dir, with_plugins, variants, dry_run, resume_dir
) -> None:
    """Train a teacher (unless given) and distil it into a student; write a run directory.

    When the config has variants (``kd tasks --defaults`` shows a task's), the teacher is trained once and
    each variant's student learns from it; the report compares them with the no-KD baseline. Ctrl-C
    stops cleanly (exit status 130); ``--resume RUN_DIR`` then continues from the last finished epoch.
    """
    if resume_dir is not None:
        given = [plugin, task, config_file, data, device, out_dir, *sets, *with_plugins, *variants]
        if any(option is not None for option in given) or dry_run:
            raise click.UsageError("--resume RUN_DIR takes no other option: the run keeps its config.toml")
        _fit_or_exit(read_toml(Path(resume_dir) / "config.toml"), resume_dir)
        return
    overrides: dict[str, Any] = {}
    if data is not None:
        # Stored absolute, so `kd eval RUN_DIR` and `kd train -c RUN_DIR/config.toml` work from anywhere.
        overrides.setdefault("data", {})["path"] = os.path.abspath(data)
    if device is not None:
        overrides["device"] = device
    if out_dir is not None:
        overrides["out_dir"] = out_dir
    if with_plugins:
        overrides["with_plugins"] = list(with_plugins)
    config = _load_config(config_file, plugin, task, sets, overrides)
    if variants:
        config["variants"] = _select_variants(config["variants"], variants)
    if dry_run:
        click.echo(dump(config))
        return
    _fit_or_exit(config)


def _fit_or_exit(config: dict[str, Any], resume_dir: str | None = None) -> None:
    """Run ``fit``; Ctrl-C ends with a one-line message and exit status 130 (128 + SIGINT)."""
    from kdcore.engine import RunInterrupted, fit

    # soft_wrap: long paths (the run directory) print on one line even when stdout is not a terminal.
    console = Console(soft_wrap=True)
    try:
        fit(config, console=console, resume=resume_dir)
    except RunInterrupted as stop:
        console.print(f"[bold yellow]stopped:[/] {escape(str(stop))}")
        raise SystemExit(130) from None


def _select_variants(available: dict[str, Any], chosen: tuple[str, ...]) -> dict[str, Any]:
    for name in chosen:
        if name not in available:
            hint = difflib.get_close_matches(name, list(available), n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            known = ", ".join(available) or "none"
            raise ConfigError(
                f"--variant {name!r} is not a variant of this config.{suggestion} Variants: {known}"
            )
    return {name: available[name] for name in dict.fromkeys(chosen)}


@cli.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", help="Evaluate on this data instead of the run's (see the task's README).")
@click.option("--checkpoint", default="checkpoints/best.pt", show_default=True, help="Relative to RUN_DIR.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_(run_dir, data, checkpoint, device, as_json) -> None:
    """Evaluate a run's saved student (or any of its checkpoints) on the validation data."""
    from torch.utils.data import DataLoader

    from kdcore.checkpoint import load_checkpoint
    from kdcore.engine import select_device

    run_path = Path(run_dir)
    config = read_toml(run_path / "config.toml")
    if data is not None:
        config["data"]["path"] = os.path.abspath(data)
    task = get_registry().get_task(config["plugin"], config["task"])
    state = load_checkpoint(run_path / checkpoint)
    torch_device = select_device(device)
    info = state.get("data_info")
    if data is not None and task.build_eval_data is not None and info is not None:
        dataset, collate_fn = task.build_eval_data(config, info), None
    else:
        # A teacher checkpoint is scored on the teacher's own data when the task gives it one.
        task_data = task.build_data(config).for_stage(str(state.get("stage", "")).startswith("teacher"))
        dataset, collate_fn, info = task_data.val, task_data.collate_fn, info or task_data.info
    model = task.build_model(state["arch"], info, config)
    model.load_state_dict(state["model"])
    model.to(torch_device)
    loader = DataLoader(dataset, batch_size=config["data"]["eval_batch_size"], collate_fn=collate_fn)
    metrics = task.evaluate(model, loader, torch_device, config)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    table = Table(title=escape(f"{run_path} — {checkpoint} ({state['arch']})"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(escape(name), f"{value:.4f}")
    Console().print(table)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir) -> None:
    """Redraw RUN_DIR/report (PNG curves and summary.json) from metrics.jsonl."""
    from kdcore.report import write_report

    summary = write_report(run_dir)
    click.echo(json.dumps(summary, indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--check", is_flag=True, help="Also run every plugin's schedule and loss registration (imports torch)."
)
def plugins(as_json, check) -> None:
    """List installed plugins: distribution, version, tasks, hooks, and errors of broken ones."""
    registry = get_registry()
    if check:
        registry.register_schedules_and_losses()
    infos = list(registry.plugins.values())
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(i), "broken": i.broken} for i in infos], indent=2))
        return
    table = Table(title="kd plugins")
    for column in ("name", "distribution", "tasks", "hooks", "status"):
        table.add_column(column, overflow="fold")
    for info in infos:
        # Names, descriptions and errors are plain text: "[x]" in them is not rich markup.
        status = f"[red]broken: {escape(str(info.error))}[/]" if info.broken else "[green]ok[/]"
        table.add_row(
            escape(info.name),
            escape(f"{info.distribution} {info.version}"),
            escape(", ".join(info.tasks)),
            escape(", ".join(info.hooks)),
            status,
        )
    Console().print(table)


@cli.command()
@click.option("--plugin", "-p", help="Only this plugin's tasks.")
@click.option("--defaults", is_flag=True, help="Also print each task's default config as TOML.")
def tasks(plugin, defaults) -> None:
    """List tasks with a one-line description (and their default config)."""
    registry = get_registry()
    names = [plugin] if plugin else [n for n, i in registry.plugins.items() if not i.broken]
    table = Table(title="kd tasks")
    for column in ("plugin", "task", "description", "architectures"):
        table.add_column(column, overflow="fold")
    chosen = []
    for name in names:
        registry.plugin_object(name)
        for task in registry.tasks[name].values():
            chosen.append(task)
            table.add_row(
                escape(name),
                escape(task.name),
                escape(task.description),
                escape(", ".join(task.architectures)),
            )
    Console().print(table)
    if defaults:
        for task in chosen:
            click.echo(f"# {task.plugin} / {task.name}\n{dump(dict(task.defaults))}")


@cli.group(invoke_without_command=True)
@click.pass_context
def schedules(ctx) -> None:
    """List the temperature/weight schedules; `kd schedules plot NAME` draws one."""
    if ctx.invoked_subcommand is not None:
        return
    from kdcore.schedules import describe_schedule

    table = Table(title="kd schedules")
    table.add_column("name")
    table.add_column("description", overflow="fold")
    for name, factory in sorted(get_registry().schedules.items()):
        table.add_row(escape(name), escape(describe_schedule(factory)))
    Console().print(table)


@schedules.command("plot")
@click.argument("name")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="A schedule parameter.")
@click.option("--output", "-o", default=None, help="PNG path (default: NAME.png).")
@click.option("--steps", default=200, show_default=True)
def schedules_plot(name, sets, output, steps) -> None:
    """Write a PNG of schedule NAME over training progress.

    Example: kd schedules plot anneal_to_one -s start=8 -s end_fraction=0.5
    """
    from kdcore.config import parse_set
    from kdcore.schedules import build_schedule, plot_schedule

    spec: dict[str, Any] = {"name": name}
    for item in sets:
        spec.update(parse_set(item))
    schedule = build_schedule(spec, get_registry().schedules, where=f"schedule {name!r}")
    path = plot_schedule(schedule, output or f"{name}.png", steps=steps)
    click.echo(f"wrote {path}")


def _add_plugin_commands(group: click.Group) -> None:
    registry = get_registry()
    for impl in registry.pm.hook.kd_register_commands.get_hookimpls():
        try:
            impl.function(cli=group)
        except Exception as exc:  # one plugin's broken command must not take the CLI down
            registry.plugins[impl.plugin_name].error = f"kd_register_commands failed: {exc}"


def cli_with_plugins() -> KdGroup:
    """A copy of the ``kd`` group that adds every loaded plugin's commands when one is first asked for
    (``cli`` is left as it is): what the console script runs, for tests and for embedding ``kd`` in
    another program."""
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    group.plugin_commands = True
    return group


def main() -> None:
    """Console-script entry point."""
    cli_with_plugins()(prog_name="kd")


if __name__ == "__main__":
    sys.exit(main())
