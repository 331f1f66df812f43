"""TensorBoard logs of a run: every epoch and every `log_every_steps` steps, read back from the event files."""

import collections
import glob
import os

import tensorflow as tf

from tfrobust import training


def _steps_by_tag(directory):
    """{tag: sorted steps} of every summary in the event files of `directory`."""
    steps = collections.defaultdict(list)
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return {tag: sorted(s) for tag, s in steps.items()}


def test_every_epoch_and_every_nth_step_is_logged_when_epochs_are_not_multiples_of_n(tmp_path):
    # 96 examples / batch 32 = 3 steps per epoch, logged every 2: epochs end at steps 3, 6 and 9,
    # of which only 6 is a multiple of 2. Keras' own callback would write epoch 1 alone.
    config = training.TrainConfig(method="pgd_at", epochs=3, batch_size=32, train_examples=96, validation_size=64,
                                  attack_steps=1, eval_steps=1, eval_examples=32, log_every_steps=2,
                                  output_dir=str(tmp_path / "run"), verbose=0)
    result = training.train(config)
    assert result.steps == 9
    logs = os.path.join(result.run_dir, "logs")
    train, validation, images = (_steps_by_tag(os.path.join(logs, d)) for d in ("train", "validation", "images"))

    for tag in ("epoch_loss", "epoch_clean_accuracy", "epoch_adv_accuracy", "epoch_images_per_second",
                "epoch_learning_rate"):
        assert train.get(tag) == [0, 1, 2], (tag, train.get(tag))
    for tag in ("epoch_loss", "epoch_clean_accuracy", "epoch_adv_accuracy", "epoch_adv_loss"):
        assert validation.get(tag) == [0, 1, 2], (tag, validation.get(tag))
    # Validation after every epoch, at the optimizer step it was run at.
    assert validation.get("evaluation_adv_accuracy_vs_iterations") == [3, 6, 9]
    assert images.get("clean_adversarial_perturbation") == [0, 1, 2]
    # Step scalars every 2 optimizer steps, and only then.
    for tag in ("batch_loss", "batch_clean_accuracy"):
        assert train.get(tag) == [2, 4, 6, 8], (tag, train.get(tag))
