"""``nnUNetv2_ddpm_benchmark --executor slurm|local``: the comparison's grid as submitit jobs.

The pretraining is one job; every missing cell (one method at one label budget and fold: its training, prediction and
evaluation, ``grid.Cell``) is one task of a job array, and the DDPM methods' array starts only after the pretraining
succeeded; the report comes last. On SLURM the dependencies are the scheduler's (``--dependency=afterok`` /
``afterany``) and the command returns once everything is queued; the local executor (one machine, real processes)
waits for each job group instead.

Nothing here decides what is done: the grid reads it from the output folders, so work finished by hand, by the dry
run's commands or by earlier jobs is skipped, and a failed, killed or timed-out task is simply missing on the next run
and submitted again. The jobs submitted are recorded in ``OUTPUT/cluster/jobs.json`` so that a run while they are still
queued or running neither submits them twice nor calls them failed.
"""
import json
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from batchgenerators.utilities.file_and_folder_operations import isfile, join, maybe_mkdir_p

from nnunet_ddpm.comparison.grid import Benchmark, BenchmarkError, Cell
from nnunet_ddpm.files import written_atomically
from nnunet_ddpm.steps import StepFailed, run_steps

EXECUTORS = ("local", "slurm")
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING")


@dataclass
class Resources:
    """What each job asks for. The defaults fit one nnU-Net training: one GPU, nnU-Net's 12 augmentation workers
    (``nnUNet_n_proc_DA``), memory for them, and a day (a training killed at its time limit resumes from its latest
    checkpoint on the next run)."""
    partition: Optional[str] = None
    gpus: int = 1
    cpus: int = 12
    mem_gb: int = 64
    hours: float = 24.0
    array_parallelism: int = 32  # array tasks running at once (local: jobs at once)
    setup: List[str] = field(default_factory=list)  # shell lines run before each job (module load, conda activate)
    slurm_options: Dict[str, str] = field(default_factory=dict)  # any other #SBATCH option, e.g. account, qos


def _executor(kind: str, folder: str, resources: Resources, name: str, use_gpus: bool, dependency: str = None):
    try:
        import submitit
    except ImportError:
        raise BenchmarkError(f"--executor {kind} needs submitit: pip install 'nnunet_ddpm[cluster]' (or pip install "
                             f"submitit).") from None
    if kind == "slurm":
        if shutil.which("srun") is None:
            raise BenchmarkError("--executor slurm submits with sbatch from a SLURM login node, and srun is not on "
                                 "this machine's PATH. Run it on the cluster, or use --executor local or --dry-run.")
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(
            job_name=name, partition=resources.partition, time=max(1, round(resources.hours * 60)),
            gpus_per_node=resources.gpus if use_gpus else None, cpus_per_task=resources.cpus,
            mem=f"{resources.mem_gb}GB", array_parallelism=resources.array_parallelism, setup=resources.setup,
            dependency=dependency, additional_parameters=dict(resources.slurm_options))
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=max(1, round(resources.hours * 60)),
                                   gpus_per_node=resources.gpus if use_gpus else 0, setup=resources.setup)
    return executor


def pretraining_task(benchmark: Benchmark) -> None:
    """What the pretraining job runs (submitit pickles the call; the steps are built when the job starts, so a
    training interrupted by an earlier job resumes)."""
    run_steps(benchmark.pretraining_steps(), benchmark.output_folder)


def cell_task(benchmark: Benchmark, cases: List[str], method: str, budget: int, fold: int, run=None) -> None:
    """What one array task runs: the cell's steps that are still missing when it starts."""
    run_steps(benchmark.cell(method, budget, fold, cases, run).steps, benchmark.output_folder)


def report_task(benchmark: Benchmark, cases: List[str]) -> str:
    from nnunet_ddpm.comparison.report import write_report
    missing = benchmark.missing_evaluations(cases)
    if missing:
        raise BenchmarkError(f"{len(missing)} cells have no evaluation yet ({', '.join(missing[:5])}): run the same "
                             f"nnUNetv2_ddpm_benchmark command again to submit them.")
    return write_report(benchmark, cases)["files"]["markdown"]


class JobRecord:
    """``OUTPUT/cluster/jobs.json``: {job name: {"executor", "job_id", "log"}} of the last submission of each job."""

    def __init__(self, folder: str):
        self.file = join(folder, "jobs.json")
        self.jobs = json.load(open(self.file)) if isfile(self.file) else {}

    def add(self, name: str, kind: str, job) -> None:
        self.jobs[name] = {"executor": kind, "job_id": str(job.job_id), "output": str(job.paths.stdout),
                           "errors": str(job.paths.stderr), "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save(self) -> None:
        with written_atomically(self.file) as temporary, open(temporary, "w") as f:
            json.dump(self.jobs, f, indent=1)

    def still_queued_or_running(self, names: List[str], folder: str) -> List[str]:
        """Only SLURM jobs outlive the command that submitted them; their state is the scheduler's (one sacct call
        for all of them; a job sacct does not know counts as ended)."""
        slurm = {n: self.jobs[n]["job_id"] for n in names if self.jobs.get(n, {}).get("executor") == "slurm"}
        if not slurm:
            return []
        import submitit
        jobs = {n: submitit.SlurmJob(folder=folder, job_id=job_id) for n, job_id in slurm.items()}
        watcher = next(iter(jobs.values())).watcher
        watcher.update()
        return [n for n, job in jobs.items()
                if watcher.get_state(job.job_id, mode="cache").split()[0] in ACTIVE_SLURM_STATES]

    def previous_attempt(self, name: str) -> str:
        record = self.jobs.get(name)
        return "" if record is None else f" (job {record['job_id']} did not finish it; its errors: {record['errors']})"


def submit(benchmark: Benchmark, kind: str, resources: Resources, log: Callable[[str], None] = print) -> Optional[str]:
    """Submit what is missing. Local: wait for it and return the report's path. SLURM: return None once queued."""
    if kind not in EXECUTORS:
        raise BenchmarkError(f"Unknown executor {kind!r}; choose from {EXECUTORS}.")
    cases = benchmark.check()
    folder = join(benchmark.output_folder, "cluster")
    maybe_mkdir_p(folder)
    record = JobRecord(folder)
    pretraining = any(not s.is_done() for s in benchmark.pretraining_steps())
    cells = [c for c in benchmark.cells(cases) if not c.is_done()]
    missing = (["pretraining"] if pretraining else []) + [c.name for c in cells]
    active = set(record.still_queued_or_running(missing, folder))
    for name in sorted(active):
        log(f"{name}: still queued or running as job {record.jobs[name]['job_id']}; not submitted again")
    for cell in cells:
        if cell.name not in active and cell.name in record.jobs:
            log(f"{cell.name}: submitted again{record.previous_attempt(cell.name)}")
    log(f"{benchmark.dataset_name} {benchmark.configuration}: {len(cells)} of {len(benchmark.cells(cases))} cells to "
        f"run{', after the pretraining' if pretraining else ''}; job files in {folder}")

    def submit_group(name: str, jobs: List[tuple], dependency: Optional[str] = None) -> list:
        """jobs: [(record name, function, arguments)], submitted as one SLURM job array (one job each, locally)."""
        executor = _executor(kind, folder, resources, name, benchmark.device == "cuda" and name != "ddpm_report",
                             dependency)
        with executor.batch():
            submitted = [executor.submit(function, *arguments) for _, function, arguments in jobs]
        for (job_name, _, _), job in zip(jobs, submitted):
            record.add(job_name, kind, job)
        record.save()
        return submitted

    def cell_jobs(group: List[Cell]) -> List[tuple]:
        return [(c.name, cell_task, (benchmark, cases, c.method, c.budget, c.fold, c.run)) for c in group]

    pretraining_job = None
    if pretraining and "pretraining" not in active:
        pretraining_job, = submit_group("ddpm_pretraining", [("pretraining", pretraining_task, (benchmark,))])
        log(f"pretraining: job {pretraining_job.job_id}")
    independent = [c for c in cells if not (pretraining and c.needs_pretraining) and c.name not in active]
    after_pretraining = [c for c in cells if pretraining and c.needs_pretraining and c.name not in active]

    if kind == "local":
        failed = _wait(pretraining_job and [("pretraining", pretraining_job)] or [], log)
        skipped = after_pretraining if failed else []
        runnable = independent + ([] if failed else after_pretraining)
        for start in range(0, len(runnable), resources.array_parallelism):
            chunk = runnable[start:start + resources.array_parallelism]
            failed += _wait(list(zip([c.name for c in chunk], submit_group("ddpm_cells", cell_jobs(chunk)))), log)
        if failed:
            raise StepFailed(f"{len(failed)} job(s) failed: {'; '.join(failed)}" +
                             (f". Not started, they need the pretraining: {', '.join(c.name for c in skipped)}"
                              if skipped else "") + ". Fix the cause and run the same command again: only what is "
                                                    "missing runs.")
        return report_task(benchmark, cases)

    arrays = [record.jobs[name]["job_id"].split("_")[0] for name in active]
    pretraining_id = record.jobs["pretraining"]["job_id"] if pretraining else None
    for group, dependency in ((independent, None), (after_pretraining, f"afterok:{pretraining_id}")):
        if group:
            jobs = submit_group("ddpm_cells", cell_jobs(group), dependency)
            arrays.append(jobs[0].job_id.split("_")[0])
            log(f"{len(group)} cells: job array {arrays[-1]}" + (f", after job {pretraining_id}" if dependency else ""))
    report, = submit_group("ddpm_report", [("report", report_task, (benchmark, cases))],
                           f"afterany:{':'.join(sorted(set(arrays)))}" if arrays else None)
    log(f"report: job {report.job_id}, writes {join(benchmark.output_folder, 'results.md')}. Run the same command "
        f"again to see what is missing and to submit it again.")
    return None


def _wait(named_jobs: List[tuple], log) -> List[str]:
    """Wait for local jobs; returns the failed ones with the file that holds their error."""
    failed = []
    for name, job in named_jobs:
        try:
            job.result()
            log(f"{name}: done")
        except Exception:  # submitit re-raises the job's error; its traceback is in the job's stderr file
            failed.append(f"{name} (its errors: {job.paths.stderr})")
            log(f"{name}: failed, see {job.paths.stderr}")
    return failed
