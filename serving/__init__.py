"""The model-serving core below every front end: model registry and leases, the classifier
(decode → batch → top k), event recording and their configuration. Knows nothing of HTTP."""
