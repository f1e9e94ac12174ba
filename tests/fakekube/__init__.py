"""A fake Kubernetes cluster that the official ``kubernetes`` Python client talks to over HTTP,
for testing Flowyard's Kubernetes code without a cluster. Pods run as local processes.

    with FakeCluster(tmp_path) as cluster:
        api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))

Modules, bottom up: ``resources`` (kinds and paths), ``errors`` (``Status`` failures),
``selectors``, ``patches``, ``validation`` (defaulting and 422s), ``history`` (resource versions
and the watch log), ``store`` (objects, deletion, finalizers), ``events``, ``scheduler``,
``controllers`` (Job controller, garbage collector), ``environment`` and ``podstatus`` (for the
kubelet), ``kubelet`` (pods as processes), ``logs``, ``faults``, ``api`` (REST operations and
watches), ``server`` (HTTP), ``loops`` (controller threads), ``cluster`` (``FakeCluster``), and
``testing`` (helpers for tests). Each module's docstring says what is faithful to a real cluster
and what is simplified.
"""

from tests.fakekube.cluster import FakeCluster
from tests.fakekube.faults import Faults

__all__ = ["FakeCluster", "Faults"]
