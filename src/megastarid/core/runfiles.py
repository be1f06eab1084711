"""The names of the files a run folder holds (DESIGN §2) and of the loss terms, in one place.

Writers (trainer, reports) and readers (grid plan and results, demo) use these constants, so a file
can never be written under one name and looked for under another.
"""

from __future__ import annotations

# ----------------------------------------------------------------- a training run folder
BEST_CHECKPOINT = "best.pth"  # the best epoch by the task's metric
LAST_CHECKPOINT = "last.pth"  # every epoch, and on an interrupt (for --resume)
CONFIG_YAML = "config.yaml"  # the resolved options of the run
HISTORY_CSV = "history.csv"  # one row per epoch
RUN_SUMMARY_JSON = "run_summary.json"  # written last: its presence with status "finished" marks a done run
BAD_IMAGES_TXT = "bad_images.txt"  # unreadable photos met while training, one path a line
TRAINING_CURVES_PNG = "training_curves.png"
TENSORBOARD_DIR = "tensorboard"
RUN_LOCK = ".run.lock"  # held (flock) by the process running in the folder; its pid inside

# ----------------------------------------------------------------- star evaluation reports
STAR_QUERY_CSV = "star_query_metrics.csv"
STAR_IDENTITY_CSV = "star_identity_metrics.csv"
STAR_FOLDER_CSV = "star_folder_metrics.csv"
STAR_SUMMARY_JSON = "star_evaluation_summary.json"
STAR_EMBEDDINGS_NPZ = "star_embeddings.npz"
CMC_PNG = "cmc_curve.png"
FOLDER_PNG = "folder_metrics.png"

# ----------------------------------------------------------------- open-set reports and calibration
CALIBRATION_JSON = "calibration.json"  # tau and the score -> P(top-1 right) map, fitted on validation
STAR_OPENSET_SUMMARY_JSON = "star_openset_summary.json"
STAR_OPENSET_QUERIES_CSV = "star_openset_queries.csv"
OPENSET_THRESHOLDS_CSV = "openset_thresholds.csv"
OPENSET_CURVE_PNG = "openset_curve.png"
RELIABILITY_PNG = "reliability.png"

# ----------------------------------------------------------------- wildlife validation reports
WILDLIFE_SUMMARY_JSON = "wildlife_evaluation_summary.json"
WILDLIFE_DATASET_CSV = "wildlife_dataset_metrics.csv"

#: every file a training run writes into its folder (``--overwrite`` removes exactly these, and a run that
#: starts clears the temp files its killed writes of these left); the lock file is not one of them
RUN_OUTPUT_FILES = (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    CONFIG_YAML,
    HISTORY_CSV,
    RUN_SUMMARY_JSON,
    BAD_IMAGES_TXT,
    TRAINING_CURVES_PNG,
    STAR_QUERY_CSV,
    STAR_IDENTITY_CSV,
    STAR_FOLDER_CSV,
    STAR_SUMMARY_JSON,
    STAR_EMBEDDINGS_NPZ,
    CMC_PNG,
    FOLDER_PNG,
    CALIBRATION_JSON,
    STAR_OPENSET_SUMMARY_JSON,
    STAR_OPENSET_QUERIES_CSV,
    OPENSET_THRESHOLDS_CSV,
    OPENSET_CURVE_PNG,
    RELIABILITY_PNG,
    WILDLIFE_SUMMARY_JSON,
    WILDLIFE_DATASET_CSV,
)
RUN_OUTPUT_DIRS = (TENSORBOARD_DIR,)

# ----------------------------------------------------------------- a grid experiment folder
GRID_STATUS_JSON = "grid_status.json"  # written when one of the experiment's phases fails
GRID_LOG_DIR = "logs"  # one <phase>.log per phase
GRID_JOB_JSON = "grid_job.json"  # the scheduler job running the experiment: id, node, logs, requeues
GRID_SLURM_DIR = "slurm"  # in the grid folder: submitit's job pickles, sbatch scripts and job logs

# ----------------------------------------------------------------- identify's output folder
MATCHES_CSV = "matches.csv"  # one row per (query, candidate rank)
MATCHES_JSON = "matches.json"  # the same, nested per query, with each candidate's photos (the lineup's input)
LINEUP_HTML = "lineup.html"  # the page to confirm matches (opens from the file system, no server)
THUMBS_DIR = "thumbs"  # the lineup's thumbnails, made once
OUTPUT_MARKER = (
    ".megastarid-identify"  # marks (and, locked, holds) the folder: no reader takes photos from it
)
DECISIONS_CSV = "decisions.csv"  # what the lineup page exports: one row per decided photo

# ----------------------------------------------------------------- capture histories (catalogue captures)
SIGHTINGS_SUFFIX = (
    ".sightings.csv"  # individual, date, outing, photos: captures.csv -> captures.sightings.csv
)

# ----------------------------------------------------------------- loss terms (history.csv columns)
LOSS = "loss"  # the weighted total that is optimised
CIRCLE_LOSS = "circle_loss"
TRIPLET_LOSS = "triplet_loss"
ARCFACE_LOSS = "arcface_loss"  # sub-center ArcFace (--arcface-weight)
LOSS_KEYS = (LOSS, CIRCLE_LOSS, TRIPLET_LOSS, ARCFACE_LOSS)
