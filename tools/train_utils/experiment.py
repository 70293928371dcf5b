"""What train.py, test.py and demo.py share: loading the experiment config, laying out its output directory and
turning the project's own errors into one ``error: ...`` line."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from easydict import EasyDict

from pcdet.config import ConfigError, cfg_from_list, cfg_from_yaml_file, log_config_to_file
from pcdet.models.detectors.detector3d_template import StateDictMismatchError
from pcdet.models.kd.errors import KDConfigError
from pcdet.utils.calibration_kitti import CalibrationError
from pcdet.utils.checkpoint_io import CheckpointError
from pcdet.utils.object3d_kitti import LabelError
from pcdet.utils.point_cloud_io import PointCloudError


class ToolError(RuntimeError):
    """A run that cannot do what it was asked (nothing to evaluate, flags that do not fit together)."""


# Errors whose message already names the culprit (a key, a file, a flag): the user needs that line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    KDConfigError,
    CheckpointError,
    StateDictMismatchError,
    PointCloudError,
    CalibrationError,
    LabelError,
    FileNotFoundError,
    ToolError,
)
EXIT_USER_ERROR = 2  # argparse's code for a usage error: the input, not the program, is wrong
_QUALIFIED_LINE = re.compile(r"^[\w.]+: (.+)$")


def default_workers() -> int:
    """``--workers`` default: OpenPCDet's 4, but never more processes than the machine has cores."""
    return min(4, os.cpu_count() or 1)


def one_line_message(exc: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the worker's whole
    traceback in its message; its last line is the original error."""
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        match = _QUALIFIED_LINE.match(last)
        text = match.group(1) if match else last
    return " ".join(text.split())


def _debug_requested(argv: Sequence[str]) -> bool:
    # Everything after --set is KEY VALUE pairs (argparse.REMAINDER), never a flag of the tool.
    own = argv[: list(argv).index("--set")] if "--set" in argv else argv
    return "--debug" in own


def _log_traceback_to_files(exc: BaseException) -> None:
    """Write the traceback to the run's log file(s) only: the console gets the one-line message."""
    logger = logging.getLogger("pcdet")
    text = "".join(traceback.format_exception(exc))
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, text.rstrip(), None, None)
            handler.handle(record)


def run_tool(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a tool's ``main``; a :data:`USER_ERRORS` error becomes ``error: <message>`` on stderr and exit code 2
    (the traceback goes to the log file, and to the console as well with ``--debug``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        main(argv)
    except USER_ERRORS as exc:
        if _debug_requested(argv):
            raise
        _log_traceback_to_files(exc)
        print(f"error: {one_line_message(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


def exp_group_path(cfg_file: str | os.PathLike) -> str:
    """The config's directory below ``cfgs/`` (``cfgs/kitti_models/x.yaml`` → ``kitti_models``).

    A config outside any ``cfgs/`` directory is grouped by the name of the directory that holds it.
    """
    parts = Path(os.path.abspath(cfg_file)).parts[:-1]
    if "cfgs" in parts:
        last = len(parts) - 1 - parts[::-1].index("cfgs")
        return "/".join(parts[last + 1 :])
    return parts[-1] if parts else ""


def load_experiment_config(cfg_file: str, set_cfgs: list[str] | None, config: EasyDict) -> EasyDict:
    """Load ``cfg_file`` into ``config``, name the experiment (``TAG``, ``EXP_GROUP_PATH``), apply ``--set``."""
    cfg_from_yaml_file(cfg_file, config)
    config.TAG = Path(cfg_file).stem
    config.EXP_GROUP_PATH = exp_group_path(cfg_file)
    if set_cfgs:
        cfg_from_list(set_cfgs, config)
    return config


def experiment_output_dir(config: EasyDict, extra_tag: str, output_root: str | os.PathLike | None = None) -> Path:
    """``<output_root>/<EXP_GROUP_PATH>/<TAG>/<extra_tag>``, with ``output_root`` defaulting to ``ROOT_DIR/output``."""
    root = Path(output_root) if output_root is not None else Path(config.ROOT_DIR) / "output"
    return root / config.EXP_GROUP_PATH / config.TAG / extra_tag


def log_run_header(logger: logging.Logger, args, config: EasyDict, world_size: int) -> None:
    """What every train/test log starts with: the command, devices, arguments and the full config."""
    logger.info("**********************Start logging**********************")
    logger.info("Command: " + " ".join([sys.executable, *sys.argv]))
    logger.info(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'ALL')}")
    if world_size > 1:
        logger.info(f"Total batch size: {world_size * args.batch_size} ({world_size} processes)")
    for key, val in vars(args).items():
        logger.info(f"{key:<24} {val}")
    log_config_to_file(config, logger=logger)
