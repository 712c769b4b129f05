"""``nnUNetv2_ddpm_segment_patient`` end to end (a 3D phantom, the real BraTS 2015 sample) and its refusals.

The command runs as ``python -m nnunet_ddpm.patient.segment_patient`` with the interpreter running the tests, so the
code under test is this checkout's whether or not it is installed; it spawns the real nnU-Net commands itself.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread
import torch

from nnunet_ddpm.dataset_conversion.synthetic_phantom import phantom_case
from tests.helpers import REAL_SAMPLE

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

REPO = Path(__file__).resolve().parents[2]
COMMAND = (sys.executable, "-m", "nnunet_ddpm.patient.segment_patient")
TINY_BUDGET = ("--epochs", "1", "--pretrain-epochs", "1", "--iterations", "2", "-device", "cpu")
IGNORE = 255
ANNOTATED = (4, 6, 8)


def run_command(nnunet, *args, ok=True):
    # the tests' environment skips final validations; the tool must skip them by itself
    return nnunet.run(*COMMAND, *args, ok=ok, extra_env={"PYTHONPATH": str(REPO),
                                                         "nnUNet_ddpm_demo_skip_validation": "0"})


def _write(array, path, spacing, origin, direction):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing), image.SetOrigin(origin), image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


# a grid that is not the identity, so that copying the geometry is really tested
SPACING, ORIGIN = (0.9, 1.1, 3.0), (12.5, -40.0, 7.25)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def phantom_patient(tmp_path_factory):
    """A 12 x 40 x 36 two-channel phantom volume, its full labels and a sparse annotation (slices 4, 6, 8)."""
    folder = tmp_path_factory.mktemp("patient")
    images, labels = phantom_case((12, 40, 36), 2, np.random.default_rng(3))
    files = []
    for c in range(2):
        files.append(folder / f"case_{c:04d}.nii.gz")
        _write(images[c], files[-1], SPACING, ORIGIN, DIRECTION)
    annotation = np.full(labels.shape, IGNORE, np.uint8)
    annotation[list(ANNOTATED)] = labels[list(ANNOTATED)]
    _write(annotation, folder / "annotation.nii.gz", SPACING, ORIGIN, DIRECTION)
    _write(labels, folder / "labels.nii.gz", SPACING, ORIGIN, DIRECTION)
    return {"folder": folder, "images": [str(f) for f in files], "annotation": str(folder / "annotation.nii.gz"),
            "labels": labels, "image_array": images}


def _geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_phantom_end_to_end_pixel_classifier(nnunet, phantom_patient, tmp_path, capsys):
    output = tmp_path / "out"
    args = ("-i", *phantom_patient["images"], "-a", phantom_patient["annotation"], "--ignore-value", str(IGNORE),
            "--methods", "pixel", "--size", "32", "32", "--require-foreground", *TINY_BUDGET, "-o", str(output))
    result = run_command(nnunet, *args)
    assert "DDPM pretraining 1 epochs x 2 iterations" in result.output  # the budget is stated
    reference = sitk.ReadImage(phantom_patient["images"][0])
    segmentation = sitk.ReadImage(str(output / "segmentation_pixel.nii.gz"))
    uncertainty = sitk.ReadImage(str(output / "uncertainty_pixel.nii.gz"))
    assert _geometry(segmentation) == _geometry(reference)
    assert _geometry(uncertainty) == _geometry(reference)
    seg, unc = sitk.GetArrayFromImage(segmentation), sitk.GetArrayFromImage(uncertainty)
    labels = phantom_patient["labels"]
    # the annotated slices are the annotation, exactly; every value is a label of the annotation
    assert np.array_equal(seg[list(ANNOTATED)], labels[list(ANNOTATED)])
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    # slices outside the head are background and certain; elsewhere the ensemble's entropy in percent
    empty = [i for i in range(12) if not phantom_patient["image_array"][:, i].any()]
    assert empty and not seg[empty].any() and not unc[empty].any()
    assert unc.max() <= 100 and unc.max() > 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["annotated_slices"] == list(ANNOTATED)
    assert summary["budget"] == {"epochs": 1, "pretrain_epochs": 1, "iterations": 2}
    dice = summary["methods"]["pixel"]["dice_on_annotated_slices"]
    assert set(dice) == {"label_1", "label_2", "label_3"}
    # the model's own Dice on the annotated slices, computed here from its slice predictions put back in the volume
    from nnunet_ddpm.patient.volume_slices import PATIENT_RECORD, segmentation_volume
    record = json.loads((output / "nnUNet_raw" / "Dataset800_Patient" / PATIENT_RECORD).read_text())
    model = segmentation_volume(str(output / "predictions" / "pixel"), record)[list(ANNOTATED)]
    for value in (1, 2, 3):
        p, r = model == value, labels[list(ANNOTATED)] == value
        total = int(p.sum() + r.sum())
        assert dice[f"label_{value}"] == (None if total == 0 else round(2 * int((p & r).sum()) / total, 4))
    montage = imread(output / "montage_pixel.png")
    assert montage.ndim == 3 and montage[..., :3].std() > 0.01  # slices drawn, not a blank canvas
    # fold "all" would validate on its own training slices: skipped
    model = output / "nnUNet_results" / "Dataset800_Patient" / "nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo__nnUNetPlans__2d"
    assert "Final validation skipped" in next((model / "fold_all").glob("training_log_*.txt")).read_text()
    # the slice dataset: annotated slices for training, the others for pretraining, every slice to predict
    raw = output / "nnUNet_raw" / "Dataset800_Patient"
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [f"patient_s{i:03d}.nii.gz" for i in ANNOTATED]
    segmented = 12 - len(empty)
    assert len(list((raw / "imagesUnlabeled").iterdir())) == 2 * (segmented - len(ANNOTATED))
    assert len(list((raw / "imagesTs").iterdir())) == 2 * segmented
    # a second run (in-process: it starts no command when all is done) finds everything done and trains nothing
    from nnunet_ddpm.patient.segment_patient import main
    capsys.readouterr()
    main(list(args))
    again = capsys.readouterr().out
    assert "6 steps, 6 already done" in again and "nnUNetv2_train" not in again
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output / "segmentation_pixel.nii.gz"))), seg)


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason=f"real BraTS 2015 sample not found at {REAL_SAMPLE}")
def test_real_brats_patient_finetune(nnunet, tmp_path):
    from nnunet_ddpm.dataset_conversion.brats import convert_brats
    raw = Path(convert_brats([str(REAL_SAMPLE)], str(tmp_path / "raw"), 985, "BraTS2015Sample",
                             channels=["flair", "t1ce"], progress=False)["folder"])
    patient = sorted(p.name for p in (raw / "labelsTr").iterdir())[0][:-len(".nii.gz")]
    label_file = raw / "labelsTr" / f"{patient}.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    tumour = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    annotated = [int(tumour[int(q * (len(tumour) - 1))]) for q in (0.3, 0.5, 0.7)]
    start, stop = annotated[0] - 3, annotated[-1] + 4  # a slab: keeps the test short
    output = tmp_path / "out"
    run_command(nnunet, "-i", str(raw / "imagesTr" / f"{patient}_0000.nii.gz"),
                str(raw / "imagesTr" / f"{patient}_0001.nii.gz"), "-a", str(label_file), "--slices",
                *map(str, annotated), "--slice-range", str(start), str(stop), "-dataset_json",
                str(raw / "dataset.json"), "--size", "48", "48", "--require-foreground", *TINY_BUDGET,
                "-o", str(output))
    reference = sitk.ReadImage(str(raw / "imagesTr" / f"{patient}_0000.nii.gz"))
    segmentation = sitk.ReadImage(str(output / "segmentation_finetune.nii.gz"))
    assert _geometry(segmentation) == _geometry(reference)
    seg = sitk.GetArrayFromImage(segmentation)
    assert np.array_equal(seg[annotated], labels[annotated])
    assert not seg[:start].any() and not seg[stop:].any()  # outside the slab: background
    assert set(np.unique(seg)) <= {0, 1, 2, 3}  # the importer's 1 oedema, 2 necrosis / non-enhancing, 3 enhancing
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary["methods"]["finetune"]["dice_on_annotated_slices"]) == {"whole tumor", "tumor core",
                                                                               "enhancing tumor"}
    assert not (output / "uncertainty_finetune.nii.gz").exists()


# ------------------------------------------------------------------------------------------------------------------
# refusals: all of them before anything is trained or written


def _refused(phantom_patient, tmp_path, *args, images=None, annotation=None):
    """Run main() in-process (fast); return the message it exits with."""
    from nnunet_ddpm.patient.segment_patient import main
    output = tmp_path / "refused"
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", *(images or phantom_patient["images"]), "-a", annotation or phantom_patient["annotation"],
              "-o", str(output), "-device", "cpu", *args])
    assert not output.exists()
    return str(exit_info.value.code)


@pytest.mark.parametrize("change, expected", [
    ({"spacing": (0.9, 1.2, 3.0)}, "spacing"),
    ({"origin": (12.5, -40.0, 9.0)}, "origin"),
    ({"direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
    ({"shape": (12, 40, 35)}, "size"),
])
def test_geometry_mismatch_refused(phantom_patient, tmp_path, change, expected):
    shape = change.get("shape", (12, 40, 36))
    path = tmp_path / "annotation.nii.gz"
    _write(np.zeros(shape, np.uint8), path, change.get("spacing", SPACING), change.get("origin", ORIGIN),
           change.get("direction", DIRECTION))
    message = _refused(phantom_patient, tmp_path, "--slices", "4", annotation=str(path))
    assert "does not lie on the grid" in message and expected in message


def test_sparse_annotation_refusals(phantom_patient, tmp_path):
    everything_ignored = tmp_path / "nothing.nii.gz"
    _write(np.full((12, 40, 36), IGNORE, np.uint8), everything_ignored, SPACING, ORIGIN, DIRECTION)
    assert "No annotated slice" in _refused(phantom_patient, tmp_path, "--ignore-value", str(IGNORE),
                                            annotation=str(everything_ignored))
    assert "outside the volume" in _refused(phantom_patient, tmp_path, "--slices", "4", "40")
    assert "contain the ignore value" in _refused(phantom_patient, tmp_path, "--slices", "4", "5", "--ignore-value",
                                                  str(IGNORE))
    assert "background label" in _refused(phantom_patient, tmp_path, "--ignore-value", "0")
    assert "does not occur" in _refused(phantom_patient, tmp_path, "--ignore-value", "7")
    assert "Say which slices" in _refused(phantom_patient, tmp_path)
    labels = phantom_patient["labels"]
    no_tumour = [i for i in range(12) if phantom_patient["image_array"][:, i].any() and not labels[i].any()]
    message = _refused(phantom_patient, tmp_path, "--slices", "4", str(no_tumour[0]), "--require-foreground",
                       annotation=str(phantom_patient["folder"] / "labels.nii.gz"))
    assert "--require-foreground" in message and str(no_tumour[0]) in message


def test_pretrained_checkpoint_with_other_channels_refused(phantom_patient, tmp_path):
    checkpoint = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "ddpm": {"num_input_channels": 4}}, checkpoint)
    message = _refused(phantom_patient, tmp_path, "--ignore-value", str(IGNORE), "-pretrained_weights",
                       str(checkpoint))
    assert "4 input channels" in message and "2 images" in message


def test_refusal_from_the_command_line_has_no_traceback(phantom_patient, tmp_path):
    result = subprocess.run([*COMMAND, "-i", *phantom_patient["images"], "-a", phantom_patient["annotation"],
                             "--slices", "99", "-o", str(tmp_path / "out")], capture_output=True, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0
    assert "outside the volume" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------------
# the slice dataset and the way back, in-process (no training)


@pytest.mark.parametrize("axis", [0, 2])
def test_slices_and_back_reproduce_the_volume(phantom_patient, tmp_path, axis):
    """Predictions equal to the true labels, on the input's in-plane grid, come back as exactly the label volume."""
    from nnunet_ddpm.dataset_conversion.raw_dataset import write_slice
    from nnunet_ddpm.patient.inputs import read_patient
    from nnunet_ddpm.patient.volume_slices import case_name, segmentation_volume, write_patient_dataset
    labels_file = str(phantom_patient["folder"] / "labels.nii.gz")
    patient = read_patient(phantom_patient["images"], labels_file, axis=axis, slices=[5, 7])
    record = write_patient_dataset(patient, str(tmp_path / "Dataset800_Patient"), size=None)
    raw = tmp_path / "Dataset800_Patient"
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [case_name(5) + ".nii.gz", case_name(7) + ".nii.gz"]
    assert record["segmented"] == sorted(record["annotated"] + record["unannotated"])
    labels = np.moveaxis(phantom_patient["labels"], axis, 0)
    (tmp_path / "pred").mkdir()
    for i in record["segmented"]:
        write_slice(labels[i], str(tmp_path / "pred" / (case_name(i) + ".nii.gz")), record["spacing"], np.uint8)
    volume = segmentation_volume(str(tmp_path / "pred"), record)
    expected = np.moveaxis(labels, 0, axis).copy()
    empty = [i for i in range(labels.shape[0]) if i not in record["segmented"]]
    np.moveaxis(expected, axis, 0)[empty] = 0  # slices outside the head are background by construction
    assert np.array_equal(volume, expected)
