"""``nnUNetv2_ddpm_convert_brats``: BraTS downloads as an nnU-Net raw 3D dataset with BraTS regions.

The result is laid out like nnU-Net's own ``Dataset137_BraTS21`` conversion: labels renumbered so that 1 is oedema,
2 necrosis / non-enhancing tumour and 3 enhancing tumour, with the regions whole tumour (1, 2, 3), tumour core (2, 3)
and enhancing tumour (3,) and ``regions_class_order`` (1, 2, 3); channels in the order T1, T1ce, T2, FLAIR unless
``--channels`` picks others. ``nnUNetv2_ddpm_slice_dataset`` then makes the paper's 2D slice dataset from it.

Layouts, recognised per case folder:

* BraTS 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`` and ``<case>_seg.nii.gz`` (labels 1 necrosis /
  non-enhancing, 2 oedema, 4 enhancing);
* BraTS 2023: ``<case>/<case>-{t1n,t1c,t2w,t2f}.nii.gz`` and ``<case>-seg.nii.gz`` (3 is enhancing);
* the BraTS 2015 DeepMedic sample: ``Flair_subtrMeanDivStd``, ``T1c_subtrMeanDivStd``, ``brainmask`` and
  ``OTMultiClass`` (1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing); FLAIR and T1c only, set to 0 outside the
  brain mask so that nnU-Net's crop and normalisation see the brain, as in skull-stripped BraTS.

A case without a segmentation goes to ``imagesUnlabeled/``, where ``nnUNetv2_ddpm_preprocess_unlabeled`` (and the
slicer's ``--unlabeled-step``) find images for the DDPM pretraining. Several input folders can be merged (BraTS data
terms apply: cite Menze et al., IEEE TMI 2015 and Bakas et al., Sci. Data 2017 / arXiv:1811.02629).
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p

from nnunet_ddpm.dataset_conversion.image_integrity import CaseFiles, case_problems
from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError, check_target_free
from nnunet_ddpm.files import folder_written_atomically
from nnunet_ddpm.folders import output_folder_or_nnunet

CHANNELS = ("t1", "t1ce", "t2", "flair")  # nnU-Net's Dataset137_BraTS21 order
CHANNEL_TITLES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "Flair"}
REGIONS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)


@dataclass(frozen=True)
class Layout:
    """How one BraTS release names a case's files, and how its label values map to nnU-Net's 1 oedema,
    2 necrosis / non-enhancing, 3 enhancing."""

    name: str
    channel_files: Dict[str, str]  # channel -> file name pattern ({case} is the case folder's name)
    seg_file: str
    label_map: Dict[int, int]
    mask_file: Optional[str] = None  # images are set to 0 outside this mask

    def files(self, case_folder: Path) -> Dict[str, Path]:
        names = dict(self.channel_files, seg=self.seg_file, **({"mask": self.mask_file} if self.mask_file else {}))
        return {k: case_folder / v.format(case=case_folder.name) for k, v in names.items()}

    def matches(self, case_folder: Path) -> bool:
        files = self.files(case_folder)
        return all(files[c].is_file() for c in self.channel_files) and \
            (self.mask_file is None or files["mask"].is_file())


LAYOUTS = (
    Layout("BraTS 2018-2021", {c: "{case}_" + c + ".nii.gz" for c in CHANNELS}, "{case}_seg.nii.gz",
           {0: 0, 1: 2, 2: 1, 4: 3}),
    Layout("BraTS 2023", {"t1": "{case}-t1n.nii.gz", "t1ce": "{case}-t1c.nii.gz", "t2": "{case}-t2w.nii.gz",
                          "flair": "{case}-t2f.nii.gz"}, "{case}-seg.nii.gz", {0: 0, 1: 2, 2: 1, 3: 3}),
    Layout("BraTS 2015 DeepMedic sample", {"flair": "Flair_subtrMeanDivStd.nii.gz",
                                           "t1ce": "T1c_subtrMeanDivStd.nii.gz"},
           "OTMultiClass.nii.gz", {0: 0, 1: 2, 2: 1, 3: 2, 4: 3}, mask_file="brainmask.nii.gz"),
)


@dataclass
class BratsCase:
    name: str
    folder: Path
    layout: Layout

    @property
    def files(self) -> Dict[str, Path]:
        return self.layout.files(self.folder)

    @property
    def labelled(self) -> bool:
        return self.files["seg"].is_file()


def find_cases(input_folders: Sequence[str], channels: Sequence[str], exclude: Sequence[str] = ()) -> List[BratsCase]:
    """Every case folder under the inputs with its layout; refuses unknown folders, missing channels, duplicate
    case names, and files that fail the shared input check (``image_integrity.case_problems``: incomplete, NaN or
    Inf, channels on different grids, label values not of the layout), before anything is written."""
    cases, problems = {}, []
    for folder in map(Path, input_folders):
        if not folder.is_dir():
            raise DatasetConversionError(f"{folder} is not a folder. Give the folder that holds one sub-folder per "
                                         f"BraTS case (e.g. BraTS2021_Training_Data).")
        for case_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            if case_folder.name in exclude:
                continue
            layout = next((layout for layout in LAYOUTS if layout.matches(case_folder)), None)
            if layout is None:
                problems.append(f"{case_folder}: no known BraTS layout (expected e.g. {case_folder.name}_flair.nii.gz "
                                f"... {case_folder.name}_seg.nii.gz)")
                continue
            missing = [c for c in channels if c not in layout.channel_files]
            if missing:
                problems.append(f"{case_folder}: the {layout.name} layout has no {', '.join(missing)} (it has "
                                f"{', '.join(layout.channel_files)}); choose --channels among those")
                continue
            if case_folder.name in cases:
                problems.append(f"case {case_folder.name} is in {cases[case_folder.name].folder.parent} and in "
                                f"{folder}; pass --exclude {case_folder.name} to keep one")
                continue
            cases[case_folder.name] = BratsCase(case_folder.name, case_folder, layout)
    unknown_exclusions = set(exclude) - {p.name for f in map(Path, input_folders) for p in f.iterdir()}
    if unknown_exclusions:
        problems.append(f"--exclude names no case folder: {sorted(unknown_exclusions)}")
    if problems:
        raise DatasetConversionError(f"{len(problems)} problem(s) in the BraTS input:\n  " + "\n  ".join(problems))
    if not cases:
        raise DatasetConversionError(f"No BraTS case folders in {', '.join(map(str, input_folders))}.")
    # every file decodes completely and is finite, a case's channels, mask and segmentation share one grid (nnU-Net's
    # fingerprint would stop at the first mismatch with a bare RuntimeError), its segmentation holds only the layout's
    # label values: all checked, all bad files named, before anything is written
    for case in cases.values():
        files = case.files
        images = [str(files[c]) for c in channels] + ([str(files["mask"])] if "mask" in files else [])
        problems += case_problems(CaseFiles(images, str(files["seg"]) if case.labelled else None,
                                            set(case.layout.label_map)))
    if problems:
        raise DatasetConversionError(f"{len(problems)} image file(s) cannot be used; nothing was written. Fix or "
                                     f"re-download them, or --exclude their cases:\n  " + "\n  ".join(problems))
    return list(cases.values())


def nnunet_labels(segmentation: np.ndarray, layout: Layout, case: str) -> np.ndarray:
    """A BraTS segmentation renumbered to nnU-Net's BraTS convention (see the module docstring)."""
    values = set(np.unique(segmentation).tolist())  # some releases store labels as floats
    unexpected = {v for v in values if v != int(v) or int(v) not in layout.label_map}
    if unexpected:
        raise DatasetConversionError(f"{case}: label values {sorted(unexpected)} are not {layout.name} labels "
                                     f"{sorted(layout.label_map)}; is this the right layout?")
    lookup = np.zeros(max(layout.label_map) + 1, np.uint8)
    for source, target in layout.label_map.items():
        lookup[source] = target
    return lookup[segmentation.astype(np.int64)]


def _convert_case(case: BratsCase, channels: Sequence[str], image_folder: str, label_folder: str,
                  file_ending: str) -> None:
    files = case.files
    mask = sitk.ReadImage(str(files["mask"])) > 0 if "mask" in files else None
    for index, channel in enumerate(channels):
        image = sitk.ReadImage(str(files[channel]), sitk.sitkFloat32)
        if mask is not None:
            image = sitk.Mask(image, mask)
        sitk.WriteImage(image, join(image_folder, f"{case.name}_{index:04d}{file_ending}"))
    if case.labelled:
        segmentation = sitk.ReadImage(str(files["seg"]))
        converted = sitk.GetImageFromArray(nnunet_labels(sitk.GetArrayFromImage(segmentation), case.layout,
                                                         case.name))
        converted.CopyInformation(segmentation)
        sitk.WriteImage(converted, join(label_folder, f"{case.name}{file_ending}"))


def convert_brats(input_folders: Sequence[str], raw_folder: str, dataset_id: int, name: str = "BraTS",
                  channels: Sequence[str] = CHANNELS, exclude: Sequence[str] = (), overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Write ``raw_folder/Dataset{id}_{name}``; returns {'folder', 'labelled', 'unlabeled', 'layouts'}."""
    channels = [c.lower() for c in channels]
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels or len(set(channels)) != len(channels):
        raise DatasetConversionError(f"--channels must name distinct channels among {', '.join(CHANNELS)}, got "
                                     f"{list(channels)}.")
    cases = find_cases(input_folders, channels, exclude)
    labelled = [c for c in cases if c.labelled]
    if not labelled:
        raise DatasetConversionError("None of the cases has a segmentation: nnU-Net needs labelled training cases.")
    maybe_mkdir_p(raw_folder)
    target = check_target_free(raw_folder, dataset_id, name, overwrite)
    from tqdm import tqdm
    from nnunet_ddpm.dataset_conversion.unlabeled_images import UNLABELED_IMAGES
    file_ending = ".nii.gz"
    with folder_written_atomically(target) as partial:
        folders = {"imagesTr": join(partial, "imagesTr"), "labelsTr": join(partial, "labelsTr")}
        if len(labelled) < len(cases):
            folders[UNLABELED_IMAGES] = join(partial, UNLABELED_IMAGES)
        for folder in folders.values():
            maybe_mkdir_p(folder)
        for case in tqdm(cases, desc="Converting BraTS cases", unit="case", disable=not progress):
            image_folder = folders["imagesTr"] if case.labelled else folders[UNLABELED_IMAGES]
            _convert_case(case, channels, image_folder, folders["labelsTr"], file_ending)
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(partial, {i: CHANNEL_TITLES[c] for i, c in enumerate(channels)}, dict(REGIONS),
                              len(labelled), file_ending, regions_class_order=REGIONS_CLASS_ORDER,
                              dataset_name=name, converted_by="nnunet_ddpm (nnUNetv2_ddpm_convert_brats)",
                              reference="Menze et al., IEEE TMI 34(10), 2015; Bakas et al., Sci. Data 4, 2017",
                              license="see the BraTS data terms of the source",
                              description="labels: 1 oedema, 2 necrosis / non-enhancing tumour, 3 enhancing tumour")
    return {"folder": target, "labelled": len(labelled), "unlabeled": len(cases) - len(labelled),
            "layouts": sorted({c.layout.name for c in cases})}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert BraTS case folders (2018-2021 and 2023 naming, or the 2015 DeepMedic sample) into an "
                    "nnU-Net raw 3D dataset with BraTS regions; cases without a segmentation become unlabeled images "
                    "for the DDPM pretraining.")
    parser.add_argument("-i", nargs="+", required=True, help="folder(s) with one sub-folder per case")
    parser.add_argument("-d", type=int, required=True, help="id of the new dataset")
    parser.add_argument("-n", default="BraTS", help="name of the new dataset (default: %(default)s)")
    parser.add_argument("--channels", nargs="+", default=list(CHANNELS),
                        help=f"channels to keep, in this order (default: {' '.join(CHANNELS)}, as nnU-Net's "
                             f"Dataset137_BraTS21)")
    parser.add_argument("--exclude", nargs="+", default=[], help="case folders to leave out (e.g. a duplicate)")
    parser.add_argument("--raw", default=None, help="where to write the dataset (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
    args = parser.parse_args(argv)
    raw = output_folder_or_nnunet("nnUNetv2_ddpm_convert_brats", args.raw, "nnUNet_raw", "--raw")
    try:
        result = convert_brats(args.i, raw, args.d, args.n, args.channels, args.exclude, args.overwrite)
    except DatasetConversionError as e:
        sys.exit(f"nnUNetv2_ddpm_convert_brats: {e}")
    print(f"Wrote {result['folder']}: {result['labelled']} labelled and {result['unlabeled']} unlabeled cases "
          f"({', '.join(result['layouts'])}).\nNext, the paper's 2D dataset: nnUNetv2_ddpm_slice_dataset -s {args.d} "
          f"-d <new id> -n <name> --size 128 128 --num-test-patients <N> --unlabeled-step 5")


if __name__ == "__main__":
    main()
