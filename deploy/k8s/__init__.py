"""Kubernetes profile: plain manifests for a cluster you already run (`batchserve deploy k8s`).

Rendered by this package's own code rather than a Helm chart: the objects are plain dictionaries,
so every one of them is validated offline before anything reaches a cluster (the built-in kinds
against the pinned Kubernetes schemas of kubernetes-validate, KEDA's kinds against the CRD schemas
in crds/), and the file written is exactly what `kubectl apply` receives.
"""
