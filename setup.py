from setuptools import find_packages, setup

setup(
    name="nnunet_ddpm",
    version="0.1.0",
    description="Diffusion-model (DDPM) pretraining for semi-supervised segmentation as nnU-Net v2 trainers",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_ddpm", "nnunet_ddpm.*"]),
    install_requires=[
        # trainer hooks, MetaLogger and the extTrainer search of 2.8; what was tested: documentation/testing.md
        "nnunetv2>=2.8.1,<3",
        "torch>=2.3",  # torch.compiler.is_compiling (networks/time_conditioned_unet.py)
        "numpy",
        "SimpleITK",
        "batchgenerators",
        "batchgeneratorsv2",
        "dynamic-network-architectures",
        "diffusers>=0.30",  # noise schedulers and timestep embeddings
        "matplotlib",
        "blosc2",
        "scikit-learn>=1.6",  # GroupKFold(shuffle=True) for patient-grouped folds
        "monai>=1.3",  # surface distances (HD95) in the benchmark report
        "tqdm",  # progress bars (unlabeled preprocessing, slice converter, uncertainty maps)
        "threadpoolctl",  # one OpenMP thread for the phantom difficulty check
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "submitit>=1.5"], "cluster": ["submitit>=1.5"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_ddpm_trainer_dir=nnunet_ddpm.cli:trainer_dir_entry",
            "nnUNetv2_ddpm_demo=nnunet_ddpm.comparison.demo:demo_entry",
            "nnUNetv2_ddpm_make_splits=nnunet_ddpm.cli:make_splits_entry",
            "nnUNetv2_ddpm_preprocess_unlabeled=nnunet_ddpm.cli:preprocess_unlabeled_entry",
            "nnUNetv2_ddpm_uncertainty=nnunet_ddpm.cli:uncertainty_entry",
            "nnUNetv2_ddpm_benchmark=nnunet_ddpm.comparison.runner:benchmark_entry",
            "nnUNetv2_ddpm_evaluate_predictions=nnunet_ddpm.comparison.evaluation:evaluate_predictions_entry",
            "nnUNetv2_ddpm_slice_dataset=nnunet_ddpm.dataset_conversion.slice_dataset:main",
            "nnUNetv2_ddpm_convert_brats=nnunet_ddpm.dataset_conversion.brats:main",
            "nnUNetv2_ddpm_export_weights=nnunet_ddpm.export.stock_weights:export_weights_entry",
            "nnUNetv2_ddpm_export_model=nnunet_ddpm.export.stock_weights:export_model_entry",
            "nnUNetv2_ddpm_probe_features=nnunet_ddpm.features.probe:main",
            "nnUNetv2_ddpm_pretraining_readiness=nnunet_ddpm.features.readiness:main",
            "nnUNetv2_ddpm_make_phantom=nnunet_ddpm.dataset_conversion.synthetic_phantom:main",
            "nnUNetv2_ddpm_segment_patient=nnunet_ddpm.patient.segment_patient:main",
        ],
    },
)
