"""modeldeploy server: the generic inference server every ModelDeployment's pods run.

It fetches the artifact named by its settings, verifies its SHA-256 before deserializing it,
loads it, enforces the input contract on every request and serves predictions over the Open
Inference Protocol v2 and a v1 form, with Prometheus metrics.
"""
