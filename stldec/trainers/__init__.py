"""Training: experiment files, the HF Trainer with stldec's callbacks, the run driver and mixture experiments.

    experiment, output_dir = parse_train_args(["--config", "examples/configs/tiny.yaml"])
    train(experiment, output_dir)          # resumes by itself from the last complete checkpoint in output_dir
"""

from .experiment import DataSpec, Experiment, add_train_arguments, experiment_from_args, parse_train_args
from .run import make_encoder, train
from .trainer import (
    GroupedSampler,
    JsonlLogger,
    SaveAtEpochEnd,
    StlTrainer,
    checkpoints,
    generate_texts,
    generation_metrics,
    last_complete_checkpoint,
)

__all__ = ["DataSpec", "Experiment", "GroupedSampler", "JsonlLogger", "SaveAtEpochEnd",
           "StlTrainer", "checkpoints", "generate_texts", "generation_metrics", "last_complete_checkpoint",
           "make_encoder", "parse_train_args", "train", "add_train_arguments", "experiment_from_args"]
