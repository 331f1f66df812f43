"""Saves 16 MB checkpoints into DIRECTORY as fast as it can, forever: `checkpoint_saver.py DIRECTORY`.

Checkpoint n holds a variable filled with n; prints n after each save. tests/test_fault_tolerance.py
SIGKILLs it at a random moment and checks that the latest checkpoint is whole.
"""

import sys

import tensorflow as tf

v = tf.Variable(tf.zeros([4, 1024, 1024]))  # 16 MB a checkpoint
checkpoint = tf.train.Checkpoint(v=v)
manager = tf.train.CheckpointManager(checkpoint, sys.argv[1], max_to_keep=2)
for step in range(1, 100000):
    v.assign(tf.fill(v.shape, float(step)))
    manager.save(checkpoint_number=step)
    print(step, flush=True)
