"""Install suite: the Helm chart, the raw manifests and least-privilege operation (issue 4)."""
