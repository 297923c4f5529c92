"""The clusterer table: every ``cluster.method`` and its :class:`~hhcl.cluster.clusterer.Clusterer`.

``CLUSTERERS`` maps a method's name to its clusterer (torchreid's model-factory style: a plain dict, no
decorator registry). A clusterer states its sub-steps (the names progress shows, in order) and turns an epoch's
features into a :class:`~hhcl.cluster.clusterer.ClusterResult`: the labels (-1 = outlier), its own seconds per sub-step and the parameters
it clustered with. The epoch set-up, the event log, the progress text and the dashboard read those, never a
constant naming a method; its error advice (the setting it used, what to loosen when it finds too few clusters) is
its own too. The settings UIs show for a method (the wizard's fields, ``hhcl presets list``) are
``hhcl.config.CLUSTER_PARAMS``, torch-free for the CLI; ``hhcl.config.CLUSTER_METHODS`` lists the same names as
this table (``tests/test_config_registries.py`` keeps them equal). A new method is one file with its clusterer,
one line here and its keys in ``hhcl.config.ClusterConfig``.
"""

from __future__ import annotations

from hhcl.cluster.clusterer import Clusterer
from hhcl.cluster.infomap_cluster import INFOMAP
from hhcl.cluster.pseudo import DBSCAN

__all__ = ["CLUSTERERS"]

CLUSTERERS: dict[str, Clusterer] = {"dbscan": DBSCAN, "infomap": INFOMAP}

