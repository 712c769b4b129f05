"""An output folder that cannot be written ends the demo and the patient tool with one line naming it (fast)."""
import os
import subprocess


def _refused(command, folder):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, nnUNet_def_n_proc="1"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert f"cannot write to the output folder {folder}" in output and "Choose a writable folder with -o" in output


def test_unwritable_output_folders_are_refused_before_any_work(tmp_path):
    below_a_file = tmp_path / "a_file" / "out"  # refused for root too, unlike a chmod 0o555 folder
    below_a_file.parent.write_text("")
    _refused(["nnUNetv2_ddpm_demo", "-o", below_a_file], below_a_file)
    _refused(["nnUNetv2_ddpm_segment_patient", "-i", tmp_path / "missing_0000.nii.gz", "-a", tmp_path / "a.nii.gz",
              "-o", below_a_file], below_a_file)
    if os.geteuid() != 0:  # a read-only folder
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        _refused(["nnUNetv2_ddpm_demo", "-o", read_only], read_only)
