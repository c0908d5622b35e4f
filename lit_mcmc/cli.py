"""The ``lit-mcmc`` command: LightningCLI over every LightningModule and DataModule of the package.

``lit-mcmc fit --config configs/toy2d/train_gmm_score.yaml`` trains; ``lit-mcmc predict --config
configs/toy2d/sample_hmc_curve.yaml`` samples. Any key can be overridden on the command line
(``--trainer.max_steps 3000``); ``--print_config`` shows the full resolved config.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lit_mcmc.data.toy2d  # noqa: F401  (registers DataModule subclasses for class_path resolution)
from lit_mcmc.data.indices import SampleIndexDataModule
from lit_mcmc.data.shards import check_output_dir, expected_bytes, find_sample_writer
from lit_mcmc.modules.training import TrainingDiverged
from lit_mcmc.runs import claim_run_dir, run_record
from lit_mcmc.trials import TRIALS_FILE, aggregate_trials, check_seeds, trial_args, trials_summary


class ConciseArgumentParser(LightningArgumentParser):
    """Reports a config that does not parse as one line naming the key, instead of the usage and a type dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("LIT_MCMC_DEBUG"):
            super().error(message, ex)
        sys.stderr.write(f"lit-mcmc: error: {concise_parse_error(message)}\n"
                         "(`lit-mcmc <fit|predict|...> --help` lists every key)\n")
        self.exit(2)


class LitMCMCCLI(LightningCLI):
    """LightningCLI with the package's defaults: input gradients allowed, stable checkpoint paths, resumable writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", ConciseArgumentParser)
        self.argv = list(kwargs.get("args") if kwargs.get("args") is not None else sys.argv[1:])
        self.init_kwargs = kwargs
        self.trial_seeds: list[int] | None = None  # model.seeds: this invocation runs one predict per seed
        check_command_line(self.argv)
        super().__init__(*args, **kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument("--overwrite", action="store_true",
                                help="if trainer.default_root_dir holds a run (run.json, shards/, samples.npz), "
                                     "move it aside to <dir>.old-<timestamp> and sample afresh; without it a run with "
                                     "other settings is refused and a matching one resumes")
        return parser

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        # Samplers (and energy models' validation) need input gradients: no inference mode.
        parser.set_defaults({"trainer.inference_mode": False})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "predict" and config.get("model.init_args.seeds") is not None:
            try:
                self.trial_seeds = check_seeds(config.model.init_args.seeds)
            except ValueError as err:
                exit_with_one_line(err, str(err))
            return  # each trial is a predict of its own (_run_subcommand)
        # Samples go to disk through the SampleWriter: keeping them all in memory as well helps no one.
        if self.subcommand == "predict" and config.get("return_predictions") is None:
            config["return_predictions"] = False
        # The index DataModule skips samples already written into the run directory (resume after preemption).
        data = config.get("data")
        if data is not None and data.get("class_path", "").endswith("SampleIndexDataModule"):
            init = data["init_args"]
            if init.get("output_dir") is None:
                init["output_dir"] = config.trainer.default_root_dir or "."
        if self.subcommand == "fit":
            for key in ("max_steps", "max_epochs"):
                if config.trainer.get(key) == 0:
                    exit_with_one_line(ValueError(key), f"trainer.{key}=0 trains nothing, so no checkpoint would be "
                                                        "written (nothing was written): give the number of training "
                                                        f"{key.removeprefix('max_')} (-1: no limit)")
        use_default_tensorboard_logger(config.trainer)  # no hp_metric placeholder in HPARAMS
        job_id = SLURMEnvironment.job_id()  # None outside SLURM and in interactive sessions (several runs per job)
        if job_id is not None:
            pin_tensorboard_version(config.trainer, f"slurm_{job_id}")

    def instantiate_classes(self) -> None:
        if self.trial_seeds is not None:
            return
        # A bad value (negative step size, missing checkpoint, ...) is reported as one line naming the key, not as
        # jsonargparse's union-type dump with a traceback. LIT_MCMC_DEBUG=1 keeps the traceback.
        if self.subcommand == "predict":
            check_components(self.config[self.subcommand].get("model"))
        try:
            super().instantiate_classes()
        except MisconfigurationException as err:  # Lightning's: the accelerator, devices or strategy
            exit_with_one_line(err, f"trainer: {concise_error(err)} (check trainer.accelerator, trainer.devices and "
                                    "trainer.strategy against this machine)")
        except (*USER_ERRORS, TypeError) as err:
            exit_with_one_line(err, full_key_paths(concise_error(err)))

    def _run_subcommand(self, subcommand: str) -> None:
        if self.trial_seeds is not None:
            self.run_trials(self.trial_seeds)
            return
        # The same for mistakes found once the run starts (inside Lightning's hooks): inference mode on, an
        # accelerator or strategy that this machine lacks, a metric callback given too few samples, ...
        try:
            super()._run_subcommand(subcommand)
        except USER_ERRORS as err:
            exit_with_one_line(err, full_key_paths(str(err).strip().splitlines()[0]) if str(err).strip()
                               else type(err).__name__)

    def run_trials(self, seeds: list[int]) -> None:
        """One predict per seed, each in its own directory, then the aggregate (:mod:`lit_mcmc.trials`)."""
        root = Path(self.config.predict.trainer.default_root_dir or ".")
        trial = None
        for seed in seeds:
            trial = LitMCMCCLI(**{**self.init_kwargs, "args": trial_args(self.argv, seed, root)})
        if trial is not None and trial.trainer.global_rank == 0:
            try:
                record = aggregate_trials(root, seeds)
            except FileNotFoundError as err:
                exit_with_one_line(err, str(err))
            print(f"lit-mcmc: {len(seeds)} trials (seeds {seeds}) in {root}/seed_*; mean ± std over them in "
                  f"{root / TRIALS_FILE}:\n{trials_summary(record)}", file=sys.stderr)

    def after_instantiate_classes(self) -> None:
        if self.trial_seeds is not None:
            return
        if self.subcommand == "predict":  # before the loggers create folders there, and before any sampling
            writer = find_sample_writer(self.trainer.callbacks)
            if writer is not None:
                run_dir = writer.resolve_dir(self.trainer)
                try:
                    check_before_sampling = getattr(self.model, "check_before_sampling", None)
                    if check_before_sampling is not None:  # step tables: errors before anything is written
                        check_before_sampling(self.datamodule)
                    note = None
                    if isinstance(self.datamodule, SampleIndexDataModule):  # resumable: one run per directory
                        config = self.config[self.subcommand]
                        # a requeued SLURM job reruns its command line: --overwrite moved the old run on the
                        # first start, and the requeued one resumes what that start sampled
                        requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
                        overwrite = bool(config.get("overwrite")) and not requeued
                        note = claim_run_dir(run_dir, run_record(config), overwrite,
                                             write=self.trainer.global_rank == 0)
                    check_output_dir(run_dir, expected_bytes(self.datamodule, self.model))
                except (OSError, ValueError) as err:
                    exit_with_one_line(err, full_key_paths(str(err)))
                if note and self.trainer.global_rank == 0:
                    print(f"lit-mcmc: {note}", file=sys.stderr)
        # Checkpoints land in <default_root_dir>/checkpoints (not a per-version folder), so later runs find them.
        root = Path(self.trainer.default_root_dir)
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(root / "checkpoints")


# What a wrong config, a missing, bad or unwritable file, a full disk, a setting this machine cannot honour, or a
# diverged training raise: reported as one line.
USER_ERRORS = (ValueError, OSError, MisconfigurationException, TrainingDiverged)


def exit_with_one_line(err: BaseException, message: str) -> NoReturn:
    """``lit-mcmc: error: <message>`` on stderr and exit status 2; ``LIT_MCMC_DEBUG=1`` re-raises (full traceback)."""
    if os.environ.get("LIT_MCMC_DEBUG"):
        raise err
    print(f"lit-mcmc: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def full_key_paths(message: str) -> str:
    """Sampler messages name their keys from the sampler section (``sampler.n_leapfrog``): the full path is
    ``model.sampler.n_leapfrog``, as on the command line and in --print_config."""
    return re.sub(r"(?<![\w.])sampler\.(?=[a-z_])", "model.sampler.", message)


def check_components(model: Namespace | None) -> None:
    """Each component's config, checked by its name: messages say ``model.components.<its name>.<key>``."""
    from lit_mcmc.modules.components import ComponentConfig

    components = model.get("init_args.components") if isinstance(model, Namespace) else None
    if not isinstance(components, dict):
        return
    for name, spec in components.items():
        fields = spec.as_dict() if isinstance(spec, Namespace) else spec
        if not isinstance(fields, dict):
            continue
        try:
            ComponentConfig(**fields)
        except (TypeError, ValueError) as err:
            message = str(err).replace("model.components.<name>", f"model.components.{name}")
            if f"model.components.{name}" not in message:
                message = f"model.components.{name}: {message}"
            exit_with_one_line(err, message)


def check_command_line(args: list[str]) -> None:
    """Mistakes the parser would report badly, found first: a YAML file that does not parse (named with its line and
    column; tabs are not allowed), and a null given for a key inside ``model.components`` (jsonargparse reads it as
    the text 'None')."""
    import yaml

    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.endswith((".yaml", ".yml")) and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                if mark is None:
                    exit_with_one_line(err, f"{value}: not valid YAML: {err}")
                lines = Path(value).read_text().splitlines()
                line = lines[mark.line] if mark.line < len(lines) else ""
                where = f"{value}, line {mark.line + 1}, column {mark.column + 1}"
                if "\t" in line[:mark.column + 1] or line[mark.column:mark.column + 1] == "\t":
                    exit_with_one_line(err, f"{where}: a tab; tabs are not allowed in YAML: indent with spaces")
                exit_with_one_line(err, f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})")
        key, _, inline = arg.partition("=")
        given = inline if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
        match = re.fullmatch(r"--model(?:\.init_args)?\.components\.([^.]+)\.(\w+)", key)
        if match and given.strip().lower() in ("null", "none", "~"):
            name, field = match.groups()
            exit_with_one_line(ValueError(key), f"model.components.{name}.{field}: null cannot be given on the "
                                                "command line for a key of a component (it would be read as the text "
                                                f"'None'): set {field}: null in the YAML file")


def use_default_tensorboard_logger(trainer: Namespace) -> None:
    """Lightning's default logger (TensorBoard in ``default_root_dir/lightning_logs``) made explicit, without its
    ``hp_metric`` placeholder: a fit run then writes no HParams session, a predict run only the SampleWriter's."""
    if trainer.get("logger") in (None, True):
        trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                   init_args=Namespace(save_dir=trainer.get("default_root_dir") or ".",
                                                       default_hp_metric=False))


def pin_tensorboard_version(trainer: Namespace, version: str) -> None:
    """Make the default or a version-less TensorBoard logger write into ``version`` (a requeued SLURM job's log dir).

    A requeued job is the same run: with a fixed version it keeps appending to one TensorBoard folder instead of
    starting ``version_<n+1>``. Other loggers, and a TensorBoard logger with an explicit version, are left as given.
    """
    logger = trainer.get("logger")
    if logger is None or logger is True:  # Lightning's default: TensorBoard in default_root_dir/lightning_logs
        save_dir = trainer.get("default_root_dir") or "."
        trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                   init_args=Namespace(save_dir=save_dir, version=version))
    elif (isinstance(logger, Namespace) and logger.get("class_path", "").endswith(".TensorBoardLogger")
          and logger.get("init_args.version") is None):
        logger.init_args.version = version


def concise_error(err: BaseException) -> str:
    """The informative lines of a jsonargparse instantiation error (our own messages), else the whole message."""
    noise = ("Expected a <class 'NoneType'>", "Problem with given class_path")
    lines = [line.strip()[2:] for line in str(err).splitlines() if line.strip().startswith("- ")]
    useful = [line for line in lines if not line.startswith(noise)]
    return "; ".join(useful) if useful else str(err).splitlines()[0]


def concise_parse_error(message: str) -> str:
    """``<dotted key>: <reason>`` from jsonargparse's nested 'Parser key "..."' report, else its first line."""
    lines = message.splitlines()
    keys = [(i, match.group(1)) for i, line in enumerate(lines) if (match := re.search(r'Parser key "([^"]+)":',
                                                                                        line))]
    if not keys:
        return lines[0] if lines else message
    noise = ("Does not validate against", "Subtypes:", "Errors:", "- Problem with given class_path",
             "- Expected a <class 'NoneType'>")
    last = keys[-1][0]
    same_line = lines[last].split('":', 1)[1].strip()  # 'Parser key "config": File does not exist: ...'
    reasons = [same_line] if same_line else []
    reasons += [line.strip().removeprefix("- ") for line in lines[last + 1:]
                if line.strip() and not line.strip().startswith(noise)]
    return f"{'.'.join(key for _, key in keys)}: {reasons[0] if reasons else 'invalid value'}"


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-mcmc`` console script."""
    LitMCMCCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


__all__ = ["LitMCMCCLI", "SampleIndexDataModule", "main"]


if __name__ == "__main__":
    main()
