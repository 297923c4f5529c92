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
