"""Checks of the folders a command reads and writes (nnU-Net's and its own), made before any work starts, so that a
bad setting is one line instead of a traceback from whichever step first touches the folder."""
import os
import sys
from typing import Optional, Sequence


def require_writable_folder(program: str, folder: str, option: str = "-o") -> None:
    """End ``program`` with one line naming ``folder`` unless it can be written, without creating anything.

    Checked before any work starts: a read-only file system or a path below a file would otherwise end a long run
    (training, prediction) with a traceback from whichever step writes first. The probe is a temporary file in the
    nearest existing folder on the path, so that a refusal later in the checks leaves nothing behind.
    """
    import errno
    import tempfile
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        what = f"{option}={folder}" if option.startswith("nnUNet_") else f"the output folder {os.path.abspath(folder)}"
        fix = f"make it writable or set {option} to a writable folder" if option.startswith("nnUNet_") else \
            f"choose a writable folder with {option}"
        sys.exit(f"{program}: cannot write to {what} ({e.strerror or e}). {fix[0].upper()}{fix[1:]}.")


_FOLDER_ROLES = {"nnUNet_raw": "raw datasets", "nnUNet_preprocessed": "preprocessed datasets",
                 "nnUNet_results": "trained models"}


def require_nnunet_folders(program: str, read: Sequence[str] = (), write: Sequence[str] = (),
                           trainer_dir: Optional[str] = None) -> None:
    """End ``program`` with one line unless nnU-Net's folders it needs are set and exist (``read``), or can be written,
    existing or not (``write``), and, given ``trainer_dir`` (the plugin's ``nnunet_trainers.TRAINER_DIR``, for a
    command that runs ``nnUNetv2_train``), unless ``nnUNet_extTrainer`` lets ``nnUNetv2_train`` find its trainers.

    Checked before any work, so that a missing variable is one line, not nnU-Net's traceback from whichever step first
    touches the folder (or a training relayed from a subprocess, minutes later).
    """
    for variable in dict.fromkeys([*read, *write]):
        value = os.environ.get(variable)
        if not value:
            sys.exit(f"{program}: {variable} is not set; nnU-Net keeps its {_FOLDER_ROLES[variable]} there. Set it, "
                     f"e.g. export {variable}=/data/{variable} (nnU-Net's documentation/setting_up_paths.md).")
        if variable in write:  # nnU-Net creates a folder it writes to; it must only be possible
            require_writable_folder(program, value, f"{variable}")
        elif not os.path.isdir(value):
            sys.exit(f"{program}: {variable}={value} is not an existing folder. Create it (mkdir -p {value}) or set "
                     f"{variable} to the folder that holds your {_FOLDER_ROLES[variable]}.")
    if trainer_dir:
        folders = [f for f in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if f]
        trainer_dir = os.path.realpath(trainer_dir)
        if not any(os.path.commonpath([os.path.realpath(f), trainer_dir]) == os.path.realpath(f) for f in folders):
            given = f"is {os.environ['nnUNet_extTrainer']!r}" if folders else "is not set"
            sys.exit(f"{program}: nnUNet_extTrainer {given}, so nnUNetv2_train cannot find the plugin's trainers. "
                     f'Run: export nnUNet_extTrainer="$(nnUNetv2_ddpm_trainer_dir)"')


def output_folder_or_nnunet(program: str, given: Optional[str], variable: str, option: str) -> str:
    """The folder a command writes into: ``given`` (its ``option``), or else nnU-Net's ``variable``; either ends
    ``program`` with one line unless it is set and can be written."""
    if given is None:
        require_nnunet_folders(program, write=(variable,))
        return os.environ[variable]
    require_writable_folder(program, given, option)
    return given
