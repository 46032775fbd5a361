"""Container images and the Compose pipeline (make test-containers), and the checks of
compose.yaml and deploy/k8s/ that run in make test."""
