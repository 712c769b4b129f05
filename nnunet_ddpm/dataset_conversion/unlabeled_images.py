"""Images without any labels, preprocessed with a dataset's plans, for DDPM pretraining.

Convention: put them beside ``imagesTr`` as ``$nnUNet_raw/DatasetXXX/imagesUnlabeled/CASE_0000.nii.gz`` (one file per
channel, named and formatted like ``imagesTr``) and run ``nnUNetv2_ddpm_preprocess_unlabeled -d XXX -c CONFIG``.
They are preprocessed exactly like the training images (the plans' preprocessor) into
``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/``, where ``nnUNetTrainerDDPMPretrain`` adds them to
its training images. Each run adds its folder's images to that set (``--replace`` starts it afresh). No other trainer looks there, and no split file lists them.
"""
import os
import re
import shutil
from collections import defaultdict
from typing import Dict, List, Optional

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subfiles
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnunet_ddpm.dataset_conversion.image_integrity import CaseFiles, check_cases
from nnunet_ddpm.files import folder_written_atomically

UNLABELED_IMAGES = "imagesUnlabeled"


def unlabeled_preprocessed_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    return join(preprocessed_dataset_folder, f"{data_identifier}_unlabeled")


def unlabeled_cases(image_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """{case: [channel files]} of a folder of ``CASE_XXXX<file_ending>`` images, checked against dataset.json."""
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    files = subfiles(image_folder, join=False)
    wrong_ending = [f for f in files if not f.endswith(ending)]
    if wrong_ending:
        raise ValueError(f"{len(wrong_ending)} files in {image_folder} do not end in the dataset's file ending "
                         f"'{ending}' (first: {wrong_ending[:3]}); convert them like imagesTr.")
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    channels = defaultdict(dict)
    for f in files:
        match = pattern.match(f)
        if match is None:
            raise ValueError(f"{f} in {image_folder} is not named CASE_XXXX{ending} (XXXX: 4-digit channel index)")
        channels[match.group(1)][int(match.group(2))] = join(image_folder, f)
    bad = {case: sorted(c) for case, c in channels.items() if sorted(c) != list(range(num_channels))}
    if bad:
        first = next(iter(bad))
        raise ValueError(f"The dataset has {num_channels} channels (_0000 to _{num_channels - 1:04d}), but "
                         f"{len(bad)} cases in {image_folder} have other channels (e.g. {first}: {bad[first]}).")
    if not channels:
        raise ValueError(f"No images in {image_folder}.")
    return {case: [c[i] for i in range(num_channels)] for case, c in sorted(channels.items())}


def preprocess_unlabeled(dataset: str, configuration: str, image_folder: Optional[str] = None,
                         plans_identifier: str = "nnUNetPlans", allow_test_images: bool = False,
                         replace: bool = False) -> dict:
    """Preprocess a folder of unlabeled images with the dataset's plans and add them to the dataset's unlabeled set.

    The set grows: cases preprocessed before stay (a case of the same identifier is preprocessed again from the new
    file), so that images from several folders add up and none of the pretraining's images is lost without a word.
    ``replace`` starts the set afresh from this folder. Every image is checked (``check_cases``) before anything is
    written. The new set is built in a temporary folder and moved into place at the end (removed on any error), so a
    failed or interrupted run leaves the previous set as it was and nothing the pretrainer would pick up.

    Returns {'folder', 'before', 'after', 'added', 'updated', 'removed'}: the output folder, the numbers of cases before
    and after, and the identifiers added, preprocessed again, and dropped (``replace`` only).
    """
    dataset_name = maybe_convert_to_dataset_name(dataset)
    raw_folder = join(str(nnUNet_raw), dataset_name) if nnUNet_raw.is_set() else None  # not needed with -i
    if image_folder is None and raw_folder is None:
        raise FileNotFoundError(f"nnUNet_raw is not set, so $nnUNet_raw/{dataset_name}/{UNLABELED_IMAGES} cannot be "
                                f"found: set nnUNet_raw or pass the image folder with -i.")
    image_folder = os.path.abspath(image_folder or join(raw_folder, UNLABELED_IMAGES))
    if not isdir(image_folder):
        raise FileNotFoundError(f"{image_folder} does not exist. Put the unlabeled images there (named like "
                                f"imagesTr) or pass the folder with -i.")
    test_folder = join(raw_folder, "imagesTs") if raw_folder else ""
    if isdir(test_folder) and os.path.samefile(image_folder, test_folder) and not allow_test_images:
        raise ValueError(f"{image_folder} holds the held-out test images. Pretraining on them makes the test set "
                         f"part of training; pass --allow-test-images if that is what you want.")
    preprocessed = join(nnUNet_preprocessed, dataset_name)
    plans_file = join(preprocessed, plans_identifier + ".json")
    if not isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} "
                                f"-c {configuration} first.")
    plans_manager = PlansManager(plans_file)
    configuration_manager = plans_manager.get_configuration(configuration)
    dataset_json = load_json(join(preprocessed, "dataset.json"))
    labelled_folder = join(preprocessed, configuration_manager.data_identifier)
    if not isdir(labelled_folder):
        raise FileNotFoundError(f"{labelled_folder} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} "
                                f"-c {configuration} first.")
    cases = unlabeled_cases(image_folder, dataset_json)
    dataset_class = infer_dataset_class(labelled_folder)
    clashes = sorted(set(cases) & set(dataset_class.get_identifiers(labelled_folder)))
    if clashes:
        raise ValueError(f"{len(clashes)} unlabeled cases have the identifier of a training case "
                         f"(first: {clashes[:3]}); rename them.")
    # every file decodes completely, is finite and shares its case's grid: nnU-Net's preprocessor would read a
    # truncated or NaN file as zeros and stop at channels of different shapes with a bare RuntimeError
    check_cases({case: CaseFiles(files) for case, files in cases.items()}, what=f"unlabeled images in {image_folder}")
    output = unlabeled_preprocessed_folder(preprocessed, configuration_manager.data_identifier)
    existing = sorted(infer_dataset_class(output).get_identifiers(output)) if isdir(output) and \
        os.listdir(output) else []
    kept = [] if replace else [c for c in existing if c not in cases]
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    with folder_written_atomically(output) as partial:
        for f in os.listdir(output) if kept else []:
            if _case_of_file(f, kept) is not None:  # the earlier set's files, copied: the old set stays intact
                shutil.copy2(join(output, f), join(partial, f))
        for case, files in tqdm(cases.items(), desc="Preprocessing unlabeled images"):
            # nnU-Net's own preprocessing and file format; its "segmentation" is only the nonzero mask, no label
            preprocessor.run_case_save(join(partial, case), files, None, plans_manager, configuration_manager,
                                       dataset_json)
    return {"folder": output, "before": len(existing), "after": len(kept) + len(cases),
            "added": sorted(set(cases) - set(existing)), "updated": sorted(set(cases) & set(existing)),
            "removed": sorted(set(existing) - set(cases)) if replace else []}


def _case_of_file(file_name: str, cases: List[str]) -> Optional[str]:
    """The case among ``cases`` whose preprocessed file this is (``CASE.b2nd``, ``CASE_seg.b2nd``, ``CASE.pkl``...)."""
    stem = file_name.split(".", 1)[0]
    stem = stem[:-len("_seg")] if stem.endswith("_seg") else stem
    return stem if stem in cases else None
