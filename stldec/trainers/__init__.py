"""Training: experiment files, the HF Trainer with stldec's callbacks, the run driver and mixture experiments.

    experiment, output_dir = parse_train_args(["--config", "examples/configs/tiny.yaml"])
    train(experiment, output_dir)          # resumes by itself from the last complete checkpoint in output_dir

The names below load their module on first use (PEP 562), so `stldec train --help` builds its parser from
`experiment.py` without importing the HF Trainer, `datasets` and pandas.
"""

import importlib

_MODULE_OF = {
    "DataSpec": "experiment", "Experiment": "experiment", "add_train_arguments": "experiment",
    "experiment_from_args": "experiment", "parse_train_args": "experiment",
    "make_encoder": "run", "train": "run",
    "GroupedSampler": "trainer", "JsonlLogger": "trainer", "SaveAtEpochEnd": "trainer", "StlTrainer": "trainer",
    "checkpoints": "trainer", "generate_texts": "trainer", "generation_metrics": "trainer",
    "last_complete_checkpoint": "trainer",
}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
