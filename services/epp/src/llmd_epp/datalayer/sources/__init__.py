"""Endpoint sources: static list/file, Kubernetes Pods of an InferencePool, modelservice."""
