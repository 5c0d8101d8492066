"""The K2ThinkModelCache controller: the claim and fill Job it needs (pure) and its reconcile."""
