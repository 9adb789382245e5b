"""SLURM batch execution of a pipeline: one sbatch job per step, chained with `afterok`.

`tinylab submit` plans the pipeline exactly as `tinylab run` does (same notebooks, papermill
parameters, fingerprints and skipping of finished steps), writes one bash script per step that
must run into RUN/cluster/, submits them held, records the job ids in RUN/manifest.json and then
releases them. Each job runs its step with `python -m tinylab.cluster run-step`, which calls
`pipeline.execute_step` (papermill into the run folder, as `tinylab run`). A training step (one
whose params name a params/stages/ file) on more than one process gets a `launcher` parameter:
`srun` starts one `torchrun` per node with a c10d rendezvous on the job's first node, and the
notebook hands it to the trainer. Jobs are requeueable; near the time limit (`--signal`) a job
requeues itself, and a requeued or resubmitted step resumes from its last checkpoint.

Trade-off: SLURM's own dependencies and requeue do the scheduling, so nothing of ours has to stay
alive on the login node; the price is that a step's state lives in two places, SLURM's queue and
the manifest, which `tinylab status` reconciles. A job waits (`afterok`) for the jobs of the
steps its step runs `after:`, so independent branches run at once; every manifest writer holds
`pipeline.manifest_lock` and merges into what is on disk.

The modules, one job each:

    plan.py      profiles, the resources and checks of each step, the jobs to submit (no SLURM)
    render.py    the sbatch script of one step's job (pure text)
    slurm.py     SLURM I/O: sbatch, release, cancel, live job states; `submit`
    records.py   the manifest's "cluster" section: job records by step, under the lock
    job.py       inside a job: run one step and record its state (`python -m tinylab.cluster`)
    status.py    `tinylab status`: steps, jobs and each stage's last metrics
    local.py     `tinylab run --jobs N`: this machine as N slots, each step in a process of its own
                 through the same one-step entry (`run-step --local`: no job record)

    tinylab submit params/pipelines/tinyllama-v1.1.yaml --cluster 2x8-h100 --dry-run
    tinylab status outputs/runs/tinyllama-v1.1
"""
