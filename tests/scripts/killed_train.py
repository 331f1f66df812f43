"""runners/train.py's run, SIGKILLed right after optimizer step $KILL_AT: `killed_train.py FLAGS...`.

Parses the train runner's flags and trains with its configuration; a callback kills the process
(no clean-up of any kind) once the optimizer has taken KILL_AT steps. Prints NOT KILLED if it
survives. Run by tests/test_fault_tolerance.py (the repository root on PYTHONPATH, for `runners`).
"""

import os
import signal
import sys

import keras
from absl import flags

from runners import train as runner
from tfrobust import training

flags.FLAGS(sys.argv)
kill_at = int(os.environ["KILL_AT"])


class KillAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


training.train(runner.config_from_flags(), extra_callbacks=[KillAt()])
print("NOT KILLED")
