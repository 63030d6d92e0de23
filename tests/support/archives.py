"""The archives the integration fixtures build besides the shipped digits.mar."""

BATCH_MODEL = "digits_batch"
# A model with one worker and a long batch delay, so concurrent requests are sure to share a batch.
BATCH_MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 1000
responseTimeout: 30
handler:
  torch_threads: 1
"""
