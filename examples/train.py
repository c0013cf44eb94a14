"""Train an stldec model from an experiment file; the same command resumes an interrupted run.

    python examples/train.py --config examples/configs/tiny.yaml --output_dir outputs/tiny
    accelerate launch --multi_gpu --num_processes 2 examples/train.py --config ... --output_dir ...   # 2 processes
    python examples/train.py --config FILE --learning_rate 3e-4 --model.hidden_size 96 --data.preset easy

Flags override the file's fields by their TrainingArguments names (or model./data. prefixes); see --help.
"""

from stldec.trainers import parse_train_args, train

if __name__ == "__main__":
    experiment, output_dir = parse_train_args()
    train(experiment, output_dir)
