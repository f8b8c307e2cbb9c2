"""The file names of a run folder: one list for the code that writes them and every reader.

A leaf module with no torch import, so that the background job queue (whose
supervisors must start quickly) and the app's listings share the names with
:mod:`emotion.runs` and :mod:`emotion.training` instead of copying them.
"""

CONFIG_FILE = "config.json"  # model name, build options, input size, weights it started from, train config, data
LABELS_FILE = "labels.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
PROGRESS_FILE = "progress.jsonl"  # one JSON record per log step and evaluation, appended while training
STATUS_FILE = "status.json"  # running, completed, failed or stopped (and the training process's pid)
TRAIN_CONFIG_FILE = "train_config.json"
TEMPERATURE_FILE = "temperature.json"  # fitted on validation images (evaluate --fit-temperature)
RUN_LOCK_FILE = ".train.lock"  # held (flock) by the training process for as long as it runs
TRAIN_LOG_FILE = "train.log"  # a background job's stdout and stderr
