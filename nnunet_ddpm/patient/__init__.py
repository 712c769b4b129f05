"""The patient-level use case: a few annotated slices of one volume in, the whole volume segmented out
(``nnUNetv2_ddpm_segment_patient``)."""
