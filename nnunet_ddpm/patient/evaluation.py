"""Dice of a segmented volume against a reference, per label or region of an nnU-Net dataset.json.

Used for the sanity check on the annotated slices (``summary.json``) and for the whole-volume Dice against a full
ground truth in ``documentation/patient.md``.
"""
import argparse
import json
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_ddpm.dataset_conversion.image_integrity import label_masks


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: dict,
                   slices: Optional[Sequence[int]] = None, axis: int = 0) -> Dict[str, Optional[float]]:
    """Dice per label or region; None where both prediction and reference are empty (undefined, as in nnU-Net).
    ``slices``: only these indices along ``axis``."""
    if slices is not None:
        prediction, reference = (np.take(a, list(slices), axis=axis) for a in (prediction, reference))
    result = {}
    for name, values in label_masks(labels).items():
        p, r = np.isin(prediction, values), np.isin(reference, values)
        total = int(p.sum() + r.sum())
        result[name] = None if total == 0 else round(2 * int((p & r).sum()) / total, 4)
    return result


def _parser() -> argparse.ArgumentParser:
    """-ref and -dataset_json are nnU-Net's spellings; the older -r and --dataset-json are still accepted."""
    parser = argparse.ArgumentParser(description="Dice per label or region of a segmented volume against a full "
                                                 "reference segmentation (same grid).")
    parser.add_argument("-p", required=True, help="segmentation, e.g. OUTPUT/segmentation_finetune.nii.gz")
    parser.add_argument("-ref", "-r", dest="r", required=True, help="reference segmentation")
    parser.add_argument("-dataset_json", "--dataset-json", dest="dataset_json", default=None,
                        help="labels/regions to evaluate (default: the labels found)")
    return parser


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    prediction, reference = (sitk.GetArrayFromImage(sitk.ReadImage(f)) for f in (args.p, args.r))
    if prediction.shape != reference.shape:
        parser.exit(1, f"Shapes differ: {prediction.shape} and {reference.shape}\n")
    labels = load_json(args.dataset_json)["labels"] if args.dataset_json else \
        {f"label_{v}": int(v) for v in np.union1d(np.unique(prediction), np.unique(reference)) if v != 0}
    print(json.dumps(dice_per_label(prediction, reference, labels), indent=1))


if __name__ == "__main__":
    main()
