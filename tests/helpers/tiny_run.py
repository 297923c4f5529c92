"""Overrides that shrink the demo preset to a seconds-long CPU run on the ``synth_root`` fixture's data."""

TINY = (
    "data.height=64",
    "data.width=32",
    "data.batch_size=16",
    "data.num_instances=4",
    "cluster.k1=8",
    "cluster.k2=3",
    "cluster.eps=0.7",
    "cluster.min_samples=3",
    "train.iters=3",
    "train.epochs=2",
    "train.device=cpu",
)

#: the settings of a seconds-long `hhcl train` process on 12 synthetic ids x 3 cameras (tests that run real
#: processes: test_faults.py, test_disk_and_bounds.py); the image size and epochs are each test file's own
PROCESS_TINY = (
    "data.batch_size=16",
    "data.num_instances=4",
    "model.bn_group=8",
    "cluster.k1=8",
    "cluster.k2=3",
    "cluster.eps=0.7",
    "cluster.min_samples=3",
    "train.iters=2",
    "train.device=cpu",
)
