"""The plan, pure: how a model lays onto the GPU pools (tensor/pipeline degree, worker shape,
KV-cache budget, replica bounds), how big Serve's ingress is, whether a head failure is survivable."""
