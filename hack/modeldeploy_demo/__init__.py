"""The modeldeploy demo (`make demo`) and the reusable parts of the end-to-end tests.

`workload` owns the generic pieces (real scikit-learn models and their artifact store, traffic
through the gateway with per-phase counters, the operator as a process with its RSS and CPU);
`kube` the manifests and the kubectl verbs; `report` the tables and figures; `__main__` the demo's
story. Imported by `tests/e2e/` (hack is on pytest's pythonpath).
"""
