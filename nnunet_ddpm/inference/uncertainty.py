"""Per-case uncertainty maps from the probabilities that ``nnUNetv2_predict --save_probabilities`` writes.

The map is the entropy of the predicted class probabilities, normalised by its maximum (log C; for region-based
datasets the mean binary entropy of the regions, normalised by log 2) and written in percent (0-100) with the
dataset's own image writer, so it has exactly the segmentation's geometry and file format. For the pixel classifier
the saved probabilities are the ensemble's mean, so this is the entropy of the ensemble mean (Baranchuk et al. 2022
use it to rank pixels by confidence); it works for any nnU-Net model.
"""
from typing import List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, load_pickle, subfiles
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnunet_ddpm.files import folder_written_atomically

UNCERTAINTY_FOLDER = "uncertainty"


def normalised_entropy(probabilities: np.ndarray, region_based: bool) -> np.ndarray:
    """Entropy in [0, 1] per voxel of (C, *spatial) probabilities: softmax classes, or sigmoid regions."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    if region_based:
        q = np.clip(1.0 - probabilities.astype(np.float64), 1e-12, 1.0)
        return (-(p * np.log(p) + q * np.log(q)) / np.log(2)).mean(0)
    return -(p * np.log(p)).sum(0) / np.log(probabilities.shape[0])


def export_uncertainty(prediction_folder: str, output_folder: str = None) -> List[str]:
    """Write ``<output_folder>/<case><file_ending>`` for every ``<case>.npz`` of ``prediction_folder``.

    The default output folder is ``<prediction_folder>/uncertainty``: beside the segmentations, but in a subfolder so
    that ``nnUNetv2_evaluate_folder`` on the prediction folder still sees segmentations only.
    """
    output_folder = output_folder or join(prediction_folder, UNCERTAINTY_FOLDER)
    for name in ("dataset.json", "plans.json"):
        if not isfile(join(prediction_folder, name)):
            raise FileNotFoundError(f"{prediction_folder} has no {name}; give the output folder of nnUNetv2_predict.")
    cases = [f[:-len(".npz")] for f in subfiles(prediction_folder, suffix=".npz", join=False)]
    if not cases:
        raise FileNotFoundError(f"No probability files (*.npz) in {prediction_folder}. Predict with "
                                f"nnUNetv2_predict ... --save_probabilities first.")
    missing = [c for c in cases if not isfile(join(prediction_folder, c + ".pkl"))]
    if missing:
        raise FileNotFoundError(f"Missing properties files for {missing[:3]} in {prediction_folder} (<case>.pkl, "
                                f"written by nnUNetv2_predict --save_probabilities beside each .npz).")
    dataset_json = load_json(join(prediction_folder, "dataset.json"))
    plans_manager = PlansManager(join(prediction_folder, "plans.json"))
    region_based = plans_manager.get_label_manager(dataset_json).has_regions
    writer = plans_manager.image_reader_writer_class()
    written = []
    with folder_written_atomically(output_folder) as partial:
        for case in tqdm(cases, desc="uncertainty maps"):
            probabilities = np.load(join(prediction_folder, case + ".npz"))["probabilities"]
            entropy = normalised_entropy(probabilities, region_based)
            percent = np.rint(100 * entropy).astype(np.uint8)
            writer.write_seg(percent, join(partial, case + dataset_json["file_ending"]),
                             load_pickle(join(prediction_folder, case + ".pkl")))
            written.append(join(output_folder, case + dataset_json["file_ending"]))
    return written
