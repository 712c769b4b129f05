"""``python tools/brats2015_sample.py``: the four real BraTS 2015 cases of the DeepMedic sample as a 3D nnU-Net
raw dataset, so that the slicer (and everything after it) runs on real scans.

The sample (``../shared/data/brats2015_deepmedic_sample``, see its README.md) has one folder per patient with FLAIR
and T1c normalised to zero mean and unit variance inside the brain, a brain mask and the BraTS 2013/2015 labels
(1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing). Outside the brain the normalised images hold a negative
constant; this step sets it to 0 (the brain mask), so that nnU-Net's crop to the nonzero region and its
normalisation see the brain only, as for skull-stripped BraTS 2021. Labels keep their values; dataset.json declares
the usual BraTS regions over them (whole tumour {1,2,3,4}, tumour core {1,3,4}, enhancing {4}), or plain labels.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p

from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError, check_target_free
from nnunet_ddpm.files import folder_written_atomically

CHANNELS = {"0": "FLAIR", "1": "T1c"}
CHANNEL_FILES = ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd")
LABEL_FILE, MASK_FILE = "OTMultiClass", "brainmask"
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
# nnU-Net paints predicted regions in this order: whole -> 2 (oedema), core -> 1 (necrosis), enhancing -> 4
REGIONS = {"background": 0, "whole tumor": (1, 2, 3, 4), "tumor core": (1, 3, 4), "enhancing tumor": (4,)}
REGIONS_CLASS_ORDER = (2, 1, 4)


def arrange_brats2015_sample(sample_folder: str, raw_folder: str, dataset_id: int = 985,
                             name: str = "BraTS2015Sample", regions: bool = True, overwrite: bool = False,
                             file_ending: str = ".nii.gz") -> str:
    """Write ``raw_folder/Dataset{id}_{name}`` (imagesTr: ``<patient>_0000`` FLAIR, ``_0001`` T1c, brain-masked;
    labelsTr: ``<patient>``); returns its folder."""
    patients = sorted(p for p in Path(sample_folder).iterdir() if p.is_dir()) if Path(sample_folder).is_dir() else []
    needed = [f + ".nii.gz" for f in CHANNEL_FILES + (LABEL_FILE, MASK_FILE)]
    incomplete = [p.name for p in patients if not all((p / f).is_file() for f in needed)]
    if not patients or incomplete:
        raise DatasetConversionError(f"{sample_folder} is not the BraTS 2015 DeepMedic sample: expected patient "
                                     f"folders with {', '.join(needed)}" +
                                     (f" ({', '.join(incomplete)} incomplete)" if incomplete else ""))
    if file_ending not in (".nii.gz", ".nii"):
        raise DatasetConversionError(f"file_ending must be .nii.gz or .nii, got {file_ending}")
    maybe_mkdir_p(raw_folder)
    target = check_target_free(raw_folder, dataset_id, name, overwrite)
    with folder_written_atomically(target) as partial:
        for sub in ("imagesTr", "labelsTr"):
            maybe_mkdir_p(join(partial, sub))
        for patient in patients:
            mask = sitk.ReadImage(str(patient / f"{MASK_FILE}.nii.gz")) > 0
            for c, channel in enumerate(CHANNEL_FILES):
                image = sitk.ReadImage(str(patient / f"{channel}.nii.gz"), sitk.sitkFloat32)
                sitk.WriteImage(sitk.Mask(image, mask),
                                join(partial, "imagesTr", f"{patient.name}_{c:04d}{file_ending}"))
            labels = sitk.ReadImage(str(patient / f"{LABEL_FILE}.nii.gz"))
            values = np.unique(sitk.GetArrayViewFromImage(labels))
            if not set(values.tolist()) <= set(LABELS.values()):
                raise DatasetConversionError(f"{patient.name}: label values {values.tolist()} are not BraTS 2015's "
                                             f"{sorted(LABELS.values())}.")
            sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8),
                            join(partial, "labelsTr", f"{patient.name}{file_ending}"))
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(partial, dict(CHANNELS), dict(REGIONS if regions else LABELS), len(patients),
                              file_ending, regions_class_order=REGIONS_CLASS_ORDER if regions else None,
                              dataset_name=name, reference="Menze et al., IEEE TMI 34(10), 2015 (BRATS); "
                                                           "redistributed with DeepMedic by K. Kamnitsas",
                              license="CC BY-NC-SA 3.0", converted_by="nnunet_ddpm",
                              description="BraTS 2015 labels: 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing; "
                                          "images brain-masked")
    return target


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Arrange the BraTS 2015 DeepMedic sample (four patients) as a 3D "
                                                 "nnU-Net raw dataset in $nnUNet_raw.")
    parser.add_argument("-i", required=True, help="the sample folder, e.g. ../shared/data/brats2015_deepmedic_sample")
    parser.add_argument("-d", type=int, default=985, help="dataset id (default: %(default)s)")
    parser.add_argument("-n", default="BraTS2015Sample", help="dataset name (default: %(default)s)")
    parser.add_argument("--plain-labels", action="store_true",
                        help="declare the labels 1-4 instead of the regions whole tumour / tumour core / enhancing")
    parser.add_argument("--raw", default=None, help="raw folder (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
    args = parser.parse_args(argv)
    try:
        raw = args.raw
        if raw is None:
            from nnunetv2.paths import nnUNet_raw
            if not nnUNet_raw.is_set():
                raise DatasetConversionError("nnUNet_raw is not set: export it or pass --raw.")
            raw = str(nnUNet_raw)
        folder = arrange_brats2015_sample(args.i, raw, args.d, args.n, not args.plain_labels, args.overwrite)
    except DatasetConversionError as e:
        sys.exit(f"brats2015_sample: {e}")
    print(f"Wrote {folder}. Next, e.g.: nnUNetv2_ddpm_slice_dataset -s {args.d} -d <new id> -n <name> --size 128 128 "
          f"--num-test-patients 1")


if __name__ == "__main__":
    main()
