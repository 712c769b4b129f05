"""nnU-Net's dataset fingerprint with fewer foreground samples for the intensity statistics, for the small datasets
that the demo and the patient tool plan on the CPU.

nnU-Net's ``DatasetFingerprintExtractor`` draws 10^8 foreground voxels (with replacement, spread over the cases) and
takes percentiles of all of them; on a dataset of a few dozen small images that is most of the time
``nnUNetv2_plan_and_preprocess`` takes (about 40 of 50 s on 2 cores). The statistics only matter for CT
normalisation (clipping at the 0.5 and 99.5 percentiles, then the mean and standard deviation), which 10^5 samples
estimate closely; the MRI channels of the phantom and of BraTS are z-scored per image and do not use them. ``nnUNetv2_plan_and_preprocess`` finds the fingerprint and plans
from it (it extracts one only where none exists).

    python -m nnunet_ddpm.fingerprint DATASET_ID
"""
import sys

FOREGROUND_SAMPLES = 100_000


def extract_fingerprint(dataset_id: int, foreground_samples: int = FOREGROUND_SAMPLES) -> dict:
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    extractor = DatasetFingerprintExtractor(dataset_id, num_processes=1)
    extractor.num_foreground_voxels_for_intensitystats = foreground_samples
    extractor.show_progress_bar = False
    return extractor.run()


if __name__ == "__main__":
    extract_fingerprint(int(sys.argv[1]))
