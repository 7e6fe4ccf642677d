"""Deployment: the local-stack launcher (``deploy.local``) beside compose, KubeRay and Prometheus files."""
