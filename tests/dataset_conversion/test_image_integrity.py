"""Images cut short or corrupt are refused by name wherever the plugin reads images (fast; no nnU-Net run)."""
import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ddpm.dataset_conversion.image_integrity import IncompleteImageError, check_image_complete
from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError
from nnunet_ddpm.dataset_conversion.slice_dataset import check_cases
from nnunet_ddpm.patient.inputs import PatientInputError, read_patient


def _volume(path, dtype=np.float32):
    image = sitk.GetImageFromArray(np.arange(8 * 10 * 12).reshape(8, 10, 12).astype(dtype))
    sitk.WriteImage(image, str(path))
    return path


def test_complete_images_pass_and_every_kind_of_damage_is_named(tmp_path):
    good_gz, good_nii = _volume(tmp_path / "a.nii.gz"), _volume(tmp_path / "a.nii", np.int16)
    check_image_complete(str(good_gz))
    check_image_complete(str(good_nii))
    uncompressed = gzip.decompress(good_gz.read_bytes())
    damaged = {
        "cut.nii.gz": (good_gz.read_bytes()[:300], r"truncated or corrupt \(EOFError"),
        "short.nii.gz": (gzip.compress(uncompressed[:-8]), "truncated: its header declares 3840 bytes"),
        "cut.nii": (good_nii.read_bytes()[:1000], "truncated: its header declares 1920 bytes"),
        "garbage.nii.gz": (b"not an image", "Cannot read image"),
    }
    for name, (content, message) in damaged.items():
        (tmp_path / name).write_bytes(content)
        assert sitk.ReadImage(str(tmp_path / name)) if name.startswith("cut") else True  # SimpleITK alone accepts it
        with pytest.raises(IncompleteImageError, match=message) as error:
            check_image_complete(str(tmp_path / name))
        assert str(tmp_path / name) in str(error.value)


def test_slicer_and_patient_tool_refuse_a_truncated_image(tmp_path):
    image, label = _volume(tmp_path / "case_0000.nii.gz"), _volume(tmp_path / "case.nii.gz", np.uint8)
    cut = tmp_path / "cut_0000.nii.gz"
    cut.write_bytes(image.read_bytes()[:300])
    with pytest.raises(DatasetConversionError, match=f"cut: Image {cut} is truncated"):
        check_cases({"case": {"images": [str(image)], "label": str(label)},
                     "cut": {"images": [str(cut)], "label": str(label)}}, 1, ".nii.gz", 0, None)
    with pytest.raises(PatientInputError, match=f"Image {cut} is truncated"):
        read_patient([str(cut)], str(label))
