"""Thin command-line entry points; each wraps a plain function that the tests call."""
import argparse
import os
import sys

from nnunet_ddpm.folders import require_nnunet_folders, require_writable_folder
from nnunet_ddpm.nnunet_trainers import TRAINER_DIR


def trainer_dir_entry():
    """nnUNetv2_ddpm_trainer_dir: print the folder to put into ``nnUNet_extTrainer``."""
    argparse.ArgumentParser(description="Print the folder that holds nnunet_ddpm's trainers. Use it as "
                                        "export nnUNet_extTrainer=$(nnUNetv2_ddpm_trainer_dir)").parse_args()
    print(TRAINER_DIR)


def make_splits_entry():
    """nnUNetv2_ddpm_make_splits: patient-grouped folds as nnU-Net's splits_final.json."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_ddpm.splits.grouped_folds import make_splits
    parser = argparse.ArgumentParser(description="Write splits_final.json for a preprocessed dataset so that no "
                                                 "patient (group) is in training and validation of one fold. Without "
                                                 "groups it writes nnU-Net's own 5-fold split.")
    parser.add_argument("-d", required=True, help="dataset name or id")
    groups = parser.add_mutually_exclusive_group()
    groups.add_argument("--groups", help="JSON file {case identifier: patient}, e.g. the slice converter's "
                                         "case_groups.json")
    groups.add_argument("--group-regex", help="regular expression whose first group (or whole match) in a case "
                                              "identifier names its patient, e.g. '^(BraTS2021_\\d+)_'")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=12345, help="default: %(default)s (nnU-Net's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    args = parser.parse_args()
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    require_nnunet_folders("nnUNetv2_ddpm_make_splits", write=("nnUNet_preprocessed",))
    try:
        path = make_splits(args.d, args.groups, args.group_regex, args.folds, args.seed, args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"nnUNetv2_ddpm_make_splits: {e}")
    for k, fold in enumerate(load_json(path)):
        print(f"fold {k}: {len(fold['train'])} training, {len(fold['val'])} validation cases")
    print(f"Wrote {path}")


def preprocess_unlabeled_entry():
    """nnUNetv2_ddpm_preprocess_unlabeled: images without labels, preprocessed for DDPM pretraining."""
    from nnunet_ddpm.dataset_conversion.unlabeled_images import UNLABELED_IMAGES, preprocess_unlabeled
    parser = argparse.ArgumentParser(description="Preprocess images that have no labels with the dataset's plans, so "
                                                 "that nnUNetTrainerDDPMPretrain adds them to its training images.")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help="configuration, e.g. 2d")
    parser.add_argument("-i", default=None, help=f"image folder (default: $nnUNet_raw/DATASET/{UNLABELED_IMAGES}); "
                                                 "files named like imagesTr: CASE_0000<file_ending>, ...")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    parser.add_argument("--allow-test-images", action="store_true",
                        help="allow imagesTs as input (then the test images are part of pretraining)")
    parser.add_argument("--replace", action="store_true",
                        help="replace the unlabeled set preprocessed before by this folder's images (default: add "
                             "them to it; a case of the same name is preprocessed again)")
    args = parser.parse_args()
    program = "nnUNetv2_ddpm_preprocess_unlabeled"
    require_nnunet_folders(program, read=("nnUNet_raw",) if args.i is None else (), write=("nnUNet_preprocessed",))
    try:
        result = preprocess_unlabeled(args.d, args.c, args.i, args.p, args.allow_test_images, args.replace)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"{program}: {e}")
    changes = [f"{len(result['added'])} added"] + \
        ([f"{len(result['updated'])} preprocessed again"] if result["updated"] else []) + \
        ([f"{len(result['removed'])} removed (--replace)"] if result["removed"] else [])
    print(f"The unlabeled set held {result['before']} cases; it now holds {result['after']} ({', '.join(changes)}). "
          f"Preprocessed unlabeled images are in {result['folder']}")


def uncertainty_entry():
    """nnUNetv2_ddpm_uncertainty: entropy maps from nnUNetv2_predict --save_probabilities."""
    from nnunet_ddpm.inference.uncertainty import UNCERTAINTY_FOLDER, export_uncertainty
    parser = argparse.ArgumentParser(description="Write a per-case uncertainty map (entropy of the predicted "
                                                 "probabilities, in percent of its maximum) beside the segmentations "
                                                 "of nnUNetv2_predict ... --save_probabilities. For the pixel "
                                                 "classifier it is the entropy of the ensemble's mean probability.")
    parser.add_argument("-i", required=True, help="output folder of nnUNetv2_predict (with .npz and .pkl files)")
    parser.add_argument("-o", default=None, help=f"where to write the maps (default: -i/{UNCERTAINTY_FOLDER})")
    args = parser.parse_args()
    require_writable_folder("nnUNetv2_ddpm_uncertainty", args.o or os.path.join(args.i, UNCERTAINTY_FOLDER))
    try:
        written = export_uncertainty(args.i, args.o)
    except FileNotFoundError as e:
        sys.exit(f"nnUNetv2_ddpm_uncertainty: {e}")
    print(f"Wrote {len(written)} uncertainty maps to {os.path.dirname(written[0])}")
