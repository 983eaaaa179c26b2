"""devcluster: a real local Kubernetes for modeldeploy's tests and demo (test harness, not product).

Owns: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a real node
(containerd, kubelet, kube-proxy, CoreDNS, Traefik and its Gateway, Prometheus 3, the model store
Service; devcluster.realnode); the env file other tools read. Called by
`tests/conftest.py` (the `cluster` fixture, through `devcluster.client.Cluster`) and by
`python -m devcluster up|down|status` (the Makefile's cluster-up / cluster-down).
"""

from devcluster.client import Cluster, ClusterError

__all__ = ["Cluster", "ClusterError"]
